import Testing
@testable import QueueBalancer

/// DR: the handler only chooses the real server; the packet leaves unchanged with the real server's fwmark.
@Suite struct DirectRoutingTests {
    func drConfig() -> BalancerConfig {
        var config = BalancerConfig(queues: [0], services: [
            VirtualService(vip: IPAddress("203.0.113.10")!, port: 80, transport: .tcp, mode: .dr, scheduler: .rr, reals: [
                RealServer(address: IPAddress("198.51.100.11")!, port: 80),
                RealServer(address: IPAddress("198.51.100.12")!, port: 80),
            ]),
        ])
        config.fwmarkBase = 0x1000
        return config
    }

    @Test func verdictCarriesTheRealServersMarkAndNoPayloadChange() {
        let handler = PacketHandler(config: drConfig(), tracker: ConnectionTracker())
        var counters = CounterBatch()
        var marks: [Fwmark] = []
        for port: UInt16 in 40000..<40004 {
            var syn = PacketBuilder()
            syn.sourcePort = port
            let packet = syn.build()
            let (verdict, out) = handler.run(packet, counters: &counters)
            #expect(out == packet, "DR leaves the packet as it is")
            guard case .acceptMarked(let mark) = verdict else { Issue.record("verdict \(verdict)"); continue }
            marks.append(mark)
        }
        #expect(marks == [0x1000, 0x1001, 0x1000, 0x1001])
        // Later packets of a connection keep its real server's mark.
        var ack = PacketBuilder()
        ack.sourcePort = 40001
        ack.tcpFlags = 0x10
        #expect(handler.run(ack.build(), counters: &counters).0 == .acceptMarked(0x1001))
        #expect(counters[.connectionsCreated] == 4 && counters[.forwarded] == 5 && counters[.replied] == 0)
    }

    /// DR sees the client's packets only: its connections use IPVS's input-only TCP states.
    @Test func clientFINMeansFINWait() {
        let handler = PacketHandler(config: drConfig(), tracker: ConnectionTracker())
        var counters = CounterBatch()
        for flags: UInt8 in [0x02, 0x10, 0x11] {
            var packet = PacketBuilder()
            packet.tcpFlags = flags
            _ = handler.run(packet.build(), counters: &counters)
        }
        #expect(handler.tracker.snapshot().map(\.state) == [.finWait])
    }

    @Test func rulesQueueOnlyTheClientDirectionAndRoutesFollowTheMarks() {
        let config = drConfig()
        let rules = IptablesRules.restoreInput(for: config)
        #expect(rules.contains("-A NFQLB-PREROUTING -d 203.0.113.10/32 -p tcp -m tcp --dport 80 -m comment --comment \"nfqlb dr 203.0.113.10:80/tcp: client to VIP\" -j NFQUEUE --queue-num 0"))
        #expect(!rules.contains("--sport"), "DR replies never pass the balancer")
        #expect(IptablesRules.routeCommands(for: config) == """
            rule add fwmark 0x1000 table 4096 pref 100
            route replace default via 198.51.100.11 table 4096
            rule add fwmark 0x1001 table 4097 pref 100
            route replace default via 198.51.100.12 table 4097

            """)
    }
}

/// With DR only, the queue copies 160 bytes per packet: the handler must work on that prefix.
@Suite struct HeaderOnlyCopyTests {
    @Test func truncatedCopiesAreBalancedInDROnlyConfigs() {
        let config = BalancerConfig(queues: [0], services: [
            VirtualService(vip: IPAddress("203.0.113.10")!, port: 80, transport: .tcp, mode: .dr, scheduler: .rr,
                           reals: [RealServer(address: IPAddress("198.51.100.11")!, port: 80)]),
        ])
        let handler = PacketHandler(config: config, tracker: ConnectionTracker())
        #expect(handler.headersOnly)
        var syn = PacketBuilder()
        syn.payload = Array(repeating: 9, count: 1000)
        let prefix = Array(syn.build().prefix(Int(PacketHandler.headerCopyRange)))
        var counters = CounterBatch()
        #expect(handler.run(prefix, counters: &counters).0 == .acceptMarked(config.fwmarkBase))
        // Too short even for the TCP header: still malformed.
        #expect(handler.run(Array(prefix.prefix(30)), counters: &counters).0 == .drop)
        // A NAT handler never accepts a cut packet.
        let nat = PacketHandler(config: natConfig(), tracker: ConnectionTracker())
        #expect(!nat.headersOnly)
        #expect(nat.run(prefix, counters: &counters).0 == .drop)
    }
}
