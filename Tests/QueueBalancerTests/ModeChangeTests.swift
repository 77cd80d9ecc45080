import Testing
@testable import QueueBalancer

/// A service whose mode changes on a running balancer: its connections keep the forwarding method they
/// started with (IPVS binds a connection's transmitter when it is created), new ones take the new method.
@Suite struct ModeChangeTests {
    static func config(_ mode: ForwardingMode) -> BalancerConfig {
        BalancerConfig(queues: [0], services: [VirtualService(
            vip: ip("203.0.113.10"), port: 80, transport: .tcp, mode: mode, scheduler: .rr,
            reals: [RealServer(address: ip("198.51.100.11"), port: 8080)],
            localAddresses: mode == .fullnat ? [ip("198.51.100.1")] : [])])
    }

    func client(port: UInt16, flags: UInt8) -> [UInt8] {
        var packet = PacketBuilder()
        packet.sourcePort = port
        packet.tcpFlags = flags
        return packet.build()
    }

    @Test func aFULLNATConnectionStaysTranslatedAfterTheServiceTurnsNAT() throws {
        let config = Self.config(.fullnat)
        let handler = PacketHandler(config: config, tracker: ConnectionTracker(configuration: .init(
            hashSeed: 5, portAllocators: config.portAllocators, localPorts: config.fullnatPorts)), now: 0)
        var counters = CounterBatch()
        let (_, syn) = handler.run(client(port: 40000, flags: 0x02), now: 0, counters: &counters)
        #expect(Array(syn[12..<16]) == [198, 51, 100, 1], "FULLNAT: from the local address")
        let localPort = UInt16(syn[20]) << 8 | UInt16(syn[21])
        _ = handler.run(client(port: 40000, flags: 0x10), now: 1, counters: &counters)

        try handler.update(to: Self.config(.nat), now: 2)
        let (_, data) = handler.run(client(port: 40000, flags: 0x18), now: 3, counters: &counters)
        #expect(Array(data[12..<20]) == [198, 51, 100, 1, 198, 51, 100, 11], "still from the local address")
        var reply = PacketBuilder()
        reply.source = [198, 51, 100, 11]
        reply.sourcePort = 8080
        reply.destination = [198, 51, 100, 1]
        reply.destinationPort = localPort
        reply.tcpFlags = 0x10
        let (replyVerdict, answer) = handler.run(reply.build(), now: 4, counters: &counters)
        #expect(replyVerdict == .acceptRewritten)
        #expect(Array(answer[12..<20]) == [203, 0, 113, 10, 192, 0, 2, 2], "back to the client, from the VIP")

        let (_, fresh) = handler.run(client(port: 40001, flags: 0x02), now: 5, counters: &counters)
        #expect(Array(fresh[12..<20]) == [192, 0, 2, 2, 198, 51, 100, 11], "a new connection is NAT")

        // The FULLNAT server drains until its connection is gone, then is removed.
        let old = try #require(handler.registry.servers().first { $0.key.mode == .fullnat })
        #expect(old.lifecycle == .draining)
        handler.registry.advance(now: 1_000_000)
        #expect(handler.registry[old.number].lifecycle == .draining, "one connection left")
        handler.tracker.expire(now: 10_000_000)
        handler.registry.advance(now: 10_000_000)
        #expect(handler.registry[old.number].lifecycle == .removed)
    }
}
