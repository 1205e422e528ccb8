//! The lab's network: an underlay namespace holding a bridge, and one
//! namespace per node joined to it by a veth. Nothing is made in the host's
//! namespace; every link is created inside a lab namespace.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, bail};

/// Runs `ip` with `args`, failing with its message.
pub fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running ip (install iproute2)")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// The underlay namespace's name.
pub fn underlay(lab: &str) -> String {
    format!("{lab}-underlay")
}

/// Creates the underlay namespace and its bridge.
pub fn create_underlay(lab: &str) -> anyhow::Result<()> {
    let ul = underlay(lab);
    ip(&["netns", "add", &ul])?;
    ip(&["-n", &ul, "link", "set", "lo", "up"])?;
    ip(&["-n", &ul, "link", "add", "underlay0", "type", "bridge"])?;
    ip(&["-n", &ul, "link", "set", "underlay0", "up"])?;
    Ok(())
}

/// The largest packet the underlay carries in one buffer when nothing
/// encapsulates (BIG TCP, 192 KiB as Cilium uses): the agents see it on
/// their `eth0` and give their pods the same. A VXLAN underlay keeps the
/// kernel's 64 KiB, which is all a UDP datagram can describe.
pub const BIG_TCP_SIZE: u32 = 196_608;

/// Creates node `i`'s namespace, wires `eth0` to the underlay with
/// `172.18.0.<i+2>/16` (carrying `gso_max_size`-byte packets when given),
/// and turns on forwarding inside it.
pub fn create_node(
    lab: &str,
    i: usize,
    name: &str,
    gso_max_size: Option<u32>,
) -> anyhow::Result<()> {
    let ul = underlay(lab);
    let addr = format!("{}/16", super::node_ip(i));
    let port = format!("node{i}");
    ip(&["netns", "add", name])?;
    ip(&["-n", name, "link", "set", "lo", "up"])?;
    ip(&[
        "-n", &ul, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", name,
    ])?;
    if let Some(size) = gso_max_size {
        // Both ends: the node sends and receives such packets on `eth0`
        // (its agent reads the limit there), the underlay forwards them.
        for (ns, link) in [(ul.as_str(), port.as_str()), (name, "eth0")] {
            set_gso_max_size(ns, link, size)?;
        }
    }
    ip(&["-n", &ul, "link", "set", &port, "master", "underlay0", "up"])?;
    ip(&["-n", name, "addr", "add", &addr, "dev", "eth0"])?;
    // Only speed rides on it: a kernel without RPS still gets a lab.
    if let Err(e) = steer_receive(name, "eth0", RECEIVE_CPUS) {
        tracing::warn!(
            node = name,
            error = format!("{e:#}"),
            "eth0 receive steering not set"
        );
    }
    ip(&["-n", name, "link", "set", "eth0", "up"])?;
    sysctl_in(name, "net/ipv4/ip_forward", "1")?;
    sysctl_in(name, "net/ipv6/conf/all/forwarding", "1")?;
    Ok(())
}

/// The CPUs (a mask) that handle what a node receives on `eth0`: CPU 0,
/// for every node.
///
/// A veth hands a packet to its peer on the sending CPU, so without this
/// one CPU carries a cross-node flow through both nodes: sender's stack,
/// bridge, routing, encapsulation, the underlay, decapsulation, bridge and
/// receiver's stack. A NIC does not: its interrupt runs the receiving half
/// on a CPU of its own. Steering the node's receive work (RPS) to one CPU
/// does the same here, so the two halves of a flow run in parallel. One
/// CPU for every node, not one per node: a flow's ACKs and its data then
/// meet on the same CPU instead of fighting over the sender's socket from
/// two (measured: VXLAN across nodes 15.5 Gbit/s against 12.2 without, and
/// 12.5 when each node had a CPU of its own).
pub const RECEIVE_CPUS: &str = "1";

/// Writes a link's RPS mask (`queues/rx-0/rps_cpus`). sysfs shows the
/// links of the namespace it was mounted in, so the write happens with a
/// sysfs mounted in a private mount namespace of the node's thread, as `ip
/// netns exec` does; the thread's mounts end with it.
fn steer_receive(ns: &str, link: &str, cpus: &str) -> anyhow::Result<()> {
    use nix::mount::{MntFlags, MsFlags, mount, umount2};
    let path = format!("/sys/class/net/{link}/queues/rx-0/rps_cpus");
    in_node(ns, || -> anyhow::Result<()> {
        podnet_kernel::netns::private_mount_namespace().context("a mount namespace for sysfs")?;
        umount2("/sys", MntFlags::MNT_DETACH).context("unmounting /sys")?;
        mount(
            Some("sysfs"),
            "/sys",
            Some("sysfs"),
            MsFlags::empty(),
            None::<&str>,
        )
        .context("mounting sysfs")?;
        std::fs::write(&path, cpus).with_context(|| format!("write {path} in {ns}"))
    })?
}

/// Runs `f` on a short-lived thread inside node (or underlay) namespace
/// `ns`.
fn in_node<R: Send>(ns: &str, f: impl FnOnce() -> R + Send) -> anyhow::Result<R> {
    let path = Path::new(podnet_kernel::netns::NETNS_DIR).join(ns);
    let file = std::fs::File::open(&path).with_context(|| format!("open {}", path.display()))?;
    Ok(podnet_kernel::netns::run_in(
        std::os::fd::AsFd::as_fd(&file),
        &path,
        f,
    )?)
}

/// Sets a link's GSO/GRO limits (IPv4 ones need rtnetlink: the Debian
/// `ip` knows only the generic ones).
fn set_gso_max_size(ns: &str, link: &str, size: u32) -> anyhow::Result<()> {
    let file = std::fs::File::open(Path::new(podnet_kernel::netns::NETNS_DIR).join(ns))?;
    let mut nl = podnet_kernel::netlink::Netlink::open_in(std::os::fd::AsFd::as_fd(&file))?;
    let index = nl
        .link_by_name(link)?
        .with_context(|| format!("{link} vanished from {ns}"))?
        .index;
    nl.set_gso_max_size(index, size)
        .with_context(|| format!("BIG TCP on {link} in {ns} (needs Linux 6.3 or later)"))
}

/// Writes a sysctl inside a namespace (`/proc/sys/net` is per namespace,
/// resolved when the file is opened, so the write runs on a thread that
/// entered it).
pub fn sysctl_in(ns: &str, key: &str, value: &str) -> anyhow::Result<()> {
    let path = format!("/proc/sys/{key}");
    in_node(ns, || std::fs::write(&path, value))?.with_context(|| format!("write {path} in {ns}"))
}
