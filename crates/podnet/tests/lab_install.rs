//! podnet's installation as an operator sees it, in labs that install
//! podnet from `deploy/` (the same files as `kubectl apply -k deploy/`):
//! uninstall and reinstall with kubectl, the CNI configuration's life, the
//! ServiceAccounts' rights, and `podnet-agent cleanup`.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::Lab;

/// An overlay of `deploy/` with the lab's values, as an operator keeps one
/// for their cluster: `kubectl apply -k <dir>`.
fn lab_overlay(dir: &Path) -> PathBuf {
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../deploy")
        .canonicalize()
        .unwrap();
    let overlay = dir.join("overlay");
    std::fs::create_dir_all(&overlay).unwrap();
    // kustomize takes bases by relative path only.
    let up = overlay.components().count() - 1;
    let rel = format!(
        "{}{}",
        "../".repeat(up),
        deploy.to_str().unwrap().trim_start_matches('/')
    );
    std::fs::write(
        overlay.join("kustomization.yaml"),
        format!(
            "resources:\n  - {rel}\npatches:\n  - patch: |-\n      apiVersion: v1\n      kind: ConfigMap\n      metadata:\n        name: podnet-config\n        namespace: kube-system\n      data:\n        PODNET_API_SERVER: \"https://172.18.0.2:6443\"\n        PODNET_DNS_NO_FORWARD: \"true\"\n        PODNET_DNS_UDP_WORKERS: \"1\"\n"
        ),
    )
    .unwrap();
    overlay
}

fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn agent_pods(lab: &Lab) -> usize {
    let v = lab.get_json(&["pods", "-n", "kube-system", "-l", "k8s-app=podnet"]);
    v["items"].as_array().unwrap().len()
}

fn ping(lab: &Lab, from: &str, ip: &str) -> bool {
    lab.kubectl_raw(&["exec", from, "--", "ping", "-c1", "-W1", ip])
        .status
        .success()
}

/// `kubectl delete -k`, then `kubectl apply -k` again: the agents go and
/// come back, running pods keep their addresses and reach each other again,
/// and a new pod gets an address no other pod holds.
#[test]
fn delete_and_apply_of_deploy_keeps_running_pods_and_their_addresses() {
    let lab = Lab::up("ins", "vxlan");
    let nodes = lab.nodes();
    lab.run_on("server", "nginx", &nodes[1].0, &[]);
    lab.run_on(
        "client",
        "nicolaka/netshoot",
        &nodes[2].0,
        &["sleep", "3600"],
    );
    lab.wait_ready("run in (server,client)");
    let (server_ip, _) = lab.pod_ip_node("server");
    let (client_ip, _) = lab.pod_ip_node("client");
    assert!(ping(&lab, "client", &server_ip));

    let tmp = tempfile::tempdir().unwrap();
    let overlay = lab_overlay(tmp.path());
    let overlay = overlay.to_str().unwrap();
    lab.kubectl(&["delete", "-k", overlay, "--wait=true"]);
    wait_until("the agents are gone", Duration::from_secs(30), || {
        agent_pods(&lab) == 0
    });
    for kind in [
        "ds/podnet",
        "deploy/coredns",
        "svc/kube-dns",
        "cm/podnet-config",
    ] {
        let out = lab.kubectl_raw(&["get", "-n", "kube-system", kind]);
        assert!(!out.status.success(), "{kind} survived delete -k");
    }
    // The kernel keeps what the agents programmed: pods still talk.
    assert!(
        ping(&lab, "client", &server_ip),
        "pods lost each other with the agents gone"
    );

    lab.kubectl(&["apply", "-k", overlay]);
    lab.kubectl(&[
        "rollout",
        "status",
        "-n",
        "kube-system",
        "ds/podnet",
        "--timeout=60s",
    ]);
    lab.kubectl(&[
        "rollout",
        "status",
        "-n",
        "kube-system",
        "deploy/coredns",
        "--timeout=60s",
    ]);
    assert_eq!(lab.pod_ip_node("server").0, server_ip);
    assert_eq!(lab.pod_ip_node("client").0, client_ip);
    wait_until(
        "the pods reach each other again",
        Duration::from_secs(20),
        || ping(&lab, "client", &server_ip),
    );
    let out = lab.kubectl(&["exec", "client", "--", "nslookup", "kubernetes.default"]);
    assert!(out.contains("10.96.0.1"), "{out}");

    // New pods on the same node get fresh addresses.
    lab.run_on("later", "nginx", &nodes[1].0, &[]);
    lab.wait_ready("run=later");
    let (later_ip, _) = lab.pod_ip_node("later");
    let all = lab.get_json(&["pods", "-A"]);
    let holders: Vec<&str> = all["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["spec"]["hostNetwork"] != true)
        .filter(|p| p["status"]["podIP"] == later_ip.as_str())
        .map(|p| p["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(holders, ["later"], "{later_ip} is held twice");
    assert!(ping(&lab, "client", &later_ip));
    lab.down();
}

/// The conflist removed by hand and the agent restarted: the node goes
/// NotReady with the kubelet's words, the agent writes the conflist again,
/// and the node is Ready again.
#[test]
fn a_removed_conflist_comes_back_and_the_node_goes_not_ready_then_ready() {
    let lab = Lab::up("inc", "host-gw");
    let node = lab.nodes()[1].0.clone();
    let conflist = PathBuf::from(format!(
        "/var/lib/podnet/{}/nodes/{node}/root/etc/cni/net.d/10-podnet.conflist",
        lab.name
    ));
    assert!(conflist.exists(), "{} missing", conflist.display());
    let agent = lab.agent_pod(&node);
    let mut watch = Command::new(support::KUBECTL)
        .args(["--kubeconfig", lab.kubeconfig.to_str().unwrap()])
        .args(["get", "node", &node, "-w", "-o", "json"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    std::fs::remove_file(&conflist).unwrap();
    lab.kubectl(&["delete", "pod", "-n", "kube-system", &agent]);
    wait_until("the conflist is back", Duration::from_secs(30), || {
        conflist.exists()
    });
    wait_until("the node is Ready again", Duration::from_secs(30), || {
        lab.kubectl(&[
            "get",
            "node",
            &node,
            "-o",
            r#"jsonpath={.status.conditions[?(@.type=="Ready")].status}"#,
        ]) == "True"
    });
    std::thread::sleep(Duration::from_millis(500));
    let _ = watch.kill();
    let out = watch.wait_with_output().unwrap();
    // Each event's Ready condition, "<status> <message>".
    let seen: Vec<String> = serde_json::Deserializer::from_slice(&out.stdout)
        .into_iter::<serde_json::Value>()
        .filter_map(Result::ok)
        .filter_map(|n| {
            let c = n["status"]["conditions"]
                .as_array()?
                .iter()
                .find(|c| c["type"] == "Ready")?
                .clone();
            Some(format!(
                "{} {}",
                c["status"].as_str()?,
                c["message"].as_str().unwrap_or_default()
            ))
        })
        .collect();
    let seen = seen.join("\n");
    let not_ready = seen
        .lines()
        .position(|l| {
            l.starts_with("False ")
                && l.contains("container runtime network not ready: NetworkReady=false reason:NetworkPluginNotReady message:Network plugin returns error: cni plugin not initialized")
        })
        .unwrap_or_else(|| panic!("the node never said NotReady for its network:\n{seen}"));
    assert!(
        seen.lines()
            .skip(not_ready + 1)
            .any(|l| l.starts_with("True ")),
        "the node did not turn Ready after:\n{seen}"
    );
    let agent_now = lab.agent_pod(&node);
    assert_ne!(agent_now, agent, "the agent was not restarted");
    lab.down();
}

/// RBAC as deploy/ sets it: the default ServiceAccount of a namespace gets
/// kube-apiserver's 403 listing pods, from inside a pod through the
/// `kubernetes` Service; podnet's agent may list NetworkPolicies and may not
/// delete Nodes.
#[test]
fn service_accounts_get_only_what_deploy_grants() {
    let lab = Lab::up("inr", "vxlan");
    let node = lab.nodes()[1].0.clone();
    lab.run_on("probe", "nicolaka/netshoot", &node, &["sleep", "3600"]);
    lab.wait_ready("run=probe");
    let sa = "/var/run/secrets/kubernetes.io/serviceaccount";
    let out = lab.kubectl(&[
        "exec",
        "probe",
        "--",
        "sh",
        "-c",
        &format!(
            "curl -s -w '\\n%{{http_code}}' --cacert {sa}/ca.crt -H \"Authorization: Bearer $(cat {sa}/token)\" https://kubernetes.default.svc/api/v1/namespaces/$(cat {sa}/namespace)/pods"
        ),
    ]);
    let code = out.lines().last().unwrap_or_default();
    assert_eq!(code, "403", "{out}");
    assert!(
        out.contains(r#"pods is forbidden: User \"system:serviceaccount:default:default\" cannot list resource \"pods\" in API group \"\" in the namespace \"default\""#),
        "{out}"
    );
    let agent = "--as=system:serviceaccount:kube-system:podnet";
    let can = |args: &[&str]| -> String {
        let mut a = vec!["auth", "can-i"];
        a.extend_from_slice(args);
        a.push(agent);
        let out = lab.kubectl_raw(&a);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(can(&["list", "networkpolicies", "-A"]), "yes");
    assert_eq!(
        can(&["watch", "endpointslices.discovery.k8s.io", "-A"]),
        "yes"
    );
    assert_eq!(can(&["delete", "nodes"]), "no");
    assert_eq!(can(&["patch", "nodes"]), "no");
    assert_eq!(can(&["get", "secrets", "-n", "kube-system"]), "no");
    lab.down();
}

/// What a node namespace holds, as lines to compare: links, routes, nft
/// tables, iptables rules and chains, and files under the node's root.
fn node_inventory(lab: &Lab, node: &str) -> Vec<String> {
    let in_ns = |args: &[&str]| -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", node])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let mut v = Vec::new();
    for l in in_ns(&["ip", "-o", "link", "show"]).lines() {
        let name = l.split(':').nth(1).unwrap_or_default().trim();
        v.push(format!("link {}", name.split('@').next().unwrap()));
    }
    for l in in_ns(&["ip", "-4", "route", "show", "table", "all"]).lines() {
        v.push(format!("route {l}"));
    }
    // iptables-nft keeps its rules in nft tables of its own (`ip filter`,
    // `ip nat`, ...), which stay once made, as with any user of iptables;
    // their contents are checked through iptables-save below.
    for l in in_ns(&["nft", "list", "tables"]).lines() {
        let iptables_own = ["filter", "nat", "mangle", "raw", "security"]
            .iter()
            .any(|t| l == format!("table ip {t}") || l == format!("table ip6 {t}"));
        if !iptables_own {
            v.push(format!("nft {l}"));
        }
    }
    for l in in_ns(&["iptables-save"]).lines() {
        if l.starts_with(':')
            && !l.starts_with(":INPUT ")
            && !l.starts_with(":OUTPUT ")
            && !l.starts_with(":FORWARD ")
            && !l.starts_with(":PREROUTING ")
            && !l.starts_with(":POSTROUTING ")
            || l.starts_with("-A ")
        {
            v.push(format!("iptables {l}"));
        }
    }
    let root = PathBuf::from(format!("/var/lib/podnet/{}/nodes/{node}/root", lab.name));
    let mut stack = vec![root.clone()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                v.push(format!("file {}", p.strip_prefix(&root).unwrap().display()));
            }
        }
    }
    v.sort();
    v
}

/// `podnet-agent cleanup` in a node, after `kubectl delete -k`: nothing of
/// podnet's is left (links, routes, nft tables, iptables chains, CNI files,
/// IPAM state), and everything else is as the lab made the node.
#[test]
fn cleanup_leaves_a_node_with_nothing_of_podnets() {
    let lab = Lab::up_with("inu", "vxlan", &["--proxy-mode", "iptables"]);
    let node = lab.nodes()[1].0.clone();
    lab.run_on("web", "nginx", &node, &[]);
    lab.wait_ready("run=web");
    let before = node_inventory(&lab, &node);
    for needle in [
        "link podnet0",
        "link podnet.1",
        "nft table inet podnet-policy",
        "iptables :KUBE-SERVICES",
        "file etc/cni/net.d/10-podnet.conflist",
        "file opt/cni/bin/podnet",
    ] {
        assert!(
            before.iter().any(|l| l.starts_with(needle)),
            "{needle} missing before the cleanup: {before:#?}"
        );
    }
    let tmp = tempfile::tempdir().unwrap();
    let overlay = lab_overlay(tmp.path());
    lab.kubectl(&["delete", "-k", overlay.to_str().unwrap(), "--wait=true"]);
    wait_until("the agents are gone", Duration::from_secs(30), || {
        agent_pods(&lab) == 0
    });
    let root = format!("/var/lib/podnet/{}/nodes/{node}/root", lab.name);
    let agent = support::podnet().with_file_name("podnet-agent");
    let out = Command::new("ip")
        .args(["netns", "exec", &node])
        .arg(&agent)
        .arg("cleanup")
        .env("PODNET_CNI_CONF_DIR", format!("{root}/etc/cni/net.d"))
        .env("PODNET_CNI_BIN_DIR", format!("{root}/opt/cni/bin"))
        .env("PODNET_IPAM_DIR", format!("{root}/var/lib/cni/podnet"))
        .env("PODNET_PROXY_MODE", "iptables")
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let after = node_inventory(&lab, &node);
    // What a lab node is before podnet: lo and eth0, the underlay's route,
    // no nft table, no iptables rule or chain of its own, no file.
    let ours: Vec<&String> = after
        .iter()
        .filter(|l| {
            !(l.as_str() == "link lo"
                || l.as_str() == "link eth0"
                || (l.starts_with("route ")
                    && l.contains("dev eth0")
                    && !l.contains("10.244.")
                    && !l.contains("10.96."))
                || (l.starts_with("route ") && l.contains("dev lo")))
        })
        .collect();
    assert!(
        ours.is_empty(),
        "left after cleanup: {ours:#?}\ncleanup said:\n{said}"
    );
    assert!(after.contains(&"link eth0".to_string()), "{after:#?}");
    assert!(
        after
            .iter()
            .any(|l| l.starts_with("route 172.18.0.0/16 dev eth0")),
        "the underlay's route went too: {after:#?}"
    );
    lab.down();
}

/// Nodes with no pod CIDR (a control plane without `--allocate-node-cidrs`):
/// each agent waits, says once what is missing and how to fix it, and is
/// not ready; the nodes are NotReady. Once the CIDRs are set by hand, the
/// nodes turn Ready and pods on them reach each other.
#[test]
fn a_node_without_a_pod_cidr_waits_then_joins() {
    let lab = Lab::up_with("inp", "vxlan", &["--allocate-node-cidrs=false"]);
    let names: Vec<String> = ["control-plane", "worker", "worker2"]
        .iter()
        .map(|n| format!("{}-{n}", lab.name))
        .collect();
    let said = "the node has no pod CIDR (spec.podCIDRs): the control plane assigns one when kube-controller-manager runs with --allocate-node-cidrs and --cluster-cidr (kubeadm init --pod-network-cidr=10.244.0.0/16; k3s --cluster-cidr); waiting for it";
    wait_until(
        "every agent says why it waits",
        Duration::from_secs(60),
        || {
            agent_pods(&lab) == 3
                && names.iter().all(|n| {
                    let pod = lab.agent_pod(n);
                    let out =
                        lab.kubectl_raw(&["logs", "-n", "kube-system", &pod, "-c", "podnet-agent"]);
                    String::from_utf8_lossy(&out.stdout).contains(said)
                })
        },
    );
    let pods = lab.get_json(&["pods", "-n", "kube-system", "-l", "k8s-app=podnet"]);
    for p in pods["items"].as_array().unwrap() {
        assert_eq!(p["status"]["phase"], "Running", "{p}");
        let ready = p["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == "Ready")
            .unwrap();
        assert_eq!(
            ready["status"], "False",
            "an agent without a pod CIDR is ready: {p}"
        );
    }
    for n in &names {
        let ready = lab.kubectl(&[
            "get",
            "node",
            n,
            "-o",
            r#"jsonpath={.status.conditions[?(@.type=="Ready")].status}"#,
        ]);
        assert_eq!(ready, "False", "{n}");
    }

    for (i, n) in names.iter().enumerate() {
        let cidr = format!("10.244.{}.0/24", 10 + i);
        lab.kubectl(&[
            "patch",
            "node",
            n,
            "-p",
            &format!(r#"{{"spec":{{"podCIDR":"{cidr}","podCIDRs":["{cidr}"]}}}}"#),
        ]);
    }
    lab.kubectl(&[
        "wait",
        "--for=condition=Ready",
        "node",
        "--all",
        "--timeout=60s",
    ]);
    lab.run_on("server", "nginx", &names[1], &[]);
    lab.run_on("client", "nicolaka/netshoot", &names[2], &["sleep", "3600"]);
    lab.wait_ready("run in (server,client)");
    let (server_ip, _) = lab.pod_ip_node("server");
    assert!(
        support::in_cidr(&server_ip, "10.244.11.0/24"),
        "{server_ip}"
    );
    wait_until("the pods reach each other", Duration::from_secs(20), || {
        ping(&lab, "client", &server_ip)
    });
    // Said once, not once a second.
    for n in &names {
        let pod = lab.agent_pod(n);
        let log = lab.kubectl(&["logs", "-n", "kube-system", &pod, "-c", "podnet-agent"]);
        assert_eq!(log.matches(said).count(), 1, "{log}");
    }
    lab.down();
}

/// `podnet node exec`: a command on a lab node, as `docker exec` on a kind
/// node: the node's hostname, network namespace and files. The seed's
/// `iptables -t nat -L -n | grep KUBE` runs where it means.
#[test]
fn node_exec_runs_on_the_node_with_its_own_files() {
    let lab = Lab::up_with("inn", "host-gw", &["--proxy-mode", "iptables"]);
    let (node, ip, cidr) = lab.nodes()[1].clone();
    let out = Command::new(support::podnet())
        .args(["node", "exec", &node, "--"])
        .args([
            "sh",
            "-c",
            "hostname; ip -4 -o addr show eth0; iptables -t nat -L -n | grep KUBE-SERVICES; cat /etc/cni/net.d/10-podnet.conflist",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(text.lines().next(), Some(node.as_str()), "{text}");
    assert!(text.contains(&format!("inet {ip}/")), "{text}");
    assert!(text.contains("Chain KUBE-SERVICES"), "{text}");
    assert!(text.contains(&format!("\"subnet\": \"{cidr}\"")), "{text}");
    let out = Command::new(support::podnet())
        .args(["node", "exec", "no-such-node", "--", "true"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no lab has a node \"no-such-node\""),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    lab.down();
}
