//! `podnet audit`: every process of a lab has an owner. Each sandbox,
//! shim and container process (found by what it is: lab/remains.rs) is
//! mapped to the pod it serves, and that pod must exist in the API, be
//! bound to the process's node, and record this very process (its
//! checkpoint names the sandbox and each container's shim). Every pod
//! namespace under `/run/netns` must belong to an existing pod, and no
//! pod process may hold a namespace whose name is gone. What fails twice,
//! `--settle` seconds apart, is an orphan (a pod being started or deleted
//! is in between for a moment); exit 1 if there is one.

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use anyhow::Context;
use k8s_openapi::api::core::v1::Pod;

use crate::lab::{self, remains};

/// Arguments of `podnet audit`.
#[derive(clap::Args)]
pub struct Args {
    /// The lab's name.
    #[arg(long, default_value = "lab")]
    pub name: String,
    /// Seconds between the two looks; only what is wrong in both counts.
    #[arg(long, default_value_t = 2.0)]
    pub settle: f64,
}

/// What a process of the lab is.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Role {
    Daemon,
    Kubelet,
    Launcher,
    /// A pod's sandbox: node, pod uid.
    Sandbox(String, String),
    /// A container's shim: node, pod uid, container.
    Shim(String, String, String),
    /// A container (the shim's child): node, pod uid, container.
    Container(String, String, String),
    /// A short-lived child of a kubelet or the daemon (a CNI plugin, an
    /// exec session).
    Helper,
    /// None of these, and no such ancestor.
    Unknown,
}

/// `(node, uid, rest)` from a path `.../nodes/<node>/pods/<uid>[/rest]`.
fn pod_of_path(path: &str) -> Option<(String, String, String)> {
    let (_, after) = path.split_once("/nodes/")?;
    let mut it = after.splitn(4, '/');
    let node = it.next()?.to_string();
    (it.next()? == "pods").then_some(())?;
    let uid = it.next()?.to_string();
    let rest = it.next().unwrap_or_default().to_string();
    Some((node, uid, rest))
}

fn flag<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.windows(2)
        .find(|w| w[0] == name)
        .map(|w| w[1].as_str())
}

/// The role a command line shows, without looking at ancestors.
fn own_role(args: &[String]) -> Option<Role> {
    if args.iter().any(|a| a == "lab-daemon") {
        return Some(Role::Daemon);
    }
    if !args.first()?.ends_with("podnet-lab-kubelet") {
        return None;
    }
    match args.get(1).map(String::as_str) {
        Some("launcher") => Some(Role::Launcher),
        Some("sandbox") => {
            let (node, uid, _) = pod_of_path(flag(args, "--dir")?)?;
            Some(Role::Sandbox(node, uid))
        }
        Some("shim") => {
            let (node, uid, rest) = pod_of_path(flag(args, "--run")?)?;
            let c = rest.strip_suffix(".run").unwrap_or(&rest).to_string();
            Some(Role::Shim(node, uid, c))
        }
        Some("image") => None,
        _ => flag(args, "--node").map(|_| Role::Kubelet),
    }
}

/// The role of `pid`: its own, or from its parent (a shim's child is its
/// container; a kubelet's or daemon's other children are helpers).
fn role(pid: i32, cache: &mut HashMap<i32, Role>) -> Role {
    if let Some(r) = cache.get(&pid) {
        return r.clone();
    }
    let r = match own_role(&remains::cmdline(pid)) {
        Some(r) => r,
        None => match remains::parent(pid).filter(|p| *p > 1) {
            Some(ppid) => match role(ppid, cache) {
                Role::Shim(n, u, c) | Role::Container(n, u, c) => Role::Container(n, u, c),
                Role::Daemon | Role::Kubelet | Role::Launcher | Role::Helper => Role::Helper,
                Role::Sandbox(..) | Role::Unknown => Role::Unknown,
            },
            None => Role::Unknown,
        },
    };
    cache.insert(pid, r.clone());
    r
}

/// One look: `(pid or namespace, what is wrong)` for every orphan, and the
/// counts by role.
fn look(
    lab: &str,
    recorded: &[remains::NsRecord],
    pods: &HashMap<String, (String, String)>,
) -> (BTreeMap<String, String>, BTreeMap<&'static str, usize>) {
    let mut wrong = BTreeMap::new();
    let mut counts = BTreeMap::new();
    let mut cache = HashMap::new();
    let named = remains::named(lab, recorded);
    let named_inos: HashMap<u64, String> = named
        .iter()
        .filter_map(|n| {
            Some((
                std::fs::metadata(Path::new("/run/netns").join(n))
                    .ok()?
                    .ino(),
                n.clone(),
            ))
        })
        .collect();
    let state = lab::state_dir(lab);
    let checkpoint = |node: &str, uid: &str| -> Option<serde_json::Value> {
        let p = state
            .join("nodes")
            .join(node)
            .join("pods")
            .join(uid)
            .join("checkpoint.json");
        serde_json::from_slice(&std::fs::read(p).ok()?).ok()
    };
    for (pid, _) in remains::processes(lab, recorded) {
        let r = role(pid, &mut cache);
        let key = format!("process {pid}");
        let what = remains::cmdline(pid).join(" ");
        let owner = |node: &str, uid: &str| -> Result<(), String> {
            match pods.get(uid) {
                None => Err(format!("no pod with uid {uid} exists")),
                Some((name, bound)) if bound != node => {
                    Err(format!("pod {name} is bound to {bound:?}, not {node}"))
                }
                Some(_) => Ok(()),
            }
        };
        let verdict = match &r {
            Role::Daemon => {
                *counts.entry("daemon").or_default() += 1;
                Ok(())
            }
            Role::Kubelet => {
                *counts.entry("kubelets").or_default() += 1;
                Ok(())
            }
            Role::Launcher => {
                *counts.entry("launchers").or_default() += 1;
                Ok(())
            }
            Role::Helper => {
                *counts.entry("helpers (CNI, exec)").or_default() += 1;
                Ok(())
            }
            Role::Unknown => {
                *counts.entry("unknown").or_default() += 1;
                Err(
                    "neither a lab component nor a pod's process (no shim or kubelet above it)"
                        .into(),
                )
            }
            Role::Sandbox(node, uid) => {
                *counts.entry("sandboxes").or_default() += 1;
                owner(node, uid).and_then(|()| {
                    let rec = checkpoint(node, uid).and_then(|c| c["sandboxPid"].as_i64());
                    match rec {
                        Some(p) if p != pid as i64 => {
                            Err(format!("the pod's recorded sandbox is {p}, not this one"))
                        }
                        _ => Ok(()),
                    }
                })
            }
            Role::Shim(node, uid, c) => {
                *counts.entry("shims").or_default() += 1;
                owner(node, uid).and_then(|()| {
                    let rec = checkpoint(node, uid)
                        .and_then(|cp| cp["containers"][c.as_str()]["shimPid"].as_i64());
                    match rec {
                        Some(p) if p != pid as i64 => Err(format!(
                            "container {c}'s recorded shim is {p}, not this one"
                        )),
                        _ => Ok(()),
                    }
                })
            }
            Role::Container(node, uid, _) => {
                *counts.entry("containers").or_default() += 1;
                owner(node, uid)
            }
        };
        // A pod's process in a namespace with no name: its pod's namespace
        // was deleted under it.
        let verdict = verdict.and_then(|()| {
            if !matches!(r, Role::Sandbox(..) | Role::Container(..)) {
                return Ok(());
            }
            let ino = std::fs::metadata(format!("/proc/{pid}/ns/net"))
                .ok()
                .map(|m| m.ino());
            let host = std::fs::metadata("/proc/1/ns/net").ok().map(|m| m.ino());
            match ino {
                Some(i) if !named_inos.contains_key(&i) && Some(i) != host => Err(format!(
                    "holds network namespace {i}, which has no name any more"
                )),
                _ => Ok(()),
            }
        });
        if let Err(e) = verdict {
            wrong.insert(key, format!("{e}: {what}"));
        }
    }
    for n in named {
        let Some(uid13) = n.strip_prefix(&format!("{lab}-pod-")) else {
            continue;
        };
        *counts.entry("pod namespaces").or_default() += 1;
        if !pods.keys().any(|u| u.starts_with(uid13)) {
            wrong.insert(format!("netns {n}"), "no pod with that uid exists".into());
        }
    }
    (wrong, counts)
}

async fn api_pods(lab: &str) -> anyhow::Result<HashMap<String, (String, String)>> {
    let kc = lab::state_dir(lab).join("kubeconfig");
    let client = crate::diag::world::client(&Some(kc)).await?;
    let api: kube::Api<Pod> = kube::Api::all(client);
    let list = api
        .list(&Default::default())
        .await
        .context("listing pods")?;
    Ok(list
        .items
        .into_iter()
        .map(|p| {
            let name = format!(
                "{}/{}",
                p.metadata.namespace.unwrap_or_default(),
                p.metadata.name.unwrap_or_default()
            );
            let node = p.spec.and_then(|s| s.node_name).unwrap_or_default();
            (p.metadata.uid.unwrap_or_default(), (name, node))
        })
        .collect())
}

/// Runs `podnet audit`.
pub fn run(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(
        lab::LabRecord::load(&args.name).is_some_and(|r| lab::alive(r.daemon_pid)),
        "lab {:?} is not up",
        args.name
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let recorded = remains::recorded(&args.name);
    let pods = rt.block_on(api_pods(&args.name))?;
    let (first, _) = look(&args.name, &recorded, &pods);
    let (second, counts) = if first.is_empty() {
        (first, look(&args.name, &recorded, &pods).1)
    } else {
        std::thread::sleep(std::time::Duration::from_secs_f64(args.settle));
        let pods = rt.block_on(api_pods(&args.name))?;
        let recorded = remains::recorded(&args.name);
        let (second, counts) = look(&args.name, &recorded, &pods);
        (
            second
                .into_iter()
                .filter(|(k, _)| first.contains_key(k))
                .collect(),
            counts,
        )
    };
    let counts: Vec<String> = counts.iter().map(|(k, v)| format!("{v} {k}")).collect();
    println!(
        "lab {:?}: {} pods in the API; processes and namespaces: {}",
        args.name,
        pods.len(),
        counts.join(", ")
    );
    if second.is_empty() {
        println!("every pod process has a pod that owns it; every pod namespace has its pod");
        return Ok(());
    }
    for (k, v) in &second {
        println!("ORPHAN {k}: {v}");
    }
    anyhow::bail!("{} orphans in lab {:?}", second.len(), args.name)
}
