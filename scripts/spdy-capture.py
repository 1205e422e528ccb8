#!/usr/bin/env python3
"""Captures what a real kubectl sends over SPDY/3.1, for the unit tests of
crates/podnet-apiserver/src/spdy.rs (testdata/*.spdy).

Listens on 127.0.0.1:PORT as a bare API server: answers the upgrade with 101,
each SYN_STREAM with a SYN_REPLY, and records every byte the client sends
after the upgrade to OUT until the client has been quiet for a second.

  spdy-capture.py PORT OUT &
  kubectl --server http://127.0.0.1:PORT exec -i p -- cat <<< hi
"""
import socket, struct, sys, zlib

port, out = int(sys.argv[1]), sys.argv[2]

def dictionary():
    # SPDY/3 draft, 2.6.10.1: rebuilt here from its words (as spdy.rs does).
    import re
    src = open(__file__.replace('scripts/spdy-capture.py', 'crates/podnet-apiserver/src/spdy.rs')).read()
    words = re.search(r'const WORDS: &\[&str\] = &\[(.*?)\];', src, re.S).group(1)
    tail = ''.join(re.findall(r'"(.*?)"', re.search(r'const TAIL: &str = concat!\((.*?)\);', src, re.S).group(1)))
    d = b''
    for w in re.findall(r'"(.*?)"', words):
        d += struct.pack('>I', len(w)) + w.encode()
    return d + tail.encode()

zd = dictionary()
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(('127.0.0.1', port)); srv.listen(1)
while True:
    c, _ = srv.accept()
    req = b''
    while b'\r\n\r\n' not in req:
        req += c.recv(4096)
    head, rest = req.split(b'\r\n\r\n', 1)
    lines = head.decode().split('\r\n')
    if not lines[0].startswith(('GET /api/v1/namespaces', 'POST /api/v1/namespaces')) or 'upgrade' not in head.decode().lower():
        # discovery, then the pod GET kubectl does first: a minimal running Pod
        path = lines[0].split()[1].split('?')[0]
        body = {
            '/api': b'{"kind":"APIVersions","versions":["v1"]}',
            '/apis': b'{"kind":"APIGroupList","apiVersion":"v1","groups":[]}',
            '/api/v1': b'{"kind":"APIResourceList","groupVersion":"v1","resources":[{"name":"pods","singularName":"pod","namespaced":true,"kind":"Pod","verbs":["get","list"],"shortNames":["po"]},{"name":"pods/exec","singularName":"","namespaced":true,"kind":"PodExecOptions","verbs":["create","get"]},{"name":"pods/portforward","singularName":"","namespaced":true,"kind":"PodPortForwardOptions","verbs":["create","get"]}]}',
        }.get(path, b'{"kind":"Pod","apiVersion":"v1","metadata":{"name":"p","namespace":"default"},"spec":{"containers":[{"name":"c","image":"busybox","ports":[{"containerPort":80}]}]},"status":{"phase":"Running"}}')
        c.sendall(b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n\r\n' % len(body) + body)
        c.close(); continue
    proto = [l.split(':', 1)[1].strip() for l in lines if l.lower().startswith('x-stream-protocol-version')][0]
    c.sendall(('HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\nX-Stream-Protocol-Version: %s\r\n\r\n' % proto).encode())
    comp = zlib.compressobj(zdict=zd)
    data = rest
    c.settimeout(1.0)
    buf = rest
    try:
        while True:
            while len(buf) >= 8:
                ln = struct.unpack('>I', buf[4:8])[0] & 0xffffff
                if len(buf) < 8 + ln: break
                fr, buf = buf[:8 + ln], buf[8 + ln:]
                if fr[0] & 0x80 and struct.unpack('>H', fr[2:4])[0] == 1:
                    sid = fr[8:12]
                    hb = comp.compress(struct.pack('>I', 0)) + comp.flush(zlib.Z_SYNC_FLUSH)
                    body = sid + hb
                    c.sendall(struct.pack('>I', 0x80030002) + struct.pack('>I', len(body)) + body)
            more = c.recv(65536)
            if not more: break
            data += more; buf += more
    except socket.timeout:
        pass
    open(out, 'wb').write(data)
    c.close()
    break
