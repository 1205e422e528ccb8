//! The NetworkPolicy oracle: what the upstream Kubernetes e2e cases say
//! each cell of the x,y,z/a,b,c truth table must be, kept as data in
//! `tests/netpol_cases/*.case` and read here without podnet-core.
//!
//! podnet's planner and its model (`expected_matrix`) share the compiled
//! policy, so comparing the kernel with the model cannot catch a misreading
//! of the API that both share. These files are the third party: written
//! from the upstream cases' own statements ("all allowed except x/a from
//! everyone"), not computed by podnet, and held against both the probed
//! kernel and the model. Nothing in this module may use podnet-core (it is
//! also compiled into `crates/podnet/tests/lab_netpol.rs`).
//!
//! Format (one case per file; `#` starts a comment line):
//!
//! ```text
//! case <the upstream case's name>
//! source upstream | podnet            # podnet: not an upstream case
//! policy <ns>/<name>[@tag] <JSON>   # the spec; indented lines continue
//!                                     # it; ${ip:<ns>/<pod>} is that pod's
//!                                     # IP; @tag names one version of a
//!                                     # policy a case updates
//! apply <ns>/<name>[@tag]             # create, or replace the same name
//! delete <ns>/<name>
//! label ns <ns> <key>=<value>
//! label pod <ns>/<pod> <key>=<value>
//! expect <probe>... [also <probe>...] # probe: TCP/80, UDP/81, SCTP/80 ...
//!   allow|deny <from> -> <to>         # from/to: *, x/*, */a, x/a
//! ```
//!
//! Each `expect` block starts from "every cell allowed" and applies its
//! lines in order, later lines overriding earlier ones: upstream's
//! `NewReachability(pods, true)` with `ExpectPeer`/`ExpectAllIngress`/
//! `ExpectAllEgress`/`Expect`. Probes before `also` are the ones the upstream
//! case itself checks; probes after `also` are podnet's own reading of the
//! same case for the probes upstream does not check (the lab probes TCP and
//! UDP on 80 and 81 every time), written by hand from the API, not by code.
//! The `expect` blocks that follow a run of operations together form one
//! checkpoint: the state after those operations. Every checkpoint states
//! TCP/80, TCP/81, UDP/80 and UDP/81 exactly once (SCTP probes are extra:
//! the model is held to them, this kernel cannot carry SCTP). As upstream
//! does, a pod's connection to itself is not judged.
#![allow(dead_code)]

use std::fmt;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

/// The namespaces of the truth table.
pub const NAMESPACES: [&str; 3] = ["x", "y", "z"];
/// The pods of each namespace.
pub const PODS: [&str; 3] = ["a", "b", "c"];

/// A transport protocol of a probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Proto {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
    /// SCTP (judged on the model only).
    Sctp,
}

/// One probe: a protocol and a destination port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Probe {
    /// Protocol.
    pub proto: Proto,
    /// Destination port.
    pub port: u16,
}

impl fmt::Display for Probe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = match self.proto {
            Proto::Tcp => "TCP",
            Proto::Udp => "UDP",
            Proto::Sctp => "SCTP",
        };
        write!(f, "{p}/{}", self.port)
    }
}

impl Probe {
    fn parse(s: &str) -> Option<Probe> {
        let (p, port) = s.split_once('/')?;
        let proto = match p {
            "TCP" => Proto::Tcp,
            "UDP" => Proto::Udp,
            "SCTP" => Proto::Sctp,
            _ => return None,
        };
        Some(Probe {
            proto,
            port: port.parse().ok()?,
        })
    }
}

/// What the labs probe at every checkpoint.
pub const LAB_PROBES: [Probe; 4] = [
    Probe {
        proto: Proto::Tcp,
        port: 80,
    },
    Probe {
        proto: Proto::Tcp,
        port: 81,
    },
    Probe {
        proto: Proto::Udp,
        port: 80,
    },
    Probe {
        proto: Proto::Udp,
        port: 81,
    },
];

/// Every pod of the truth table, `ns/pod`, rows and columns in order.
pub fn all_pods() -> Vec<String> {
    NAMESPACES
        .iter()
        .flat_map(|n| PODS.iter().map(move |p| format!("{n}/{p}")))
        .collect()
}

/// A step of a case.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Create the policy, or replace the one of the same namespace and name.
    Apply {
        /// Namespace.
        ns: String,
        /// Name.
        name: String,
        /// Which definition of it (`policy ns/name@tag`; empty: untagged).
        tag: String,
    },
    /// Delete a policy.
    Delete {
        /// Namespace.
        ns: String,
        /// Name.
        name: String,
    },
    /// Set a label on a namespace.
    LabelNamespace {
        /// Namespace.
        ns: String,
        /// Key.
        key: String,
        /// Value.
        value: String,
    },
    /// Set a label on a pod.
    LabelPod {
        /// `ns/pod`.
        pod: String,
        /// Key.
        key: String,
        /// Value.
        value: String,
    },
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::Apply { ns, name, tag } if tag.is_empty() => write!(f, "apply {ns}/{name}"),
            Op::Apply { ns, name, tag } => write!(f, "apply {ns}/{name}@{tag}"),
            Op::Delete { ns, name } => write!(f, "delete {ns}/{name}"),
            Op::LabelNamespace { ns, key, value } => write!(f, "label ns {ns} {key}={value}"),
            Op::LabelPod { pod, key, value } => write!(f, "label pod {pod} {key}={value}"),
        }
    }
}

/// `*`, `x/*`, `*/a` or `x/a`: upstream's `Peer{Namespace, Pod}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sel {
    ns: Option<String>,
    pod: Option<String>,
}

impl Sel {
    fn parse(s: &str) -> Option<Sel> {
        if s == "*" {
            return Some(Sel {
                ns: None,
                pod: None,
            });
        }
        let (n, p) = s.split_once('/')?;
        let part = |v: &str| {
            if v == "*" {
                Some(None)
            } else if !v.is_empty() && !v.contains(['/', '*']) {
                Some(Some(v.to_string()))
            } else {
                None
            }
        };
        Some(Sel {
            ns: part(n)?,
            pod: part(p)?,
        })
    }

    fn matches(&self, pod: &str) -> bool {
        let (n, p) = pod.split_once('/').expect("ns/pod");
        self.ns.as_deref().is_none_or(|x| x == n) && self.pod.as_deref().is_none_or(|x| x == p)
    }
}

/// One line of an `expect` block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    /// Allowed or denied.
    pub allow: bool,
    /// Clients.
    pub from: Sel,
    /// Servers.
    pub to: Sel,
}

/// One `expect` block: the same matrix on several probes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Block {
    /// Probes the upstream case checks.
    pub upstream: Vec<Probe>,
    /// Probes upstream does not check, written by podnet from the API.
    pub derived: Vec<Probe>,
    /// The exceptions to "all allowed", in order.
    pub rules: Vec<Rule>,
    /// Line of the `expect` in the file.
    pub line: usize,
}

impl Block {
    /// The block's verdict for `from -> to`.
    pub fn allows(&self, from: &str, to: &str) -> bool {
        let mut v = true;
        for r in &self.rules {
            if r.from.matches(from) && r.to.matches(to) {
                v = r.allow;
            }
        }
        v
    }
}

/// The state after some operations, and what every cell must be then.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    /// Operations since the previous checkpoint.
    pub ops: Vec<Op>,
    /// The expectations.
    pub blocks: Vec<Block>,
}

/// A cell where a matrix disagrees with the data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Wrong {
    /// Client.
    pub from: String,
    /// Server.
    pub to: String,
    /// Probe.
    pub probe: Probe,
    /// What the data says.
    pub want: bool,
    /// Whether upstream states this cell (else podnet's reading).
    pub upstream: bool,
}

impl fmt::Display for Wrong {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} -> {} {}: data says {} ({})",
            self.from,
            self.to,
            self.probe,
            if self.want { "allowed" } else { "denied" },
            if self.upstream {
                "upstream"
            } else {
                "podnet's reading"
            }
        )
    }
}

impl Checkpoint {
    /// Every probe stated, in the order of the file.
    pub fn probes(&self) -> Vec<Probe> {
        self.blocks
            .iter()
            .flat_map(|b| b.upstream.iter().chain(&b.derived).copied())
            .collect()
    }

    /// What the data says of `from -> to` on `probe`: `None` for a pod to
    /// itself (not judged) or a probe the checkpoint does not state.
    pub fn expected(&self, from: &str, to: &str, probe: Probe) -> Option<bool> {
        if from == to {
            return None;
        }
        self.blocks
            .iter()
            .find(|b| b.upstream.contains(&probe) || b.derived.contains(&probe))
            .map(|b| b.allows(from, to))
    }

    /// Every stated cell where `cell` (a matrix; `None`: not measured)
    /// disagrees with the data.
    pub fn judge(&self, cell: impl Fn(&str, &str, Probe) -> Option<bool>) -> Vec<Wrong> {
        let pods = all_pods();
        let mut out = Vec::new();
        for b in &self.blocks {
            let probes = b
                .upstream
                .iter()
                .map(|p| (*p, true))
                .chain(b.derived.iter().map(|p| (*p, false)));
            for (probe, upstream) in probes {
                for from in &pods {
                    for to in &pods {
                        if from == to {
                            continue;
                        }
                        let want = b.allows(from, to);
                        if let Some(got) = cell(from, to, probe)
                            && got != want
                        {
                            out.push(Wrong {
                                from: from.clone(),
                                to: to.clone(),
                                probe,
                                want,
                                upstream,
                            });
                        }
                    }
                }
            }
        }
        out
    }

    /// The data's matrix on `probe` as upstream prints it (`.` allowed,
    /// `X` denied, `-` a pod to itself).
    pub fn render(&self, probe: Probe) -> String {
        let pods = all_pods();
        let mut s = format!("{probe}\n    ");
        for to in &pods {
            s.push_str(&format!(" {to}"));
        }
        s.push('\n');
        for from in &pods {
            s.push_str(from);
            for to in &pods {
                let c = match self.expected(from, to, probe) {
                    None => "-",
                    Some(true) => ".",
                    Some(false) => "X",
                };
                s.push_str(&format!("   {c}"));
            }
            s.push('\n');
        }
        s
    }
}

/// A policy as the case file defines it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyDef {
    /// Namespace.
    pub ns: String,
    /// Name.
    pub name: String,
    /// `@tag` of this definition (a case that updates a policy defines
    /// each version under one name); empty if none.
    pub tag: String,
    /// `spec`, with `${ip:ns/pod}` placeholders unresolved.
    pub spec: String,
}

/// One case file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Case {
    /// File stem (the name of the test that runs it).
    pub id: String,
    /// The upstream case's name (or podnet's, for `source podnet`).
    pub name: String,
    /// Whether the case is upstream's.
    pub upstream: bool,
    /// Policies it uses.
    pub policies: Vec<PolicyDef>,
    /// Its checkpoints, in order.
    pub checkpoints: Vec<Checkpoint>,
}

/// Where the case files live.
pub fn cases_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("podnet-dataplane")
        .join("tests")
        .join("netpol_cases")
}

/// Every case file's id, sorted.
pub fn all_ids() -> Vec<String> {
    let mut ids: Vec<String> = std::fs::read_dir(cases_dir())
        .expect("read netpol_cases")
        .filter_map(|e| {
            let p = e.ok()?.path();
            (p.extension()? == "case").then(|| p.file_stem()?.to_str().map(String::from))?
        })
        .collect();
    ids.sort();
    ids
}

impl Case {
    /// Reads and checks `netpol_cases/<id>.case`; panics naming the line
    /// of anything it cannot read.
    pub fn load(id: &str) -> Case {
        let path = cases_dir().join(format!("{id}.case"));
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        parse(id, &text).unwrap_or_else(|e| panic!("{}:{e}", path.display()))
    }

    /// The policy `ns/name` (definition `tag`) as an API object, its
    /// `${ip:...}` placeholders filled in by `ip`.
    pub fn policy(&self, ns: &str, name: &str, tag: &str, ip: &dyn Fn(&str) -> String) -> Value {
        let d = self
            .policies
            .iter()
            .find(|p| p.ns == ns && p.name == name && p.tag == tag)
            .unwrap_or_else(|| panic!("{}: no policy {ns}/{name}@{tag}", self.id));
        let spec: Value = serde_json::from_str(&fill(&d.spec, ip)).expect("spec is JSON");
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
               "metadata": {"name": name, "namespace": ns}, "spec": spec})
    }
}

/// `spec` with every `${ip:<ns>/<pod>}` replaced by `ip(<ns>/<pod>)`.
fn fill(spec: &str, ip: &dyn Fn(&str) -> String) -> String {
    let mut out = spec.to_string();
    while let Some(at) = out.find("${ip:") {
        let end = at + out[at..].find('}').expect("closed placeholder");
        let pod = out[at + 5..end].to_string();
        out.replace_range(at..=end, &ip(&pod));
    }
    out
}

fn ns_name(s: &str) -> Option<(String, String)> {
    let (n, m) = s.split_once('/')?;
    (!n.is_empty() && !m.is_empty() && !m.contains(['/', '@']))
        .then(|| (n.to_string(), m.to_string()))
}

/// `ns/name` or `ns/name@tag`.
fn ns_name_tag(s: &str) -> Option<(String, String, String)> {
    let (key, tag) = s.split_once('@').unwrap_or((s, ""));
    let (n, m) = ns_name(key)?;
    Some((n, m, tag.to_string()))
}

fn parse(id: &str, text: &str) -> Result<Case, String> {
    let mut name = None;
    let mut upstream = None;
    let mut policies: Vec<PolicyDef> = Vec::new();
    let mut checkpoints: Vec<Checkpoint> = Vec::new();
    let mut ops: Vec<Op> = Vec::new();
    let mut blocks: Vec<Block> = Vec::new();
    // What indented lines continue: a policy's JSON or an expect block.
    enum Open {
        None,
        Policy,
        Expect,
    }
    let mut open = Open::None;
    let pods = all_pods();
    for (i, raw) in text.lines().enumerate() {
        let n = i + 1;
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let err = |m: &str| format!("{n}: {m}: {line}");
        if raw.starts_with([' ', '\t']) {
            match open {
                Open::Policy => {
                    let p = policies.last_mut().expect("open policy");
                    p.spec.push('\n');
                    p.spec.push_str(line);
                }
                Open::Expect => {
                    let mut w = line.split_whitespace();
                    let allow = match w.next() {
                        Some("allow") => true,
                        Some("deny") => false,
                        _ => return Err(err("expected allow or deny")),
                    };
                    let from = w.next().and_then(Sel::parse);
                    let arrow = w.next();
                    let to = w.next().and_then(Sel::parse);
                    let (Some(from), Some("->"), Some(to), None) = (from, arrow, to, w.next())
                    else {
                        return Err(err("expected <from> -> <to>"));
                    };
                    if !pods.iter().any(|p| from.matches(p)) || !pods.iter().any(|p| to.matches(p))
                    {
                        return Err(err("matches no pod"));
                    }
                    blocks
                        .last_mut()
                        .expect("open block")
                        .rules
                        .push(Rule { allow, from, to });
                }
                Open::None => return Err(err("indented line outside a policy or expect")),
            }
            continue;
        }
        open = Open::None;
        let (word, rest) = line.split_once(' ').unwrap_or((line, ""));
        let rest = rest.trim();
        if word != "expect" && !blocks.is_empty() {
            checkpoints.push(Checkpoint {
                ops: std::mem::take(&mut ops),
                blocks: std::mem::take(&mut blocks),
            });
        }
        match word {
            "case" => name = Some(rest.to_string()),
            "source" => {
                upstream = Some(match rest.split_whitespace().next() {
                    Some("upstream") => true,
                    Some("podnet") => false,
                    _ => return Err(err("source is upstream or podnet")),
                })
            }
            "policy" => {
                let (key, spec) = rest.split_once(' ').unwrap_or((rest, ""));
                let (ns, name, tag) =
                    ns_name_tag(key).ok_or_else(|| err("policy <ns>/<name>[@tag]"))?;
                if policies
                    .iter()
                    .any(|p| p.ns == ns && p.name == name && p.tag == tag)
                {
                    return Err(err("policy defined twice"));
                }
                policies.push(PolicyDef {
                    ns,
                    name,
                    tag,
                    spec: spec.to_string(),
                });
                open = Open::Policy;
            }
            "apply" => {
                let (ns, name, tag) =
                    ns_name_tag(rest).ok_or_else(|| err("apply <ns>/<name>[@tag]"))?;
                if !policies
                    .iter()
                    .any(|p| p.ns == ns && p.name == name && p.tag == tag)
                {
                    return Err(err("no such policy (define it above)"));
                }
                ops.push(Op::Apply { ns, name, tag });
            }
            "delete" => {
                let (ns, name) = ns_name(rest).ok_or_else(|| err("delete <ns>/<name>"))?;
                ops.push(Op::Delete { ns, name });
            }
            "label" => {
                let w: Vec<&str> = rest.split_whitespace().collect();
                let (kind, target, kv) = match w.as_slice() {
                    [k, t, kv] => (*k, *t, *kv),
                    _ => return Err(err("label ns|pod <target> <key>=<value>")),
                };
                let (key, value) = kv.split_once('=').ok_or_else(|| err("<key>=<value>"))?;
                let (key, value) = (key.to_string(), value.to_string());
                ops.push(match kind {
                    "ns" if NAMESPACES.contains(&target) => Op::LabelNamespace {
                        ns: target.into(),
                        key,
                        value,
                    },
                    "pod" if pods.iter().any(|p| p == target) => Op::LabelPod {
                        pod: target.into(),
                        key,
                        value,
                    },
                    _ => return Err(err("label ns <x|y|z> or pod <ns/pod>")),
                });
            }
            "expect" => {
                let mut upstream_probes = Vec::new();
                let mut derived = Vec::new();
                let mut also = false;
                for w in rest.split_whitespace() {
                    if w == "also" {
                        also = true;
                        continue;
                    }
                    let p = Probe::parse(w).ok_or_else(|| err("bad probe"))?;
                    if also {
                        derived.push(p);
                    } else {
                        upstream_probes.push(p);
                    }
                }
                blocks.push(Block {
                    upstream: upstream_probes,
                    derived,
                    rules: Vec::new(),
                    line: n,
                });
                open = Open::Expect;
            }
            _ => return Err(err("unknown line")),
        }
    }
    if !blocks.is_empty() {
        checkpoints.push(Checkpoint { ops, blocks });
    } else if !ops.is_empty() {
        return Err(format!("end: operations after the last expect: {ops:?}"));
    }
    // Every policy parses (with placeholders filled by any address), and
    // every checkpoint states each lab probe exactly once.
    for p in &policies {
        let filled = fill(&p.spec, &|pod| {
            assert!(pods.iter().any(|q| q == pod), "no pod {pod}");
            "10.0.0.1".into()
        });
        match serde_json::from_str::<Value>(&filled) {
            Ok(v) if v.is_object() => {}
            _ => {
                return Err(format!(
                    "policy {}/{}: spec is no JSON object: {}",
                    p.ns, p.name, p.spec
                ));
            }
        }
    }
    if checkpoints.is_empty() {
        return Err("end: no expect".into());
    }
    for (k, c) in checkpoints.iter().enumerate() {
        let probes = c.probes();
        let mut sorted = probes.clone();
        sorted.sort();
        sorted.dedup();
        let line = c.blocks[0].line;
        if sorted.len() != probes.len() {
            return Err(format!("{line}: checkpoint {k} states a probe twice"));
        }
        for p in LAB_PROBES {
            if !probes.contains(&p) {
                return Err(format!("{line}: checkpoint {k} does not state {p}"));
            }
        }
    }
    Ok(Case {
        id: id.into(),
        name: name.ok_or("no `case` line")?,
        upstream: upstream.ok_or("no `source` line")?,
        policies,
        checkpoints,
    })
}
