import Testing
@testable import QueueBalancer

/// The conntrack fast path, without the kernel: the config it takes, the marks and rules it asks for, and the
/// verdicts of the packets nfqlb still sees.
@Suite struct ConntrackOffloadTests {
    static func service(_ mode: ForwardingMode, port: UInt16 = 80, reals: [String] = ["198.51.100.11", "198.51.100.12"],
                        offload: Offload = .conntrack) -> VirtualService {
        var service = VirtualService(vip: ip("203.0.113.10"), port: port, transport: .tcp, mode: mode, scheduler: .rr,
                                     reals: reals.map { RealServer(address: ip($0), port: mode == .nat || mode == .fullnat ? 8080 : port) },
                                     localAddresses: mode == .fullnat ? [ip("198.51.100.1"), ip("198.51.100.2")] : [])
        service.offload = offload
        return service
    }

    @Test func configTakesOffloadExceptWithTUNAndOps() throws {
        let base = "queues: [0]\nservices:\n  - { vip: 203.0.113.10, port: 80, protocol: tcp, mode: MODE, offload: conntrack, reals: [ { address: 198.51.100.11 } ] }\n"
        #expect(try ConfigLoader.parse(yaml: base.replacingOccurrences(of: "MODE", with: "nat")).services[0].offload == .conntrack)
        #expect(throws: ConfigError(file: "<config>", line: 3, reason: "offload: conntrack needs the kernel to carry the connection, and for tun it would need ipip, which this kernel lacks (use offload: none)")) {
            try ConfigLoader.parse(yaml: base.replacingOccurrences(of: "MODE", with: "tun"))
        }
        let ops = "queues: [0]\nservices:\n  - { vip: 203.0.113.10, port: 53, protocol: udp, mode: nat, ops: true, offload: conntrack, reals: [ { address: 198.51.100.11 } ] }\n"
        #expect(throws: ConfigError.self) { try ConfigLoader.parse(yaml: ops) }
        #expect(throws: ConfigError.self) { try ConfigLoader.parse(yaml: base.replacingOccurrences(of: "conntrack", with: "kernel")) }
    }

    /// Marks come after DR's route marks, one per NAT real server and one per FULLNAT (real server, local
    /// address); the kernel's NAT rules follow them.
    @Test func marksAndRules() {
        let config = BalancerConfig(queues: [0], services: [Self.service(.dr, port: 90, reals: ["198.51.100.13"], offload: .none),
                                                            Self.service(.nat), Self.service(.fullnat, port: 81)])
        let marks = ConntrackOffload.marks(for: config)
        #expect(marks.count == 2 + 4 && Set(marks.values) == Set((0x1001...0x1006).map(Fwmark.init(rawValue:))))
        let rules = IptablesRules.restoreInput(for: config)
        #expect(rules.contains("*mangle\n:NFQLB-OFFLOAD - [0:0]\n"))
        #expect(rules.contains("-A NFQLB-OFFLOAD -d 203.0.113.10/32 -p tcp -m tcp --dport 80 -m mark ! --mark 0/0xffffff -m comment --comment \"nfqlb nat 203.0.113.10:80/tcp: conntrack offload\" -j CONNMARK --save-mark --mask 0xffffff"))
        #expect(rules.contains("-A NFQLB-DNAT -d 203.0.113.10/32 -p tcp -m tcp --dport 80 -m mark --mark 0x1001/0xffffff -m comment --comment \"nfqlb nat 203.0.113.10:80/tcp: offloaded to 198.51.100.11:8080\" -j DNAT --to-destination 198.51.100.11:8080"))
        #expect(rules.contains("-j SNAT --to-source 198.51.100.2:61000-65535"))
        #expect(rules.hasSuffix("-I PREROUTING 1 -j NFQLB-DNAT\n-I POSTROUTING 1 -j NFQLB-SNAT\nCOMMIT\n"))
        // Offloaded services are not queued untracked in raw, and FULLNAT's anti-spoof is the Swift path's.
        #expect(!rules.contains("--dport 80 -m comment --comment \"nfqlb nat 203.0.113.10:80/tcp: client to VIP\""))
        #expect(!rules.contains("anti-spoof"))
        // DR offloaded: the SYN stays untracked; no NAT.
        let dr = BalancerConfig(queues: [0], services: [Self.service(.dr)])
        let drRules = IptablesRules.restoreInput(for: dr)
        #expect(drRules.contains("--tcp-flags SYN,ACK,RST SYN -m comment --comment \"nfqlb dr 203.0.113.10:80/tcp: SYN untracked, nfqlb creates its connection\" -j CT --notrack"))
        #expect(!drRules.contains("*nat"))
    }

    /// The first packet gets its real server's mark and NF_REPEAT, every scheduler decision as always; the
    /// entry that keeps the choice for packets queued before the kernel takes over is not counted, and goes
    /// away after the hand-off time.
    @Test func firstPacketsAreMarkedAndNotCounted() throws {
        let config = BalancerConfig(queues: [0], services: [Self.service(.nat)])
        let registry = RealServerRegistry(capacity: 8)
        let handler = PacketHandler(config: config, tracker: ConnectionTracker(registry: registry), now: 0)
        #expect(handler.copyRange == PacketHandler.headerCopyRange && handler.queueFlags == .gso)
        var counters = CounterBatch()
        var verdicts: [Verdict] = []
        for port: UInt16 in [40000, 40001, 40000] {
            var syn = PacketBuilder()
            syn.sourcePort = port
            let packet = syn.build()
            let (verdict, out) = handler.run(packet, now: 0, counters: &counters)
            #expect(out == packet, "the kernel's NAT rewrites, not nfqlb")
            verdicts.append(verdict)
        }
        #expect(verdicts == [.repeatMarked(0x1000), .repeatMarked(0x1001), .repeatMarked(0x1000)], "rr, and a repeat keeps its server")
        #expect(counters[.offloaded] == 3 && counters[.forwarded] == 0 && counters[.connectionsCreated] == 2)
        #expect(registry.servers().allSatisfy { $0.active == 0 && $0.inactive == 0 })
        #expect(handler.tracker.expire(now: ConnectionTracker.handoffTimeout - 1) == 0)
        #expect(handler.tracker.expire(now: ConnectionTracker.handoffTimeout) == 2)
    }

    /// Offloaded services leave the queues copying headers only; a reply that reaches the queue anyway (its
    /// kernel entry deleted while nfqlb's hand-off entry lives) would be rewritten and sent on as a 160-byte
    /// cut of itself. The handler refuses any verdict that sends the copy on.
    @Test func aHeaderCopyIsNeverSentOnAsThePacket() {
        let handler = PacketHandler(config: BalancerConfig(queues: [0], services: [Self.service(.nat)]),
                                    tracker: ConnectionTracker(), now: 0)
        #expect(handler.headersOnly)
        var counters = CounterBatch()
        #expect(handler.run(PacketBuilder().build(), now: 0, counters: &counters).0 == .repeatMarked(0x1000))
        var reply = PacketBuilder()
        reply.source = [198, 51, 100, 11]; reply.sourcePort = 8080
        reply.destination = [192, 0, 2, 2]; reply.destinationPort = 40000
        reply.tcpFlags = 0x12
        reply.payload = Array(repeating: 7, count: 1000)
        let cut = Array(reply.build().prefix(Int(PacketHandler.headerCopyRange)))
        #expect(handler.run(cut, now: 1, counters: &counters).0 == .drop)
        #expect(counters[.droppedHeaderCopy] == 1)
    }

    /// NAT marks may move on a reload (they pick a first packet's DNAT rule only); `offload` may not change.
    @Test func reloadMovesNATMarksButKeepsOffload() throws {
        // A service on the Swift path beside it: the queues copy whole packets.
        let config = BalancerConfig(queues: [0], services: [Self.service(.nat), Self.service(.nat, port: 81, offload: .none)])
        let handler = PacketHandler(config: config, tracker: ConnectionTracker())
        var reordered = config
        reordered.services[0].reals.swapAt(0, 1)
        try handler.update(to: reordered)
        #expect(ConntrackOffload.marks(for: reordered)[.init(service: reordered.services[0], real: reordered.services[0].reals[0])] == 0x1000)
        var swiftPath = reordered
        swiftPath.services[0].offload = .none
        #expect(throws: ConfigUpdateError(reason: "offload of 203.0.113.10:80/tcp cannot change while nfqlb runs: restart it")) {
            try handler.update(to: swiftPath)
        }
    }

    /// The ledger counts what the kernel reports: a NAT connection by the real server its replies come from, a
    /// DR one by its route's mark; others are not nfqlb's.
    @Test func ledgerFollowsTheKernelsConnections() throws {
        var dr = Self.service(.dr, port: 90, reals: ["198.51.100.13"])
        dr.drain = 0
        let config = BalancerConfig(queues: [0], services: [Self.service(.nat), dr])
        let registry = RealServerRegistry(capacity: 8)
        let handler = PacketHandler(config: config, tracker: ConnectionTracker(registry: registry), now: 0)
        let owners = handler.offloadOwners
        var ledger = OffloadLedger(registry: registry)
        let r1 = try #require(registry.number(of: .init(service: config.services[0], real: config.services[0].reals[0])))
        let r2 = try #require(registry.number(of: .init(service: config.services[0], real: config.services[0].reals[1])))
        let r3 = try #require(registry.number(of: .init(service: dr, real: dr.reals[0])))
        let client = Endpoint(address: ip("192.0.2.5"), port: 40000)
        func nat(_ kind: ConntrackEntry.Kind, real: String, state: UInt8?, mark: Fwmark = 0x1001, port: UInt16 = 40000) -> ConntrackEntry {
            let source = Endpoint(address: client.address, port: port)
            var entry = ConntrackEntry(kind: kind, original: FlowKey(source: source, destination: Endpoint(address: ip("203.0.113.10"), port: 80), transport: .tcp),
                                       reply: FlowKey(source: Endpoint(address: ip(real), port: 8080), destination: source, transport: .tcp),
                                       mark: mark, id: 1, tcpState: state)
            if kind == .destroy { (entry.originalPackets, entry.originalBytes, entry.replyPackets, entry.replyBytes) = (4, 400, 3, 3000) }
            return entry
        }
        // Any mark of nfqlb's: the reply tuple says which server (a mark moved by a reload does not matter).
        #expect(ledger.apply(nat(.new, real: "198.51.100.11", state: 1), owners: owners) == .opened(r1))
        #expect(registry[r1].inactive == 1 && registry[r1].active == 0)
        #expect(ledger.apply(nat(.update, real: "198.51.100.11", state: 3), owners: owners) == .changed(r1))
        #expect(registry[r1].active == 1 && registry[r1].inactive == 0)
        #expect(ledger.apply(nat(.update, real: "198.51.100.11", state: nil), owners: owners) == .none, "no state: unchanged")
        #expect(ledger.apply(nat(.new, real: "198.51.100.12", state: 3, mark: 0x1000, port: 40001), owners: owners) == .opened(r2))
        #expect(ledger.apply(nat(.new, real: "198.51.100.12", state: 3, mark: 0, port: 40002), owners: owners) == .none, "no mark: not nfqlb's")
        #expect(ledger.apply(nat(.new, real: "198.51.100.99", state: 3, port: 40003), owners: owners) == .notOwned, "unknown server")
        #expect(ledger.apply(nat(.destroy, real: "198.51.100.11", state: nil), owners: owners) == .closed(r1))
        #expect(registry[r1].connections == 0 && registry[r1].offloaded == RealServerLoad.Traffic(packetsIn: 4, bytesIn: 400, packetsOut: 3, bytesOut: 3000))
        #expect(ledger.apply(nat(.destroy, real: "198.51.100.11", state: nil), owners: owners) == .none, "destroyed twice")

        // DR: the reply tuple is the original reversed; the mark is the route's.
        let drFlow = FlowKey(source: client, destination: Endpoint(address: ip("203.0.113.10"), port: 90), transport: .tcp)
        let drEntry = ConntrackEntry(kind: .new, original: drFlow, reply: FlowKey(source: drFlow.destination, destination: client, transport: .tcp),
                                     mark: 0x1000, id: 2, tcpState: 3)
        #expect(ledger.apply(drEntry, owners: owners) == .opened(r3))
        #expect(ledger.count == 2)

        // A full read of the kernel's table: r2's connection is gone, DR's stays, one appears.
        let appeared = nat(.new, real: "198.51.100.11", state: 3, port: 40005)
        #expect(ledger.reconcile(with: [drEntry, appeared], owners: owners) == (opened: 1, closed: 1))
        #expect(registry[r2].connections == 0 && registry[r1].active == 1 && ledger.count == 2)

        // The DR server leaves the config (drain 0): its kernel connection is to be deleted.
        #expect(ledger.orphans().isEmpty)
        try handler.update(to: BalancerConfig(queues: [0], services: [Self.service(.nat)]), now: 1)
        _ = registry.advance(now: 2)
        #expect(ledger.orphans() == [drFlow])
        ledger.forget(drFlow)
        #expect(registry[r3].connections == 0 && ledger.count == 1)
    }

    @Test func repeatIsEncodedWithItsMark() {
        var counters = CounterBatch()
        let encoder = VerdictEncoder(queue: 0, sendLimit: 1000)
        #expect([UInt8](repeating: 0, count: 40).withUnsafeBytes { encoder.encode(.repeatMarked(0x1002), id: 9, packet: $0, counters: &counters) })
        let bytes = Array(UnsafeRawBufferPointer(start: encoder.verdicts.bytes, count: encoder.verdicts.used))
        #expect(Array(bytes[24..<32]) == [0, 0, 0, 4, 0, 0, 0, 9], "NF_REPEAT, packet 9")
        #expect(Array(bytes[36..<40]) == [0, 0, 0x10, 0x02], "the mark")
    }
}
