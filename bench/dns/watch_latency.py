#!/usr/bin/env python3
"""Update-to-answer latency of podnet-dns watching a real API server (the
path a cluster takes: API write -> watch event -> index update -> answer).

Loads the Namespaces and Services of OBJECTS.json into the API server (the
server allocates the ClusterIPs), waits until podnet-dns answers the last
of them, then creates COUNT new Services one at a time and, for each, times
from just before the POST is sent to the first correct A answer (raw UDP
polls). Prints p50/p99.

usage: watch_latency.py KUBECONFIG OBJECTS.json DNS_IP DNS_PORT COUNT
"""
import base64
import concurrent.futures
import http.client
import json
import re
import socket
import ssl
import struct
import sys
import tempfile
import time
import urllib.parse


def kubeconfig(path):
    text = open(path).read()
    server = re.search(r"server:\s*(\S+)", text).group(1)
    ca = base64.b64decode(re.search(r"certificate-authority-data:\s*(\S+)", text).group(1))
    token = re.search(r"token:\s*(\S+)", text).group(1)
    return server, ca.decode(), token


class Api:
    def __init__(self, server, ca, token):
        u = urllib.parse.urlparse(server)
        self.host, self.port = u.hostname, u.port or 443
        self.ctx = ssl.create_default_context(cadata=ca)
        self.headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}

    def conn(self):
        return http.client.HTTPSConnection(self.host, self.port, context=self.ctx, timeout=30)

    def post(self, conn, path, obj):
        conn.request("POST", path, body=json.dumps(obj), headers=self.headers)
        r = conn.getresponse()
        body = r.read()
        if r.status not in (200, 201, 409):
            sys.exit(f"POST {path}: {r.status} {body[:300]!r}")


def svc_path(ns):
    return f"/api/v1/namespaces/{ns}/services"


def query(name, qid):
    q = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    for label in name.split("."):
        q += bytes([len(label)]) + label.encode()
    return q + b"\x00" + struct.pack(">HH", 1, 1)


def answers(s, addr, name, qid):
    """One poll: True when `name` has an A answer."""
    s.sendto(query(name, qid), addr)
    try:
        while True:  # skip late replies to earlier polls
            r = s.recv(2048)
            if r[:2] == struct.pack(">H", qid):
                return r[3] & 0xF == 0 and struct.unpack(">H", r[6:8])[0] > 0
    except socket.timeout:
        return False


def load(api, items):
    nss = [i for i in items if i["kind"] == "Namespace"]
    svcs = [i for i in items if i["kind"] == "Service"]
    c = api.conn()
    for ns in nss:
        api.post(c, "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                           "metadata": {"name": ns["metadata"]["name"]}})

    def batch(part):
        c = api.conn()
        for s in part:
            spec = {k: v for k, v in s["spec"].items() if k not in ("clusterIP", "clusterIPs")}
            api.post(c, svc_path(s["metadata"]["namespace"]),
                     {"apiVersion": "v1", "kind": "Service", "metadata": s["metadata"], "spec": spec})

    with concurrent.futures.ThreadPoolExecutor(8) as ex:
        list(ex.map(batch, [svcs[i::8] for i in range(8)]))
    return svcs


def main():
    kc, objects, ip, port, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
    api = Api(*kubeconfig(kc))
    t = time.monotonic()
    svcs = load(api, json.load(open(objects))["items"])
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(0.05)
    addr = (ip, port)
    last = svcs[-1]["metadata"]
    fq = f"{last['name']}.{last['namespace']}.svc.cluster.local"
    qid = 0
    while not answers(s, addr, fq, qid):
        qid = (qid + 1) & 0xFFFF
        if time.monotonic() - t > 120:
            sys.exit(f"{fq} never answered after loading")
    print(f"loaded {len(svcs)} services through the API and answered in {time.monotonic() - t:.1f} s")
    time.sleep(1)
    c = api.conn()
    took, api_ms, dns_ms = [], [], []
    for i in range(count):
        name = f"watched{i}"
        fq = f"{name}.ns0.svc.cluster.local"
        obj = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "ns0"},
               "spec": {"ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}}
        t0 = time.monotonic()
        api.post(c, svc_path("ns0"), obj)
        t1 = time.monotonic()
        api_ms.append((t1 - t0) * 1000)
        while True:
            qid = (qid + 1) & 0xFFFF
            if answers(s, addr, fq, qid):
                break
            time.sleep(0.001)
            if time.monotonic() - t0 > 10:
                sys.exit(f"{fq} never answered")
        took.append((time.monotonic() - t0) * 1000)
        dns_ms.append((time.monotonic() - t1) * 1000)
        time.sleep(0.05)  # one change at a time, as an operator makes them
    def pct(v, q):
        v = sorted(v)
        return v[min(len(v) - 1, int(q * len(v)))]

    for what, v in [("update-to-answer (POST sent -> first correct answer)", took),
                    ("  of which the API write (POST sent -> 201)", api_ms),
                    ("  of which watch + index + answer (201 -> answer)", dns_ms)]:
        print(f"{what}, {count} services at {len(svcs)}: "
              f"p50 {pct(v, 0.5):.1f} ms, p99 {pct(v, 0.99):.1f} ms, max {max(v):.1f} ms")


if __name__ == "__main__":
    main()
