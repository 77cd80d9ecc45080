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
        #expect(drRules.contains("--tcp-flags SYN,ACK,RST SYN -m comment --comment \"nfqlb dr 203.0.113.10:80/tcp: SYN untracked, conntrack takes the connection up at its first ACK\" -j CT --notrack"))
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

    @Test func reloadKeepsMarksAndOffload() throws {
        // A service on the Swift path beside it: the queues copy whole packets.
        let config = BalancerConfig(queues: [0], services: [Self.service(.nat), Self.service(.nat, port: 81, offload: .none)])
        let handler = PacketHandler(config: config, tracker: ConnectionTracker())
        var appended = config
        appended.services[0].reals.append(RealServer(address: ip("198.51.100.13"), port: 8080))
        try handler.update(to: appended)
        var reordered = appended
        reordered.services[0].reals.swapAt(0, 1)
        #expect(throws: ConfigUpdateError.self) { try handler.update(to: reordered) }
        var swiftPath = appended
        swiftPath.services[0].offload = .none
        #expect(throws: ConfigUpdateError(reason: "offload of 203.0.113.10:80/tcp cannot change while nfqlb runs: restart it")) {
            try handler.update(to: swiftPath)
        }
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
