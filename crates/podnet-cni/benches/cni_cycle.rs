//! 200 ADD+DEL cycles through podnet-cni and through the reference
//! `bridge` + `host-local`, alternating, in one run, each in a node
//! namespace of its own. Prints median wall and CPU time per cycle, peak RSS
//! per invocation, and the ratios. Run: `bench/cni-cycle/run`.

use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;
use std::time::{Duration, Instant};

use podnet_kernel::netns::{self, NetNs};
use serde_json::json;

const CYCLES: usize = 200;

struct Sample {
    wall: Duration,
    cpu: Duration,
    max_rss_kib: i64,
}

/// Runs one plugin invocation and waits with wait4 to read its rusage.
#[allow(clippy::zombie_processes)] // reaped by wait4 below, which clippy cannot see
fn invoke(
    node: &NetNs,
    exe: &str,
    verb: &str,
    id: &str,
    pod: &str,
    path: &str,
    conf: &str,
) -> Sample {
    let start = Instant::now();
    let mut child = node
        .command(exe)
        .env("CNI_COMMAND", verb)
        .env("CNI_CONTAINERID", id)
        .env("CNI_NETNS", pod)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", path)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn plugin");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(conf.as_bytes())
        .unwrap();
    let mut status = 0;
    // SAFETY: plain wait4 on our own child; rusage is written by the kernel.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let pid = child.id() as i32;
    let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(rc, pid, "wait4");
    let wall = start.elapsed();
    let st = std::process::ExitStatus::from_raw(status);
    assert!(st.success(), "{exe} {verb} failed");
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    Sample {
        wall,
        cpu: tv(usage.ru_utime) + tv(usage.ru_stime),
        max_rss_kib: usage.ru_maxrss,
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

struct Side {
    name: &'static str,
    exe: String,
    path: String,
    conf: String,
    node: NetNs,
    walls: Vec<Duration>,
    adds: Vec<Duration>,
    dels: Vec<Duration>,
    cpus: Vec<Duration>,
    rss: i64,
}

fn main() {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "run as root (it makes namespaces)"
    );
    netns::sweep_stale("pnbench");
    let data = std::env::temp_dir().join(format!("pnbench-cni-{}", std::process::id()));
    let ours_bin = std::env::temp_dir().join(format!("pnbench-bin-{}", std::process::id()));
    std::fs::create_dir_all(&ours_bin).unwrap();
    let _ = std::fs::remove_file(ours_bin.join("podnet"));
    // bench/cni-cycle/run passes the statically linked build, as installed.
    let plugin = std::env::var("PODNET_CNI_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_podnet-cni").to_string());
    std::os::unix::fs::symlink(&plugin, ours_bin.join("podnet")).unwrap();
    println!("podnet plugin: {plugin}");
    let conf = |kind: &str, ipam: &str| {
        json!({
            "cniVersion": "1.0.0", "name": format!("bench-{kind}"), "type": kind,
            "bridge": "benchbr0", "isGateway": true, "mtu": 1500,
            "ipam": {"type": ipam, "ranges": [[{"subnet": "10.90.0.0/16"}]],
                     "routes": [{"dst": "0.0.0.0/0"}],
                     "dataDir": data.join(kind).display().to_string()}
        })
        .to_string()
    };
    let mut sides = [
        Side {
            name: "podnet",
            exe: ours_bin.join("podnet").display().to_string(),
            path: format!("{}:/usr/lib/cni", ours_bin.display()),
            conf: conf("podnet", "podnet"),
            node: NetNs::unique("pnbench-podnet").unwrap(),
            walls: vec![],
            adds: vec![],
            dels: vec![],
            cpus: vec![],
            rss: 0,
        },
        Side {
            name: "bridge+host-local",
            exe: "/usr/lib/cni/bridge".into(),
            path: "/usr/lib/cni".into(),
            conf: conf("bridge", "host-local"),
            node: NetNs::unique("pnbench-ref").unwrap(),
            walls: vec![],
            adds: vec![],
            dels: vec![],
            cpus: vec![],
            rss: 0,
        },
    ];
    let pods: Vec<NetNs> = (0..2)
        .map(|_| NetNs::unique("pnbench-pod").unwrap())
        .collect();
    // Warm up both (bridge creation, page cache), then alternate.
    for cycle in 0..CYCLES + 5 {
        for (side, pod) in sides.iter_mut().zip(&pods) {
            let id = format!("c{cycle}");
            let pod_path = pod.path().display().to_string();
            let add = invoke(
                &side.node, &side.exe, "ADD", &id, &pod_path, &side.path, &side.conf,
            );
            let del = invoke(
                &side.node, &side.exe, "DEL", &id, &pod_path, &side.path, &side.conf,
            );
            if cycle >= 5 {
                side.walls.push(add.wall + del.wall);
                side.adds.push(add.wall);
                side.dels.push(del.wall);
                side.cpus.push(add.cpu + del.cpu);
                side.rss = side.rss.max(add.max_rss_kib).max(del.max_rss_kib);
            }
        }
    }
    println!("cni-cycle: {CYCLES} ADD+DEL cycles each, alternating, same run");
    println!(
        "{:<20} {:>14} {:>10} {:>10} {:>14} {:>22}",
        "plugin", "median wall", "ADD", "DEL", "median CPU", "peak RSS/invocation"
    );
    let mut meds = Vec::new();
    for s in &sides {
        let w = median(s.walls.clone());
        let c = median(s.cpus.clone());
        meds.push((w, c));
        println!(
            "{:<20} {:>11.2} ms {:>7.2} ms {:>7.2} ms {:>11.2} ms {:>18} KiB",
            s.name,
            w.as_secs_f64() * 1e3,
            median(s.adds.clone()).as_secs_f64() * 1e3,
            median(s.dels.clone()).as_secs_f64() * 1e3,
            c.as_secs_f64() * 1e3,
            s.rss
        );
    }
    println!(
        "ratio (reference / podnet): wall {:.1}x, CPU {:.1}x",
        meds[1].0.as_secs_f64() / meds[0].0.as_secs_f64(),
        meds[1].1.as_secs_f64() / meds[0].1.as_secs_f64()
    );
    let _ = std::fs::remove_dir_all(&data);
    let _ = std::fs::remove_dir_all(&ours_bin);
}
