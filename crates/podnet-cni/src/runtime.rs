//! The caller's side of CNI, as containerd's libcni does it: run a network
//! configuration list plugin by plugin through the exec protocol, inject
//! `name`, `cniVersion`, `prevResult` and the `runtimeConfig` each plugin
//! declared a capability for. The lab's kubelet uses this, so any reference
//! plugin can be chained or swapped in; the tests use it for interop.

use std::fs::File;
use std::io::Write;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::{Map, Value};

/// A plugin failed, or could not be run.
#[derive(Debug, thiserror::Error)]
#[error("CNI plugin {plugin} {verb}: code {code}: {msg}")]
pub struct PluginError {
    /// The plugin's `type`.
    pub plugin: String,
    /// The verb.
    pub verb: String,
    /// The CNI error code (0 when the plugin printed no error object).
    pub code: u64,
    /// Its message.
    pub msg: String,
}

/// A parsed `.conflist`.
#[derive(Clone, Debug)]
pub struct ConfList {
    /// `cniVersion` of the list (given to every plugin).
    pub cni_version: String,
    /// `name` of the network.
    pub name: String,
    /// Plugin configurations in order.
    pub plugins: Vec<Map<String, Value>>,
}

impl ConfList {
    /// Parses a conflist document.
    pub fn parse(bytes: &[u8]) -> Result<Self, String> {
        let v: Value = serde_json::from_slice(bytes).map_err(|e| format!("conflist: {e}"))?;
        let s = |k: &str| {
            v.get(k)
                .and_then(Value::as_str)
                .map(String::from)
                .ok_or_else(|| format!("conflist: {k} missing"))
        };
        let plugins = v
            .get("plugins")
            .and_then(Value::as_array)
            .ok_or("conflist: plugins missing")?
            .iter()
            .enumerate()
            .map(|(i, p)| {
                p.as_object()
                    .cloned()
                    .ok_or_else(|| format!("conflist: plugins[{i}] is not an object"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if plugins.is_empty() {
            return Err("conflist: plugins is empty".into());
        }
        Ok(Self {
            cni_version: s("cniVersion")?,
            name: s("name")?,
            plugins,
        })
    }

    /// Reads a conflist file.
    pub fn load(path: &Path) -> Result<Self, String> {
        let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Self::parse(&bytes)
    }
}

/// What the runtime knows of the attachment.
#[derive(Clone, Debug, Default)]
pub struct Attachment {
    /// Container (sandbox) ID.
    pub container_id: String,
    /// Network namespace path.
    pub netns: String,
    /// Interface name inside it.
    pub ifname: String,
    /// `CNI_ARGS` pairs (e.g. `K8S_POD_NAME`).
    pub args: Vec<(String, String)>,
    /// Capability arguments (`portMappings`, `bandwidth`, `ips`, `mac`...):
    /// each plugin gets those it declares in `capabilities`.
    pub capability_args: Map<String, Value>,
}

/// Runs plugins from `CNI_PATH`, optionally inside another namespace (the
/// node's), as a runtime on that node would.
pub struct Invoker {
    /// Directories searched for plugin binaries.
    pub paths: Vec<PathBuf>,
    /// The namespace plugins run in; the caller's when `None`.
    pub netns: Option<File>,
}

impl Invoker {
    fn find(&self, plugin: &str) -> Result<PathBuf, String> {
        self.paths
            .iter()
            .map(|d| d.join(plugin))
            .find(|p| p.is_file())
            .ok_or_else(|| format!("plugin {plugin} not found on CNI_PATH"))
    }

    /// Executes one plugin for one verb; returns its parsed stdout.
    pub fn exec(
        &self,
        verb: &str,
        conf: &Value,
        att: &Attachment,
    ) -> Result<Option<Value>, PluginError> {
        let plugin = conf
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let fail = |code: u64, msg: String| PluginError {
            plugin: plugin.clone(),
            verb: verb.into(),
            code,
            msg,
        };
        let exe = self.find(&plugin).map_err(|m| fail(0, m))?;
        let mut cmd = match &self.netns {
            Some(f) => podnet_kernel::netns::command_in(f.as_fd(), &exe),
            None => Command::new(&exe),
        };
        let args: Vec<String> = att.args.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let path: Vec<String> = self.paths.iter().map(|p| p.display().to_string()).collect();
        cmd.env("CNI_COMMAND", verb)
            .env("CNI_CONTAINERID", &att.container_id)
            .env("CNI_NETNS", &att.netns)
            .env("CNI_IFNAME", &att.ifname)
            .env("CNI_ARGS", args.join(";"))
            .env("CNI_PATH", path.join(":"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|e| fail(0, format!("spawn: {e}")))?;
        let body = serde_json::to_vec(conf).expect("json");
        let _ = child.stdin.take().expect("piped").write_all(&body);
        let out = child
            .wait_with_output()
            .map_err(|e| fail(0, format!("wait: {e}")))?;
        let parsed: Option<Value> = serde_json::from_slice(&out.stdout).ok();
        if !out.status.success() {
            let code = parsed
                .as_ref()
                .and_then(|v| v.get("code"))
                .and_then(Value::as_u64)
                .unwrap_or(0);
            let msg = parsed
                .as_ref()
                .and_then(|v| v.get("msg"))
                .and_then(Value::as_str)
                .map(String::from)
                .unwrap_or_else(|| String::from_utf8_lossy(&out.stderr).trim().to_string());
            return Err(fail(code, msg));
        }
        Ok(parsed)
    }

    /// The configuration one plugin of the list receives.
    pub fn plugin_conf(
        list: &ConfList,
        index: usize,
        att: &Attachment,
        prev: Option<&Value>,
        extra: &Map<String, Value>,
    ) -> Value {
        let mut conf = list.plugins[index].clone();
        conf.insert("cniVersion".into(), Value::String(list.cni_version.clone()));
        conf.insert("name".into(), Value::String(list.name.clone()));
        if let Some(p) = prev {
            conf.insert("prevResult".into(), p.clone());
        }
        let caps = conf
            .get("capabilities")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        let mut runtime = Map::new();
        for (cap, on) in caps {
            if on.as_bool() == Some(true)
                && let Some(v) = att.capability_args.get(&cap)
            {
                runtime.insert(cap, v.clone());
            }
        }
        if !runtime.is_empty() {
            conf.insert("runtimeConfig".into(), Value::Object(runtime));
        }
        for (k, v) in extra {
            conf.insert(k.clone(), v.clone());
        }
        Value::Object(conf)
    }

    /// ADD through the whole list; each plugin sees the previous result.
    pub fn add(&self, list: &ConfList, att: &Attachment) -> Result<Value, PluginError> {
        let mut prev: Option<Value> = None;
        for i in 0..list.plugins.len() {
            let conf = Self::plugin_conf(list, i, att, prev.as_ref(), &Map::new());
            if let Some(r) = self.exec("ADD", &conf, att)? {
                prev = Some(r);
            }
        }
        Ok(prev.unwrap_or(Value::Null))
    }

    /// CHECK through the whole list against the cached result.
    pub fn check(
        &self,
        list: &ConfList,
        att: &Attachment,
        result: &Value,
    ) -> Result<(), PluginError> {
        for i in 0..list.plugins.len() {
            let conf = Self::plugin_conf(list, i, att, Some(result), &Map::new());
            self.exec("CHECK", &conf, att)?;
        }
        Ok(())
    }

    /// DEL through the list in reverse order; every plugin is asked even
    /// when an earlier one failed, and the first failure is returned.
    pub fn del(
        &self,
        list: &ConfList,
        att: &Attachment,
        result: Option<&Value>,
    ) -> Result<(), PluginError> {
        let mut first = None;
        for i in (0..list.plugins.len()).rev() {
            let conf = Self::plugin_conf(list, i, att, result, &Map::new());
            if let Err(e) = self.exec("DEL", &conf, att) {
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// GC with the attachments that are still valid.
    pub fn gc(&self, list: &ConfList, valid: &[(String, String)]) -> Result<(), PluginError> {
        let atts: Vec<Value> = valid
            .iter()
            .map(|(id, ifname)| serde_json::json!({"containerID": id, "ifname": ifname}))
            .collect();
        let mut extra = Map::new();
        extra.insert("cni.dev/valid-attachments".into(), Value::Array(atts));
        for i in 0..list.plugins.len() {
            let conf = Self::plugin_conf(list, i, &Attachment::default(), None, &extra);
            self.exec("GC", &conf, &Attachment::default())?;
        }
        Ok(())
    }

    /// STATUS of every plugin of the list.
    pub fn status(&self, list: &ConfList) -> Result<(), PluginError> {
        for i in 0..list.plugins.len() {
            let conf = Self::plugin_conf(list, i, &Attachment::default(), None, &Map::new());
            self.exec("STATUS", &conf, &Attachment::default())?;
        }
        Ok(())
    }
}
