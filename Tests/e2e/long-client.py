#!/usr/bin/env python3
# Long connections for the labs (lib.sh long_client_start): COUNT connections to VIP:PORT held open, a line
# on each every 200 ms; a connection whose echo stops for 2 s, closes, or changes real server ("rX:" prefix of
# the echo) is broken. Commands on stdin: "report" prints "broken N of COUNT", "stop" prints a summary and
# ends. Bounded: 180 s at most.
import select, socket, sys, time
vip, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
conns, owner, pending, broken = [], {}, {}, {}
for i in range(count):
    s = socket.create_connection((vip, port), timeout=5)
    s.setblocking(False)
    conns.append(s)
buffers = {s: b"" for s in conns}
def send_round(n):
    for i, s in enumerate(conns):
        if i in broken: continue
        if i in pending and time.time() - pending[i][1] > 2:
            broken[i] = "no echo within 2 s"
            continue
        if i in pending: continue
        try:
            s.send(b"%d %d\n" % (i, n)); pending[i] = (n, time.time())
        except OSError as e:
            broken[i] = str(e)
def read_ready(timeout):
    ready, _, _ = select.select([s for i, s in enumerate(conns) if i not in broken], [], [], timeout)
    for s in ready:
        i = conns.index(s)
        try:
            data = s.recv(4096)
        except OSError as e:
            broken[i] = str(e); continue
        if not data:
            broken[i] = "closed"; continue
        buffers[s] += data
        while b"\n" in buffers[s]:
            line, buffers[s] = buffers[s].split(b"\n", 1)
            name = line.split(b":", 1)[0]
            if owner.setdefault(i, name) != name:
                broken[i] = "moved from %s to %s" % (owner[i].decode(), name.decode())
            pending.pop(i, None)
n = 0
started = time.time()
print("open %d" % len(conns), flush=True)
import os
os.set_blocking(sys.stdin.fileno(), False)
command = b""
while True:
    n += 1
    send_round(n)
    end = time.time() + 0.2
    while time.time() < end:
        read_ready(max(0, end - time.time()))
    try:
        command += os.read(sys.stdin.fileno(), 1024)
    except BlockingIOError:
        pass
    if b"stop" in command or time.time() - started > 180:   # bounded: the lab takes about a minute
        break
    if b"report" in command:
        command = b""
        print("broken %d of %d" % (len(broken), len(conns)), flush=True)
servers = {}
for name in owner.values(): servers[name.decode()] = servers.get(name.decode(), 0) + 1
print("broken %d of %d; servers %s" % (len(broken), len(conns), " ".join("%s=%d" % kv for kv in sorted(servers.items()))), flush=True)
for i, why in sorted(broken.items())[:10]: print("  connection %d: %s" % (i, why), flush=True)
