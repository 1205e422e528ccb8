#!/usr/bin/env bash
# How soon the cluster DNS of a lab sees changes, as figures (the lab test
# crates/podnet/tests/lab_dns.rs checks only that each change is seen):
#   - a new Service answering, from the start of `kubectl create service`;
#   - a deleted Service answering NXDOMAIN, from the start of `kubectl delete`;
#   - an endpoint leaving the headless answer when its label is removed, and
#     coming back when it is put back, from the start of `kubectl label`;
#   - an endpoint leaving once its readiness probe fails (period 1 s), from
#     the death of its listener;
#   - 1,000 `getent ahosts` (500 from a pod on each worker, at once):
#     failures, p50/p99/slowest, and how many took 1 s or more.
# Each change is watched by a loop inside a client pod (dig every 10 ms),
# timed with the wall clock the pods share with this script. REPS rounds
# (default 5) of each Service and label change; the median and the slowest
# are printed. Run as root; uses a lab of its own (`podnet up`) and removes
# it (KEEP_LAB=1 keeps it).
set -euo pipefail
cd "$(dirname "$0")/../.."
REPS=${REPS:-5}
KUBECTL=${KUBECTL:-/usr/lib/google-cloud-sdk/bin/kubectl.1.33}
cargo build -q --release -p podnet -p podnet-lab-kubelet -p podnet-agent -p podnet-cni -p podnet-dns
PODNET=${CARGO_TARGET_DIR:-target}/release/podnet
LAB=bdns
KC=/tmp/podnet-$LAB.kubeconfig
trap 'if [ -z "${KEEP_LAB:-}" ]; then $PODNET down --name $LAB >/dev/null 2>&1 || true; fi' EXIT
$PODNET up --name $LAB --encap host-gw --workers 2 --kubeconfig "$KC" >/dev/null
export KUBECONFIG=$KC REPS KUBECTL
python3 - <<'PY'
import os, statistics, subprocess, time

kubectl = os.environ["KUBECTL"]
reps = int(os.environ["REPS"])
NETSHOOT = "nicolaka/netshoot"


def k(*args, **kw):
    return subprocess.run([kubectl, *args], check=True, capture_output=True, text=True, **kw).stdout


nodes = [l.split()[0] for l in k("get", "nodes", "--no-headers").splitlines()]
w1, w2 = nodes[1], nodes[2]
docs = [f"""apiVersion: v1
kind: Service
metadata: {{name: web}}
spec:
  selector: {{app: web}}
  ports: [{{port: 80, targetPort: 8080}}]
---
apiVersion: v1
kind: Service
metadata: {{name: hl}}
spec:
  clusterIP: None
  selector: {{app: hl}}
  ports: [{{name: http, port: 9000}}]
"""]
for name, node in [("client", w1), ("client2", w2)]:
    docs.append(f"""apiVersion: v1
kind: Pod
metadata: {{name: {name}, labels: {{run: client}}}}
spec:
  nodeName: {node}
  containers:
  - {{name: c, image: {NETSHOOT}, args: ["sleep", "infinity"]}}
""")
for i in range(3):
    docs.append(f"""apiVersion: v1
kind: Pod
metadata: {{name: hl-{i}, labels: {{app: hl}}}}
spec:
  nodeName: {w1 if i % 2 == 0 else w2}
  containers:
  - name: c
    image: {NETSHOOT}
    args: ["sh", "-c", "nc -dlk 9000 & exec sleep infinity"]
    readinessProbe:
      tcpSocket: {{port: 9000}}
      periodSeconds: 1
      timeoutSeconds: 1
""")
k("apply", "-f", "-", input="---\n".join(docs))
k("wait", "--for=condition=Ready", "pod", "-l", "run=client", "--timeout=120s")
k("wait", "--for=condition=Ready", "pod", "-l", "app=hl", "--timeout=120s")
k("wait", "-n", "kube-system", "--for=condition=Ready", "pod", "-l", "k8s-app=kube-dns", "--timeout=120s")


def watch(until):
    """A loop in the client pod: checks `until` is false, says go, then
    prints the wall clock (ns) when it first holds."""
    script = (f"if {until}; then echo held; exit 1; fi; echo go; end=$(( $(date +%s) + 30 )); "
              f"until {until}; do [ $(date +%s) -lt $end ] || {{ echo timeout; exit 1; }}; sleep 0.01; done; "
              "date +%s%N")
    p = subprocess.Popen([kubectl, "exec", "client", "--", "sh", "-c", script],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = p.stdout.readline().strip()
    if line != "go":
        raise SystemExit(f"watch loop did not start ({line!r}): {until}")
    return p


def ms_since(p, t0):
    out = p.communicate()[0].strip()
    try:
        return (int(out) - t0) / 1e6
    except ValueError:
        raise SystemExit(f"never happened within 30 s: {out!r}")


def report(what, v):
    v = sorted(v)
    print(f"{what}: median {statistics.median(v):.0f} ms, slowest {v[-1]:.0f} ms ({len(v)} rounds)")


fresh = "dig +time=1 +tries=1 +noall +comments +answer {}.default.svc.cluster.local A"
created, deleted = [], []
for i in range(reps):
    name = f"fresh{i}"
    q = fresh.format(name)
    w = watch(f"{q} | grep -q 'IN[[:space:]]*A[[:space:]]'")
    t0 = time.time_ns()
    k("create", "service", "clusterip", name, "--tcp=80:8080")
    created.append(ms_since(w, t0))
    w = watch(f"{q} | grep -q NXDOMAIN")
    t0 = time.time_ns()
    k("delete", "service", name, "--wait=false")
    deleted.append(ms_since(w, t0))
report("new Service answers, from `kubectl create`", created)
report("deleted Service NXDOMAIN, from `kubectl delete`", deleted)

count = "dig +time=1 +tries=1 +short hl.default.svc.cluster.local A"
left, back = [], []
for i in range(reps):
    w = watch(f"[ $({count} | grep -c .) -eq 2 ]")
    t0 = time.time_ns()
    k("label", "pod", "hl-1", "app-")
    left.append(ms_since(w, t0))
    w = watch(f"[ $({count} | grep -c .) -eq 3 ]")
    t0 = time.time_ns()
    k("label", "pod", "hl-1", "app=hl")
    back.append(ms_since(w, t0))
report("relabelled endpoint leaves the headless answer, from `kubectl label`", left)
report("endpoint relabelled back returns, from `kubectl label`", back)

w = watch(f"[ $({count} | grep -c .) -eq 2 ]")
t0 = time.time_ns()
k("exec", "hl-2", "--", "sh", "-c", "kill $(ss -Hltnp 'sport = :9000' | grep -o 'pid=[0-9]*' | cut -d= -f2)")
print(f"not-ready endpoint leaves the headless answer, from its listener's death "
      f"(probe period 1 s): {ms_since(w, t0):.0f} ms")

loop = ("for i in $(seq 1 500); do s=$(date +%s%N); getent ahosts web >/dev/null || echo fail; "
        "echo $(( ($(date +%s%N) - s) / 1000000 )); done")
t = time.monotonic()
ps = [subprocess.Popen([kubectl, "exec", pod, "--", "sh", "-c", loop], stdout=subprocess.PIPE, text=True)
      for pod in ("client", "client2")]
outs = [p.communicate()[0].split() for p in ps]
took = time.monotonic() - t
fails = sum(o.count("fail") for o in outs)
ms = sorted(int(x) for o in outs for x in o if x != "fail")
p = lambda q: ms[min(len(ms) - 1, int(q * len(ms)))]
print(f"1000 getent ahosts from two workers at once in {took:.1f} s: {fails} failed, "
      f"p50 {p(0.5)} ms, p99 {p(0.99)} ms, slowest {ms[-1]} ms, 1 s or more: {sum(1 for x in ms if x >= 1000)}")
PY
