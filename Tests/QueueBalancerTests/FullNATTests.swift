import Testing
@testable import QueueBalancer

/// FULLNAT: both ends rewritten (CIP:cport -> LIP:lport, VIP:vport -> RIP:rport) and mapped back on replies;
/// local ports drawn per (LIP, real server, protocol), never handed out twice, freed on expiry.
@Suite struct FullNATTests {
    func config(ports: ClosedRange<UInt16> = 61000...65535, locals: [String] = ["198.51.100.1"]) -> BalancerConfig {
        var config = BalancerConfig(queues: [0], services: [
            VirtualService(vip: IPAddress("203.0.113.10")!, port: 80, transport: .tcp, mode: .fullnat, scheduler: .rr,
                           reals: [RealServer(address: IPAddress("198.51.100.11")!, port: 8080)],
                           localAddresses: locals.map { IPAddress($0)! }),
        ])
        config.fullnatPorts = ports
        return config
    }

    func handler(_ config: BalancerConfig, stripes: Int = 64) -> PacketHandler {
        PacketHandler(config: config, tracker: ConnectionTracker(configuration: .init(
            stripes: stripes, hashSeed: 42, portAllocators: config.portAllocators, localPorts: config.fullnatPorts)))
    }

    /// A local address's ports are shared out among the lock stripes by their hash: every stripe must get a
    /// fair share whatever the seed, or clients whose endpoint hashes to a stripe without ports cannot connect
    /// (seen: with some seeds a stripe got none, `dropped_ports_exhausted` on a client's first connection).
    @Test func everyStripeGetsItsShareOfTheLocalPorts() {
        let local = ip("198.51.100.1")
        for s in UInt64(0)..<1000 {
            let hasher = FlowHasher(seed: s &* 0x9E37_79B9_7F4A_7C15)
            var counts = [Int](repeating: 0, count: 64)
            for port in UInt16(61000)...65535 {
                counts[Int(truncatingIfNeeded: hasher.hash(Endpoint(address: local, port: port), .tcp)) & 63] += 1
            }
            #expect(counts.min()! >= 30, "seed \(s): shares \(counts.min()!)...\(counts.max()!) of 4,536 ports")
        }
    }

    @Test(arguments: [6 as UInt8, 17])
    func bothEndsRewrittenAndMappedBack(transport: UInt8) {
        var config = config()
        config.services[0].transport = transport == 6 ? .tcp : .udp
        let handler = handler(config)
        var counters = CounterBatch()
        var client = PacketBuilder()
        client.transport = transport
        client.payload = Array("hello".utf8)
        let (verdict, out) = handler.run(client.build(), counters: &counters)
        #expect(verdict == .acceptRewritten)
        #expect(Array(out[12..<16]) == [198, 51, 100, 1], "source is the local address")
        let localPort = UInt16(out[20]) << 8 | UInt16(out[21])
        #expect((61000...65535).contains(localPort))
        var expected = client
        expected.source = [198, 51, 100, 1]
        expected.sourcePort = localPort
        expected.destination = [198, 51, 100, 11]
        expected.destinationPort = 8080
        #expect(out == expected.build(), "byte for byte, checksums as computed from scratch")

        var reply = PacketBuilder()
        reply.transport = transport
        reply.source = [198, 51, 100, 11]
        reply.sourcePort = 8080
        reply.destination = [198, 51, 100, 1]
        reply.destinationPort = localPort
        reply.tcpFlags = 0x12
        reply.payload = Array("world".utf8)
        let (replyVerdict, replyOut) = handler.run(reply.build(), counters: &counters)
        #expect(replyVerdict == .acceptRewritten)
        var expectedReply = reply
        expectedReply.source = [203, 0, 113, 10]
        expectedReply.sourcePort = 80
        expectedReply.destination = [192, 0, 2, 2]
        expectedReply.destinationPort = 40000
        #expect(replyOut == expectedReply.build())
    }

    @Test func portsAreUniqueExhaustionIsCountedAndExpiryFreesThem() {
        let handler = handler(config(ports: 61000...61007), stripes: 1)
        var counters = CounterBatch()
        var ports = Set<UInt16>()
        var portOf: [UInt16: UInt16] = [:]
        for clientPort: UInt16 in 40000..<40008 {
            var syn = PacketBuilder()
            syn.sourcePort = clientPort
            let (verdict, out) = handler.run(syn.build(), now: 0, counters: &counters)
            #expect(verdict == .acceptRewritten)
            let local = UInt16(out[20]) << 8 | UInt16(out[21])
            ports.insert(local)
            portOf[clientPort] = local
        }
        #expect(ports == Set(61000...61007), "eight connections, eight different ports")
        var ninth = PacketBuilder()
        ninth.sourcePort = 40008
        #expect(handler.run(ninth.build(), now: 0, counters: &counters).0 == .drop)
        #expect(counters[.droppedPortsExhausted] == 1)
        // Existing connections are untouched by the exhaustion.
        var ack = PacketBuilder()
        ack.sourcePort = 40003
        ack.tcpFlags = 0x10
        #expect(handler.run(ack.build(), now: 1, counters: &counters).0 == .acceptRewritten)
        // SYN_RECV lasts 60 s: after the sweep, ports come back (ESTABLISHED 40003 keeps its port).
        #expect(handler.tracker.expire(now: 61_000) == 7)
        let (verdict, out) = handler.run(ninth.build(), now: 61_000, counters: &counters)
        #expect(verdict == .acceptRewritten)
        let reused = UInt16(out[20]) << 8 | UInt16(out[21])
        #expect(reused != portOf[40003], "the port of the live connection is not handed out again")
        #expect(ports.contains(reused), "a freed port from the pool")
        let live = handler.tracker.snapshot().map(\.reply.destination.port)
        #expect(live.count == 2 && Set(live).count == 2)
    }

    @Test func portPoolsSplitOverStripesWithoutLoss() {
        let config = config(ports: 61000...61999, locals: ["198.51.100.1", "198.51.100.2"])
        let handler = handler(config, stripes: 16)
        var counters = CounterBatch()
        var seen = Set<String>()
        // 1,000 connections over 2 x 1,000 ports (about 62 per stripe and key): far more than one stripe's
        // share, all get distinct (LIP, port) pairs. The seed is fixed so the test is deterministic.
        for i in 0..<1000 {
            var syn = PacketBuilder()
            syn.source = [192, 0, 2, UInt8(2 + i / 600)]
            syn.sourcePort = UInt16(20000 + i % 600)
            let (verdict, out) = handler.run(syn.build(), counters: &counters)
            if verdict == .acceptRewritten { seen.insert("\(out[15]):\(UInt16(out[20]) << 8 | UInt16(out[21]))") }
        }
        #expect(counters[.droppedPortsExhausted] == 0, "at half the ports in use no stripe runs dry")
        #expect(seen.count == 1000)
    }

    @Test func rulesAndPortRangeChecks() {
        let config = config()
        let rules = IptablesRules.restoreInput(for: config)
        let antiSpoof = rules.range(of: "! -i lo -s 198.51.100.1/32 -m mark ! --mark 0x1000000/0x1000000 -m comment --comment \"nfqlb fullnat anti-spoof\" -j DROP")
        let firstQueue = rules.range(of: "-j NFQUEUE")
        #expect(antiSpoof != nil && firstQueue != nil && antiSpoof!.lowerBound < firstQueue!.lowerBound)
        #expect(rules.contains("! -i lo -s 203.0.113.10/32"))
        #expect(rules.contains("-s 198.51.100.11/32 -d 198.51.100.1/32 -p tcp -m tcp --sport 8080 --dport 61000:65535"))
        #expect(config.fullnatPortConflict(kernelRange: 32768...60999) == nil)
        #expect(config.fullnatPortConflict(kernelRange: 32768...61000)?.contains("overlap the kernel's ip_local_port_range 32768-61000") == true)
    }
}
