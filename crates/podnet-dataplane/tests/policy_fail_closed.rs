//! The policy table outlives its agent (fail closed), a restart replaces it
//! without a window, and a full resync lands on exactly what the
//! incremental updates built.

mod policy_lab;

use std::collections::VecDeque;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use podnet_core::policy::Proto;
use podnet_dataplane::policy::{PolicyApplier, SyncKind};
use policy_lab::{Lab, PROBES, agents, fresh_udp_socket, netpol, table_text};
use serde_json::json;

#[test]
fn rules_survive_the_applier_being_dropped_and_a_restart_has_no_window() {
    let lab = Lab::xyz();
    let deny = netpol(
        "x",
        "deny-all",
        json!({"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}),
    );
    let policies = [deny];
    {
        let mut agents = lab.agents();
        lab.assert_case(&mut agents, &policies);
    } // the agents are gone
    let before: Vec<String> = lab.nodes.iter().map(|n| table_text(&n.ns)).collect();
    let expected = lab.expected(&policies);
    assert_eq!(
        expected.mismatches(&lab.probe()),
        vec![],
        "without its agent the node still enforces"
    );

    // Restart: while new agents load the table, y/a keeps knocking on x/a
    // (same node) and x/c (the other node), about every half millisecond
    // (the probes of PROBES in turn); no knock may get through. A restart
    // counts once knocks went out all through it (none of its stretches
    // without one is longer than GAP, and it saw MIN_KNOCKS or more);
    // restarts go on until RESTARTS have counted (at most 50).
    const RESTARTS: usize = 5;
    const GAP: Duration = Duration::from_millis(5);
    const MIN_KNOCKS: usize = 8;
    let stop = AtomicBool::new(false);
    let sent = Mutex::new(Vec::new());
    let through = Mutex::new(Vec::new());
    let (xa, xc) = (lab.pod("x/a").ip, lab.pod("x/c").ip);
    let mut windows: Vec<(Duration, usize, bool)> = Vec::new();
    std::thread::scope(|s| {
        let knocker = s.spawn(|| {
            lab.pod("y/a")
                .ns
                .run(|| knock_until(&stop, &[xa, xc], &sent, &through))
                .unwrap()
        });
        // knocks are flowing before the first restart
        std::thread::sleep(Duration::from_millis(50));
        while windows.iter().filter(|w| w.2).count() < RESTARTS
            && windows.len() < 50
            && !knocker.is_finished()
        {
            let begun = Instant::now();
            let mut agents = lab.agents();
            lab.enforce(&mut agents, &policies);
            let done = Instant::now();
            drop(agents);
            // the knocks of the window's last stretch are out
            std::thread::sleep(2 * GAP);
            let (n, ok) = covered(&sent.lock().unwrap(), begun, done, GAP, MIN_KNOCKS);
            windows.push((done - begun, n, ok));
        }
        stop.store(true, Ordering::Relaxed);
        knocker.join().unwrap();
    });
    let knocks = sent.into_inner().unwrap().len();
    eprintln!("restarts (length, knocks in it, covered): {windows:?}; {knocks} knocks in all");
    assert_eq!(
        through.into_inner().unwrap(),
        Vec::<String>::new(),
        "knocks got through"
    );
    assert!(
        windows.iter().filter(|w| w.2).count() >= RESTARTS,
        "in {} restarts, fewer than {RESTARTS} had knocks all through them: {windows:?}",
        windows.len()
    );
    let after: Vec<String> = lab.nodes.iter().map(|n| table_text(&n.ns)).collect();
    assert_eq!(
        before, after,
        "the ruleset after the restart equals the one before"
    );
}

#[test]
fn full_resync_equals_the_incremental_result() {
    let mut lab = Lab::xyz();
    let files = lab.node_files();
    let mut incremental = agents(&files);
    let steps = [
        vec![netpol(
            "x",
            "deny",
            json!({"podSelector": {}, "ingress": []}),
        )],
        vec![
            netpol("x", "deny", json!({"podSelector": {}, "ingress": []})),
            netpol(
                "x",
                "from-y",
                json!({"podSelector": {"matchLabels": {"pod": "a"}},
                       "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}],
                                    "ports": [{"port": "serve-80-tcp"}, {"port": 81, "endPort": 82, "protocol": "UDP"}]}]}),
            ),
            netpol(
                "y",
                "egress-cidr",
                json!({"podSelector": {}, "policyTypes": ["Egress"],
                       "egress": [{"to": [{"ipBlock": {"cidr": "10.244.0.0/16", "except": ["10.244.1.0/28"]}}]}]}),
            ),
        ],
        // Single ports and ranges deleted again (element deletes).
        vec![
            netpol("x", "deny", json!({"podSelector": {}, "ingress": []})),
            netpol(
                "x",
                "from-y",
                json!({"podSelector": {"matchLabels": {"pod": "a"}},
                       "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}],
                                    "ports": [{"port": 81, "protocol": "TCP"}]}]}),
            ),
        ],
    ];
    for (i, policies) in steps.iter().enumerate() {
        for (n, agent) in incremental.iter_mut().enumerate() {
            let kind = agent.sync(&lab.plan(n, policies)).unwrap();
            if i == 0 {
                assert_eq!(kind, SyncKind::Full);
            } else {
                assert!(matches!(kind, SyncKind::Elements(_)), "{kind:?}");
            }
        }
        assert_eq!(lab.expected(policies).mismatches(&lab.probe()), vec![]);
    }
    // Labels change under the agents: element updates again.
    lab.label_pod("z/a", "pod", "b");
    lab.label_namespace("z", "ns", "y");
    let last = &steps[2];
    for (n, agent) in incremental.iter_mut().enumerate() {
        let kind = agent.sync(&lab.plan(n, last)).unwrap();
        // n1 holds the peers' pods and x/a; n2's sets do not change.
        let want_change = n == 0;
        assert_eq!(
            kind != SyncKind::Unchanged,
            want_change,
            "node {n}: {kind:?}"
        );
        assert_ne!(kind, SyncKind::Full);
    }
    assert_eq!(lab.expected(last).mismatches(&lab.probe()), vec![]);
    let incremental_text: Vec<String> = lab.nodes.iter().map(|n| table_text(&n.ns)).collect();

    // A fresh agent resyncs from nothing but the objects.
    for (n, f) in files.iter().enumerate() {
        let mut fresh = PolicyApplier::new(podnet_dataplane::nft::Namespace::Fd(
            std::os::fd::AsFd::as_fd(f),
        ));
        assert_eq!(fresh.resync(&lab.plan(n, last)).unwrap(), SyncKind::Full);
    }
    let full_text: Vec<String> = lab.nodes.iter().map(|n| table_text(&n.ns)).collect();
    assert_eq!(incremental_text, full_text);
    assert_eq!(lab.expected(last).mismatches(&lab.probe()), vec![]);
}

/// How long a knock waits for its answer: far longer than an answer takes
/// on these veths.
const HOLD: Duration = Duration::from_millis(50);

/// One knock: a TCP connect begun without waiting, or a UDP datagram sent
/// to an echo server, looked at again after [`HOLD`].
enum Knock {
    Tcp(OwnedFd),
    Udp(UdpSocket),
}

impl Knock {
    /// Sends it (a socket that cannot be made fails the test).
    fn send(to: Ipv4Addr, port: u16, proto: Proto) -> Knock {
        let addr = SocketAddrV4::new(to, port);
        match proto {
            Proto::Tcp => {
                use std::os::fd::FromRawFd;
                // SAFETY: plain socket(2); the descriptor is owned at once.
                let raw = unsafe {
                    libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_NONBLOCK, 0)
                };
                assert!(raw >= 0, "tcp socket: {}", std::io::Error::last_os_error());
                // SAFETY: `raw` is a fresh descriptor nothing else owns.
                let fd = unsafe { OwnedFd::from_raw_fd(raw) };
                let sa = libc::sockaddr_in {
                    sin_family: libc::AF_INET as libc::sa_family_t,
                    sin_port: port.to_be(),
                    sin_addr: libc::in_addr {
                        s_addr: u32::from(to).to_be(),
                    },
                    sin_zero: [0; 8],
                };
                // SAFETY: `sa` is a valid sockaddr_in of the length given.
                let r = unsafe {
                    libc::connect(
                        fd.as_raw_fd(),
                        (&raw const sa).cast(),
                        std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
                    )
                };
                let e = std::io::Error::last_os_error();
                assert!(
                    r == 0 || e.raw_os_error() == Some(libc::EINPROGRESS),
                    "connect to {addr}: {e}"
                );
                Knock::Tcp(fd)
            }
            Proto::Udp => {
                let s = fresh_udp_socket().expect("a udp socket");
                s.set_nonblocking(true).unwrap();
                s.connect(SocketAddr::V4(addr)).unwrap();
                s.send(b"probe").unwrap();
                Knock::Udp(s)
            }
            Proto::Sctp => panic!("this kernel has no SCTP"),
        }
    }

    /// Whether it got through: the connection was made, or the echo came.
    fn answered(&self) -> bool {
        match self {
            Knock::Tcp(fd) => {
                // SAFETY: getpeername(2) into storage of the length given.
                let mut sa: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
                let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
                unsafe { libc::getpeername(fd.as_raw_fd(), (&raw mut sa).cast(), &mut len) == 0 }
            }
            Knock::Udp(s) => {
                let mut buf = [0u8; 16];
                matches!(s.recv(&mut buf), Ok(5) if &buf[..5] == b"probe")
            }
        }
    }
}

/// Knocks on each of `targets` with the probes of PROBES in turn, about
/// every half millisecond, until `stop`; stamps each knock in `sent` and
/// names in `through` those that got through.
fn knock_until(
    stop: &AtomicBool,
    targets: &[Ipv4Addr],
    sent: &Mutex<Vec<Instant>>,
    through: &Mutex<Vec<String>>,
) {
    let mut pending: VecDeque<(Instant, String, Knock)> = VecDeque::new();
    let look = |pending: &mut VecDeque<(Instant, String, Knock)>, all: bool| {
        while let Some((at, _, _)) = pending.front() {
            if !all && at.elapsed() < HOLD {
                break;
            }
            let (_, what, k) = pending.pop_front().unwrap();
            if k.answered() {
                through.lock().unwrap().push(what);
            }
        }
    };
    let mut round = 0usize;
    while !stop.load(Ordering::Relaxed) {
        let p = PROBES[round % PROBES.len()];
        round += 1;
        for &to in targets {
            let k = Knock::send(to, p.port, p.proto);
            let at = Instant::now();
            sent.lock().unwrap().push(at);
            pending.push_back((at, format!("{p:?} to {to}"), k));
        }
        look(&mut pending, false);
        std::thread::sleep(Duration::from_micros(500));
    }
    std::thread::sleep(HOLD);
    look(&mut pending, true);
}

/// Knocks sent in [begun, done], and whether they cover it: no stretch of
/// it (from its start to the first knock, between knocks, from the last to
/// its end) longer than `gap`, and at least `min` knocks.
fn covered(
    sent: &[Instant],
    begun: Instant,
    done: Instant,
    gap: Duration,
    min: usize,
) -> (usize, bool) {
    let inside: Vec<Instant> = sent
        .iter()
        .copied()
        .filter(|t| *t >= begun && *t <= done)
        .collect();
    let mut marks = vec![begun];
    marks.extend(&inside);
    marks.push(done);
    let ok = inside.len() >= min && marks.windows(2).all(|w| w[1] - w[0] <= gap);
    (inside.len(), ok)
}
