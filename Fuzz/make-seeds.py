#!/usr/bin/env python3
"""Writes the fuzz targets' seed corpora (Fuzz/corpus/TARGET/*): packets like the unit tests' (every service
of the packet target's configuration, both directions, both families, TCP flags, UDP, ICMP errors, tunnels,
malformed variants), kernel messages (a queued packet, ctnetlink NEW/DESTROY events) and the configurations
of the tests and the README. Usage: Fuzz/make-seeds.py [OUT=Fuzz/corpus]"""
import os, pathlib, socket, struct, sys

root = pathlib.Path(__file__).resolve().parent
out = pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else root / "corpus"

def csum(data):
    if len(data) % 2: data += b"\0"
    s = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while s >> 16: s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF

def a(text):
    return socket.inet_pton(socket.AF_INET6 if ":" in text else socket.AF_INET, text)

def transport(proto, src, dst, sport, dport, flags=0x02, payload=b""):
    if proto == 6:
        seg = struct.pack("!HHIIBBHHH", sport, dport, 1000, 0 if flags == 0x02 else 1, 0x50, flags, 65535, 0, 0) + payload
    else:
        seg = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    pseudo = src + dst + (struct.pack("!BBH", 0, proto, len(seg)) if len(src) == 4 else struct.pack("!IxxxB", len(seg), proto))
    c = csum(pseudo + seg)
    off = 16 if proto == 6 else 6
    return seg[:off] + struct.pack("!H", c) + seg[off + 2:]

def ip(src, dst, proto, body, df=True):
    s, d = a(src), a(dst)
    if len(s) == 4:
        h = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(body), 1, 0x4000 if df else 0, 64, proto, 0, s, d)
        return h[:10] + struct.pack("!H", csum(h)) + h[12:] + body
    return struct.pack("!IHBB16s16s", 0x60000000, len(body), proto, 64, s, d) + body

def packet(src, dst, proto, sport, dport, flags=0x02, payload=b""):
    return ip(src, dst, proto, transport(proto, a(src), a(dst), sport, dport, flags, payload))

def icmp_error(src, dst, quoted, v6):
    body = struct.pack("!BBHI", 1 if v6 else 3, 4 if v6 else 3, 0, 0) + quoted[:60 if not v6 else 1200]
    if v6:
        pseudo = a(src) + a(dst) + struct.pack("!IxxxB", len(body), 58)
        c = csum(pseudo + body)
    else:
        c = csum(body)
    body = body[:2] + struct.pack("!H", c) + body[4:]
    return ip(src, dst, 58 if v6 else 1, body)

packets = []
for vip, client, reals, local in [("203.0.113.10", "192.0.2.2", ["198.51.100.11", "198.51.100.13", "198.51.100.16"], "198.51.100.1"),
                                  ("2001:db8:f::10", "2001:db8:c::2", ["2001:db8:5::11", "2001:db8:5::12"], "2001:db8:5::1")]:
    v6 = ":" in vip
    for port in (80, 81, 82, 83, 84):
        for flags in (0x02, 0x10, 0x18, 0x11, 0x04, 0x12):
            packets.append(packet(client, vip, 6, 40000 + port, port, flags, b"GET / HTTP/1.0\r\n\r\n" if flags == 0x18 else b""))
    for port in (53, 54):
        packets.append(packet(client, vip, 17, 40053, port, payload=b"\x12\x34" + b"\0" * 10))
    for real in reals:
        packets.append(packet(real, client, 6, 8080, 40080, 0x12))
        packets.append(packet(real, local, 6, 80, 50000, 0x12))
        packets.append(packet(real, client, 17, 53, 40053, payload=b"answer"))
    syn = packet(client, vip, 6, 40080, 80)
    packets.append(icmp_error(client, vip, packet(vip, client, 6, 80, 40080, 0x12), v6))
    packets.append(icmp_error(reals[0], client, packet(client, reals[0], 6, 40080, 8080), v6))
    packets.append(packet(client, vip, 6, 40083, 83, 0x18, b"x" * 1480))           # too big for the tunnel
    packets.append(syn[:len(syn) - 7])                                                 # cut
    packets.append(b"\x45" + syn[1:3] + syn[3:])                                     # as is, once more
inner = packet("192.0.2.2", "203.0.113.10", 6, 40000, 80)
packets.append(ip("198.51.100.1", "198.51.100.11", 4, inner))                        # a tunnel (decap's input)
packets.append(ip("192.0.2.2", "203.0.113.10", 47, b"\0" * 20))                      # another protocol
frag = bytearray(syn); frag[6:8] = b"\x20\x00"; packets.append(bytes(frag))          # a fragment

def write(target, items):
    d = out / target
    d.mkdir(parents=True, exist_ok=True)
    for old in d.iterdir(): old.unlink()
    for i, item in enumerate(items):
        (d / ("seed-%03d" % i)).write_bytes(item)

# packet: first byte the queue's info (bits 0-1: checksum not ready, GSO; the rest moves the clock).
write("packet", [bytes([info]) + p for p in packets for info in (0, 3)][:400])

def nlattr(t, v):
    n = 4 + len(v)
    return struct.pack("=HH", n, t) + v + b"\0" * ((4 - n % 4) % 4)

def nlmsg(t, flags, body):
    return struct.pack("=IHHII", 16 + len(body), t, flags, 0, 0) + body

def queued(payload, packet_id=7):
    # NFQNL_MSG_PACKET (subsystem 3, message 0): nfgenmsg, then NFQA_PACKET_HDR (1), NFQA_PAYLOAD (10), NFQA_SKB_INFO (16)
    body = struct.pack("=BBH", 2, 0, socket.htons(0))
    body += nlattr(1, struct.pack("!IHB", packet_id, 0x0800, 1)) + nlattr(16, struct.pack("!I", 2)) + nlattr(10, payload)
    return nlmsg(3 << 8 | 0, 0, body)

def ct_event(kind, proto, src, dst, sport, dport, mark):
    fam = 10 if ":" in src else 2
    def tup(s, d, sp, dp):
        ipattrs = nlattr(3 if fam == 10 else 1, a(s)) + nlattr(4 if fam == 10 else 2, a(d))
        return nlattr(1 | 0x8000, ipattrs) + nlattr(2 | 0x8000, nlattr(1, bytes([proto])) + nlattr(2, struct.pack("!H", sp)) + nlattr(3, struct.pack("!H", dp)))
    body = struct.pack("=BBH", fam, 0, 0)
    body += nlattr(1 | 0x8000, tup(src, dst, sport, dport)) + nlattr(2 | 0x8000, tup("198.51.100.11" if fam == 2 else "2001:db8:5::11", src, 8080, sport))
    body += nlattr(8, struct.pack("!I", mark)) + nlattr(7, struct.pack("!I", 120))
    if proto == 6: body += nlattr(4 | 0x8000, nlattr(1 | 0x8000, nlattr(1, bytes([3]))))
    body += nlattr(9 | 0x8000, nlattr(1, struct.pack("!Q", 10)) + nlattr(2, struct.pack("!Q", 1000)))
    msg = {"new": 0, "destroy": 2}[kind]
    return nlmsg(1 << 8 | msg, 0, body)

messages = [queued(p) for p in packets[:40]]
for kind in ("new", "destroy"):
    for proto in (6, 17):
        messages.append(ct_event(kind, proto, "192.0.2.2", "203.0.113.10", 40000, 80, 0x1001))
        messages.append(ct_event(kind, proto, "2001:db8:c::2", "2001:db8:f::10", 40000, 80, 0x1002))
write("netlink", messages)

configs = [(root.parent / "README.md").read_text()]
configs += [p.read_text() for p in sorted((root.parent / "examples").glob("*.yaml"))] if (root.parent / "examples").is_dir() else []
import re
for path in sorted((root.parent / "Tests").rglob("*.swift")) + sorted((root.parent / "Tests").rglob("*.sh")):
    text = path.read_text()
    configs += [m.group(1) for m in re.finditer(r'"""\n(.*?)"""', text, re.S) if "services" in m.group(1)]
    configs += [m.group(1) for m in re.finditer(r"<<YAML\n(.*?)\nYAML", text, re.S)]
src = (root.parent / "Sources/nfqlb-fuzz/Fuzz.swift").read_text()
configs.append(re.search(r'static let yaml = """\n(.*?)"""', src, re.S).group(1))
write("config", [c.encode() for c in configs if c.strip()][:200])
# control: request lines as nfqlb's CLI and the README send them, and broken ones.
service = '{"protocol":"tcp","vip":"203.0.113.10","port":80}'
requests = [
    '{"id":1,"cmd":"list"}',
    '{"id":2,"cmd":"real.edit","args":{"service":%s,"real":{"address":"198.51.100.11","port":8080,"weight":0}}}' % service,
    '{"id":3,"cmd":"service.add","args":{"service":{"protocol":"tcp","vip":"203.0.113.20","port":443,"mode":"nat",'
    '"scheduler":"rr","reals":[{"address":"198.51.100.21","port":8443}]}}}\n'
    '{"cmd":"service.delete","args":{"service":{"protocol":"tcp","vip":"203.0.113.20","port":443}}}',
    '{"cmd":"real.add","args":{"service":{"protocol":"udp","vip":"203.0.113.10","port":53},'
    '"real":{"address":"198.51.100.14","weight":3,"upper":10}}}\n{"cmd":"save","args":{"format":"ipvsadm"}}\n'
    '{"cmd":"connections","args":{"limit":5}}\n{"cmd":"zero"}',
    '{"cmd":"service.edit","args":{"service":{"protocol":"tcp","vip":"203.0.113.10","port":80,"scheduler":"sh",'
    '"scheduler-flags":["sh-port"],"persistence":60}}}\n{"cmd":"real.delete","args":{"service":%s,'
    '"real":{"address":"198.51.100.12","port":8080}}}' % service,
    '{"cmd":"reload"}\nnot json\n{"id":[1,{"a":null}],"cmd":"list","args":[]}',
]
write("control", [r.encode() + b"\n" for r in requests])

# probe: two bytes of query id, a byte choosing the query (0: . SOA, 1: www.example A, 2: the same expecting
# NXDOMAIN), then what the server answered: DNS responses, and HTTP answers.
def dns_question(name, qtype):
    labels = b"".join(bytes([len(l)]) + l.encode() for l in name.split(".") if l)
    return labels + b"\0" + struct.pack(">HH", qtype, 1)

def dns_response(qid, choice, name, qtype, rcode, answers):
    body = struct.pack(">HBBHHHH", qid, 0x81, 0x80 | rcode, 1, answers, 0, 0) + dns_question(name, qtype)
    for i in range(answers):
        body += b"\xc0\x0c" + struct.pack(">HHIH", qtype, 1, 3600, 4) + bytes([192, 0, 2, 10 + i])
    return struct.pack(">HB", qid, choice) + body

# sync: message bodies (the fuzzer appends the tag): a header and records, as SyncMessage.encoded writes them.
def sync_body(records):
    body = b"NQSY" + bytes([1, 0, 0, 0]) + struct.pack(">IQQH", 7, 1, 1, len(records))
    for op, proto, state, local in records:
        body += bytes([op, proto, state, 1 if local else 0])
        for address, port in [("192.0.2.2", 40000), ("203.0.113.10", 80), ("198.51.100.11", 8080), ("198.51.100.1", 61000 if local else 0)]:
            v4 = socket.inet_aton(address) if local or port else bytes(4)
            body += (bytes(10) + b"\xff\xff" + v4 if (local or port) else bytes(16)) + struct.pack(">H", port)
        body += struct.pack(">I", 900000)
    return body

write("sync", [sync_body([]), sync_body([(1, 6, 1, False)]), sync_body([(1, 6, 3, True), (2, 17, 11, False)])])

write("probe", [dns_response(7, 1, "www.example", 1, 0, 1), dns_response(9, 2, "www.example", 1, 3, 0),
                dns_response(1, 0, "", 6, 0, 1), b"\0\0\0HTTP/1.0 200 OK\r\nServer: x\r\n\r\nok abc",
                b"\0\0\0HTTP/1.1 302 Found\r\n\r\n"])
print("seeds: %d packets, %d messages, %d configs in %s" % (min(400, 2 * len(packets)), len(messages), min(200, len(configs)), out))
