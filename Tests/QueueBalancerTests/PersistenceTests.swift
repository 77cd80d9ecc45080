import Testing
@testable import QueueBalancer

/// Persistence templates in virtual time: later connections from the same client network go to the same real
/// server while the template lives.
@Suite struct PersistenceTests {
    func handler(persistence: UInt64 = 300, prefix: Int = 32) -> PacketHandler {
        var service = VirtualService(vip: IPAddress("203.0.113.10")!, port: 80, transport: .tcp, mode: .nat, scheduler: .rr,
                                     reals: (11...13).map { RealServer(address: IPAddress("198.51.100.\($0)")!, port: 8080) })
        service.persistence = persistence
        service.persistencePrefix = prefix
        return PacketHandler(config: BalancerConfig(queues: [0], services: [service]), tracker: ConnectionTracker())
    }

    /// The real server (last byte of the rewritten destination) of a new connection from `client`:`port`.
    func connect(_ h: PacketHandler, _ client: [UInt8], port: UInt16, now: UInt64) -> UInt8 {
        var counters = CounterBatch()
        var syn = PacketBuilder()
        syn.source = client
        syn.sourcePort = port
        let (verdict, out) = h.run(syn.build(), now: now, counters: &counters)
        #expect(verdict == .acceptRewritten)
        return out[19]
    }

    @Test func sameClientSticksToItsServerWhileTheTemplateLives() {
        let h = handler()
        let first = connect(h, [192, 0, 2, 2], port: 1000, now: 0)
        for port: UInt16 in 1001..<1010 {
            #expect(connect(h, [192, 0, 2, 2], port: port, now: UInt64(port - 1000) * 1000) == first)
        }
        // Another client is scheduled normally (rr moves on).
        #expect(connect(h, [192, 0, 2, 3], port: 1000, now: 20_000) != first)
    }

    @Test func templateExpiresTimeoutAfterTheLastPacket() {
        let h = handler(persistence: 60)
        let first = connect(h, [192, 0, 2, 2], port: 1000, now: 0)
        // 59 s later: still bound.
        #expect(connect(h, [192, 0, 2, 2], port: 1001, now: 59_000) == first)
        // 61 s after that last packet: expired; rr gives the next server.
        #expect(connect(h, [192, 0, 2, 2], port: 1002, now: 59_000 + 61_000) != first)
    }

    @Test func netmaskGroupsAClientNetwork() {
        let h = handler(prefix: 24)
        let first = connect(h, [192, 0, 2, 2], port: 1000, now: 0)
        #expect(connect(h, [192, 0, 2, 200], port: 1000, now: 1000) == first, "same /24")
        #expect(connect(h, [198, 51, 100, 7], port: 1000, now: 2000) != first, "another network")
    }

    @Test func networksAndEvictions() {
        let t = PersistenceTemplates(timeoutSeconds: 10, prefixLength: 24)
        #expect(t.network(IPAddress("192.0.2.77")!) == IPAddress("192.0.2.0")!)
        let v6 = PersistenceTemplates(timeoutSeconds: 10, prefixLength: 48)
        #expect(v6.network(IPAddress("2001:db8:1:2::5")!) == IPAddress("2001:db8:1::")!)
        // 20,000 live networks in 16,384 slots: some are displaced, counted, and nothing crashes.
        for i in 0..<20_000 {
            t.bind(IPAddress(ipv4: 0x0A00_0000 | UInt32(i) << 8), to: RealServerID(rawValue: UInt32(i % 3)), now: 0)
        }
        #expect(t.evictions >= 20_000 - 16_384)
        let kept = (0..<20_000).filter { t.lookup(IPAddress(ipv4: 0x0A00_0000 | UInt32($0) << 8), now: 1) == RealServerID(rawValue: UInt32($0 % 3)) }.count
        #expect(kept > 14_000 && kept <= 16_384)
    }

    @Test func configForms() throws {
        let base = "queues: [0]\nservices:\n  - vip: 203.0.113.10\n    port: 80\n    protocol: tcp\n    mode: nat\n    reals: [ { address: 198.51.100.11 } ]\n"
        let dotted = try ConfigLoader.parse(yaml: base + "    persistence: 300\n    persistence-netmask: 255.255.255.0\n").services[0]
        #expect(dotted.persistence == 300 && dotted.persistencePrefix == 24)
        let prefix = try ConfigLoader.parse(yaml: base + "    persistence: 60\n    persistence-netmask: 16\n").services[0]
        #expect(prefix.persistencePrefix == 16)
        #expect(try ConfigLoader.parse(yaml: base).services[0].persistence == 0)
        #expect(throws: ConfigError.self) { try ConfigLoader.parse(yaml: base + "    persistence: 60\n    persistence-netmask: 255.0.255.0\n") }
        #expect(throws: ConfigError.self) { try ConfigLoader.parse(yaml: base + "    persistence-netmask: 24\n") }
    }
}

/// `ops`: one-packet scheduling for UDP.
@Suite struct OnePacketSchedulingTests {
    func handler(mode: ForwardingMode) -> PacketHandler {
        var service = VirtualService(vip: IPAddress("203.0.113.10")!, port: 53, transport: .udp, mode: mode, scheduler: .rr,
                                     reals: (11...13).map { RealServer(address: IPAddress("198.51.100.\($0)")!, port: 53) })
        service.onePacket = true
        return PacketHandler(config: BalancerConfig(queues: [0], services: [service]), tracker: ConnectionTracker())
    }

    @Test func everyDatagramIsScheduledAndEveryServersReplyMapsBack() {
        let h = handler(mode: .nat)
        var counters = CounterBatch()
        var query = PacketBuilder()
        query.transport = 17
        query.destinationPort = 53
        query.payload = [1, 2, 3]
        // Six datagrams from one client socket: rr over three servers, two each.
        let servers = (0..<6).map { _ in h.run(query.build(), counters: &counters).1[19] }
        #expect(servers == [11, 12, 13, 11, 12, 13])
        // Each server's answer is mapped back to the VIP.
        for server: UInt8 in 11...13 {
            var answer = PacketBuilder()
            answer.transport = 17
            answer.source = [198, 51, 100, server]
            answer.sourcePort = 53
            answer.destination = [192, 0, 2, 2]
            answer.destinationPort = 40000
            answer.payload = [4, 5]
            let (verdict, out) = h.run(answer.build(), counters: &counters)
            #expect(verdict == .acceptRewritten)
            #expect(Array(out[12..<16]) == [203, 0, 113, 10])
        }
        #expect(h.tracker.count == 3, "one entry per (server, client endpoint)")
    }

    @Test func directRoutingMarksEachDatagramAnew() {
        let h = handler(mode: .dr)
        var counters = CounterBatch()
        var query = PacketBuilder()
        query.transport = 17
        query.destinationPort = 53
        let marks = (0..<3).map { _ in h.run(query.build(), counters: &counters).0 }
        #expect(marks == [.acceptMarked(0x1000), .acceptMarked(0x1001), .acceptMarked(0x1002)])
        #expect(h.tracker.count == 0, "DR keeps no state for ops")
    }

    @Test func configRefusesOpsWhereItCannotWork() throws {
        let base = "queues: [0]\nservices:\n  - { vip: 203.0.113.10, port: 53, protocol: PROTO, mode: MODE, ops: true, LOCALS reals: [ { address: 198.51.100.11 } ] }\n"
        func yaml(_ proto: String, _ mode: String) -> String {
            base.replacingOccurrences(of: "PROTO", with: proto).replacingOccurrences(of: "MODE", with: mode)
                .replacingOccurrences(of: "LOCALS", with: mode == "fullnat" ? "local-addresses: [198.51.100.1]," : "")
        }
        #expect(try ConfigLoader.parse(yaml: yaml("udp", "nat")).services[0].onePacket)
        #expect(throws: ConfigError.self) { try ConfigLoader.parse(yaml: yaml("tcp", "nat")) }
        #expect(throws: ConfigError.self) { try ConfigLoader.parse(yaml: yaml("udp", "fullnat")) }
    }
}
