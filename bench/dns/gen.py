#!/usr/bin/env python3
"""Generates one cluster of N ClusterIP services for the DNS benchmark, in
the three forms the servers load: Kubernetes objects (podnet-dns), an RFC
1035 zone file (NSD) and a hosts file (dnsmasq), plus the dnsperf queries.

usage: gen.py N OUTDIR
"""
import json
import os
import random
import sys

ZONE = "cluster.local"


def main():
    n, out = int(sys.argv[1]), sys.argv[2]
    os.makedirs(out, exist_ok=True)
    namespaces = [f"ns{i}" for i in range(max(1, n // 100))]
    items = [{"kind": "Namespace", "apiVersion": "v1", "metadata": {"name": ns}} for ns in namespaces]
    records = []
    for i in range(n):
        ns = namespaces[i % len(namespaces)]
        name = f"svc{i}"
        ip = f"10.{96 + i // 65536}.{(i // 256) % 256}.{i % 256}"
        items.append({
            "kind": "Service", "apiVersion": "v1",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"type": "ClusterIP", "clusterIP": ip, "clusterIPs": [ip],
                     "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]},
        })
        records.append((f"{name}.{ns}.svc.{ZONE}", ip))
    with open(os.path.join(out, "objects.json"), "w") as f:
        json.dump({"kind": "List", "apiVersion": "v1", "items": items}, f)
    with open(os.path.join(out, "zone"), "w") as f:
        f.write(f"$ORIGIN {ZONE}.\n$TTL 30\n")
        f.write(f"@ IN SOA ns.dns.{ZONE}. hostmaster.{ZONE}. 1 7200 1800 86400 30\n")
        f.write(f"@ IN NS ns.dns.{ZONE}.\nns.dns IN A 10.96.0.10\n")
        for name, ip in records:
            f.write(f"{name}. IN A {ip}\n")
    with open(os.path.join(out, "hosts"), "w") as f:
        for name, ip in records:
            f.write(f"{ip} {name}\n")
    rng = random.Random(42)
    qs = [name for name, _ in records]
    rng.shuffle(qs)
    with open(os.path.join(out, "queries"), "w") as f:
        for name in qs:
            f.write(f"{name} A\n")


if __name__ == "__main__":
    main()
