#!/usr/bin/env python3
"""Update-to-answer latency of podnet-dns serving a zone file: adds one
Service at a time to the file, signals the server (SIGHUP, as a watch event
would trigger a rebuild) and polls with raw UDP queries until the new name
answers. Prints p50/p99 over COUNT services.

usage: update_latency.py OBJECTS.json PID IP PORT COUNT
"""
import json
import os
import signal
import socket
import struct
import sys
import time


def query(name, qid):
    q = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    for label in name.split("."):
        q += bytes([len(label)]) + label.encode()
    return q + b"\x00" + struct.pack(">HH", 1, 1)


def main():
    path, pid, ip, port, count = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
    doc = json.load(open(path))
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(0.05)
    took = []
    qid = 0
    for i in range(count):
        name = f"new{i}"
        doc["items"].append({
            "kind": "Service", "apiVersion": "v1",
            "metadata": {"name": name, "namespace": "ns0"},
            "spec": {"clusterIP": f"10.127.{i // 256}.{i % 256}", "ports": [{"port": 80}]},
        })
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(doc, f)
        os.rename(tmp, path)
        fq = f"{name}.ns0.svc.cluster.local"
        t0 = time.monotonic()
        os.kill(pid, signal.SIGHUP)
        while True:
            qid = (qid + 1) & 0xFFFF
            s.sendto(query(fq, qid), (ip, port))
            reply = None
            try:
                while reply is None:  # skip late replies to earlier polls
                    r = s.recv(2048)
                    if r[:2] == struct.pack(">H", qid):
                        reply = r
            except socket.timeout:
                pass
            if reply and reply[3] & 0xF == 0 and struct.unpack(">H", reply[6:8])[0] > 0:
                break
            if time.monotonic() - t0 > 10:
                sys.exit(f"{fq} never answered")
        took.append((time.monotonic() - t0) * 1000)
    took.sort()
    p = lambda q: took[min(len(took) - 1, int(q * len(took)))]
    print(f"update-to-answer over {count} services (file + SIGHUP, includes JSON parse of the whole zone): "
          f"p50 {p(0.5):.1f} ms, p99 {p(0.99):.1f} ms")


if __name__ == "__main__":
    main()
