import Testing
@testable import QueueBalancer

/// The tracker in virtual time: `now` is passed in, in milliseconds.
@Suite struct ConnectionTrackerTests {
    let real = endpoint("198.51.100.11", 8080)
    let other = endpoint("198.51.100.12", 8080)

    func key(_ port: UInt16 = 40000, _ transport: TransportProtocol = .tcp) -> FlowKey {
        FlowKey(source: endpoint("192.0.2.2", port), destination: endpoint("203.0.113.10", 80), transport: transport)
    }

    func replyKey(_ port: UInt16 = 40000, from: Endpoint? = nil, _ transport: TransportProtocol = .tcp) -> FlowKey {
        FlowKey(source: from ?? real, destination: endpoint("192.0.2.2", port), transport: transport)
    }

    func assign(_ to: Endpoint) -> (FlowKey) -> ConnectionTracker.Assignment? {
        { [other] _ in ConnectionTracker.Assignment(realServer: to, real: to == other ? 1 : 0) }
    }

    func state(_ tracker: ConnectionTracker) -> ConnectionState? { tracker.snapshot().first?.state }

    @Test func tcpHandshakeDataAndCloseFollowIPVSStates() {
        let t = ConnectionTracker()
        #expect(t.inbound(key(), flags: .syn, now: 0, schedule: assign(real)) == .forward(real, real: 0, created: true))
        #expect(state(t) == .synReceived)
        #expect(t.reply(replyKey(), flags: [.syn, .ack], now: 1)?.inbound == key())
        #expect(state(t) == .synReceived)
        #expect(t.inbound(key(), flags: .ack, now: 2, schedule: assign(other)) == .forward(real, real: 0, created: false))
        #expect(state(t) == .established)
        #expect(t.snapshot().first?.expires == 2 + 900_000)
        _ = t.inbound(key(), flags: [.fin, .ack], now: 3, schedule: assign(other))
        #expect(state(t) == .closeWait)
        _ = t.reply(replyKey(), flags: [.fin, .ack], now: 4)
        #expect(state(t) == .timeWait)
        #expect(t.snapshot().first?.expires == 4 + 120_000)
    }

    /// DR and TUN connections (replies bypass the balancer) follow IPVS's input-only table: the client's FIN
    /// is its side closing, FIN_WAIT (120 s), not CLOSE_WAIT (60 s) as when the server's FIN had been seen.
    @Test func inputOnlyConnectionsFollowIPVSInputOnlyStates() {
        let t = ConnectionTracker()
        let dr: (FlowKey) -> ConnectionTracker.Assignment? = { [real] _ in
            ConnectionTracker.Assignment(realServer: real, real: 0, inputOnly: true)
        }
        _ = t.inbound(key(), flags: .syn, now: 0, schedule: dr)
        #expect(state(t) == .synReceived)
        _ = t.inbound(key(), flags: .ack, now: 1, schedule: dr)
        #expect(state(t) == .established)
        _ = t.inbound(key(), flags: [.fin, .ack], now: 2, schedule: dr)
        #expect(state(t) == .finWait)
        #expect(t.snapshot().first?.expires == 2 + 120_000)
        _ = t.inbound(key(), flags: [.fin, .ack], now: 3, schedule: dr)
        #expect(state(t) == .finWait, "a retransmitted FIN keeps FIN_WAIT")
        _ = t.inbound(key(), flags: .ack, now: 4, schedule: dr)
        #expect(state(t) == .finWait)
        // The same packets on a NAT connection (no reply seen): CLOSE_WAIT, as IPVS's two-direction table says.
        let nat = ConnectionTracker()
        for (flags, now) in [(TCPFlags.syn, UInt64(0)), (.ack, 1), ([.fin, .ack], 2)] {
            _ = nat.inbound(key(), flags: flags, now: now, schedule: assign(real))
        }
        #expect(state(nat) == .closeWait)
        // The table itself: where input-only differs from IPVS's INPUT part.
        #expect(ConnectionState.synAck.next(after: .rst, direction: .inbound, inputOnly: true) == .close)
        #expect(ConnectionState.synAck.next(after: .rst, direction: .inbound) == .synReceived)
        #expect(ConnectionState.finWait.next(after: .fin, direction: .inbound, inputOnly: true) == .finWait)
        #expect(ConnectionState.finWait.next(after: .fin, direction: .inbound) == .timeWait)
    }

    /// The table's memory per connection it can hold: a packed 96-byte entry and three 8-byte index slots.
    @Test func aConnectionTakesAtMost128Bytes() {
        #expect(MemoryLayout<ConnectionEntry>.stride == 96)
        var config = BalancerConfig(queues: [0], services: [])
        config.maxConnections = 1_000_000
        let table = ConnectionTracker(config: config).tableBytes
        #expect(table.capacity >= 1_000_000 && table.bytes <= 128 * table.capacity)
    }

    /// A full stripe (two thirds of its index used) still finds, removes and re-adds every connection, in
    /// both directions.
    @Test func aFullTableKeepsEveryKey() {
        var configuration = ConnectionTracker.Configuration()
        configuration.capacity = 300
        configuration.stripes = 1
        let t = ConnectionTracker(configuration: configuration)
        for round in 0..<3 {
            for port in UInt16(1000)..<1300 {
                let outcome = t.inbound(key(port), flags: .syn, now: UInt64(round), schedule: assign(real))
                #expect(outcome == .forward(real, real: 0, created: true), "round \(round) port \(port)")
                _ = t.inbound(key(port), flags: .ack, now: UInt64(round), schedule: assign(real))   // established
            }
            #expect(t.count == 300)
            #expect(t.inbound(key(2000), flags: .syn, now: 0, schedule: assign(real)) == .full)
            for port in UInt16(1000)..<1300 {
                #expect(t.reply(replyKey(port), flags: .ack, now: 0)?.inbound == key(port))
                #expect(t.connection(inbound: key(port), now: 0)?.real == 0)
            }
            #expect(t.reply(replyKey(2000), flags: .ack, now: 0) == nil)
            // Expire them all: each removal shifts the others' index slots back.
            #expect(t.expire(now: UInt64(round) + 2_000_000) == 300)
            #expect(t.count == 0 && t.connection(inbound: key(1000), now: 0) == nil)
        }
    }

    @Test func rstClosesWithTenSecondTimeout() {
        let t = ConnectionTracker()
        _ = t.inbound(key(), flags: .syn, now: 0, schedule: assign(real))
        _ = t.inbound(key(), flags: .ack, now: 1, schedule: assign(real))
        _ = t.reply(replyKey(), flags: .rst, now: 5)
        #expect(state(t) == .close)
        #expect(t.snapshot().first?.expires == 10_005)
    }

    @Test func nonSYNWithoutConnectionIsRefusedAndNothingIsScheduled() {
        let t = ConnectionTracker()
        var scheduled = false
        let outcome = t.inbound(key(), flags: .ack, now: 0) { _ in scheduled = true; return nil }
        #expect(outcome == .noConnection)
        #expect(!scheduled)
        #expect(t.count == 0)
    }

    @Test func establishedExpiresAfter900SecondsInVirtualTime() {
        let t = ConnectionTracker()
        _ = t.inbound(key(), flags: .syn, now: 0, schedule: assign(real))
        _ = t.inbound(key(), flags: .ack, now: 1_000, schedule: assign(real))
        #expect(t.expire(now: 900_999) == 0)
        #expect(t.reply(replyKey(), flags: .ack, now: 900_999) != nil)   // refreshes: expires 1_800_999
        #expect(t.expire(now: 1_800_998) == 0)
        #expect(t.expire(now: 1_800_999) == 1)
        #expect(t.count == 0)
        #expect(t.reply(replyKey(), flags: .ack, now: 1_801_000) == nil)
    }

    @Test func udpLivesThreeHundredSeconds() {
        let t = ConnectionTracker()
        #expect(t.inbound(key(5000, .udp), flags: [], now: 0, schedule: assign(real)) == .forward(real, real: 0, created: true))
        #expect(state(t) == .udp)
        #expect(t.inbound(key(5000, .udp), flags: [], now: 299_999, schedule: assign(other)) == .forward(real, real: 0, created: false))
        // Expired on lookup: a datagram after the timeout is scheduled anew.
        #expect(t.inbound(key(5000, .udp), flags: [], now: 299_999 + 300_000, schedule: assign(other)) == .forward(other, real: 1, created: true))
        #expect(t.count == 1)
    }

    @Test func newSYNOnTimeWaitTupleIsRescheduled() {
        let t = ConnectionTracker()
        _ = t.inbound(key(), flags: .syn, now: 0, schedule: assign(real))
        _ = t.inbound(key(), flags: .ack, now: 1, schedule: assign(real))
        _ = t.inbound(key(), flags: .rst, now: 1, schedule: assign(real))
        #expect(state(t) == .close)
        #expect(t.inbound(key(), flags: .syn, now: 2, schedule: assign(other)) == .forward(other, real: 1, created: true))
        #expect(t.count == 1)
        #expect(t.reply(replyKey(from: other), flags: [.syn, .ack], now: 3) != nil)
        #expect(t.reply(replyKey(from: real), flags: [.syn, .ack], now: 3) == nil)
    }

    @Test func capacityBoundRefusesAndRecoversAfterExpiry() {
        let t = ConnectionTracker(configuration: .init(capacity: 8, stripes: 1))
        for port in 0..<8 {
            #expect(t.inbound(key(UInt16(1000 + port)), flags: .syn, now: 0, schedule: assign(real)) == .forward(real, real: 0, created: true))
            _ = t.inbound(key(UInt16(1000 + port)), flags: .ack, now: 0, schedule: assign(real))
        }
        // Refused before scheduling: the scheduler is not asked (its round-robin position, a persistence
        // template would otherwise move for a connection that never exists).
        var asked = 0
        #expect(t.inbound(key(2000), flags: .syn, now: 1) { _ in asked += 1; return nil } == .full)
        #expect(t.inbound(key(2001, .udp), flags: [], now: 1) { _ in asked += 1; return nil } == .full)
        #expect(asked == 0)
        // ESTABLISHED times out after 900 s; the full stripe expires before refusing.
        #expect(t.inbound(key(2000), flags: .syn, now: 900_001, schedule: assign(real)) == .forward(real, real: 0, created: true))
        #expect(t.count == 1)
    }

    /// A SYN flood fills the table with half-open connections: a new SYN then evicts one of them (never an
    /// established connection) instead of being refused until they time out 60 s later.
    @Test func aFullTableEvictsHalfOpenConnectionsOnly() {
        let t = ConnectionTracker(configuration: .init(capacity: 8, stripes: 1))
        for port in 0..<6 {                                  // six half-open (the flood)
            _ = t.inbound(key(UInt16(1000 + port)), flags: .syn, now: 0, schedule: assign(real))
        }
        for port in 6..<8 {                                  // two established (real clients)
            _ = t.inbound(key(UInt16(1000 + port)), flags: .syn, now: 0, schedule: assign(real))
            _ = t.inbound(key(UInt16(1000 + port)), flags: .ack, now: 0, schedule: assign(real))
        }
        for port in 0..<20 {
            #expect(t.inbound(key(UInt16(2000 + port)), flags: .syn, now: 1, schedule: assign(other)) == .forward(other, real: 1, created: true))
        }
        #expect(t.count == 8 && t.evictions.load(ordering: .relaxed) == 20)
        for port in 6..<8 {
            #expect(t.connection(inbound: key(UInt16(1000 + port)), now: 1)?.real == 0, "established connections stay")
        }
        // Once every entry is established, a SYN is refused.
        for port in 2014..<2020 { _ = t.inbound(key(UInt16(port)), flags: .ack, now: 1, schedule: assign(other)) }
        #expect(t.inbound(key(3000), flags: .syn, now: 1, schedule: assign(other)) == .full)
    }

    @Test func replyTupleConflictIsRefused() {
        let t = ConnectionTracker()
        _ = t.inbound(key(), flags: .syn, now: 0, schedule: assign(real))
        // Same client endpoint to another VIP port mapped to the same real server: replies would collide.
        let second = FlowKey(source: endpoint("192.0.2.2", 40000), destination: endpoint("203.0.113.10", 443), transport: .tcp)
        #expect(t.inbound(second, flags: .syn, now: 1, schedule: assign(real)) == .conflict)
    }

    /// Index integrity under churn: many inserts and removals, every live connection still found both ways.
    @Test func churnKeepsBothIndexesConsistent() {
        let t = ConnectionTracker(configuration: .init(capacity: 4096, stripes: 4))
        var now: UInt64 = 0
        for round in 0..<20 {
            for port in 0..<1000 {
                _ = t.inbound(key(UInt16(port + round * 7 % 50)), flags: .syn, now: now, schedule: assign(real))
            }
            now += 30_000
            t.expire(now: now)
        }
        #expect(!t.snapshot().isEmpty)
        for connection in t.snapshot() {
            #expect(t.reply(connection.reply, flags: .ack, now: now)?.inbound == connection.inbound)
        }
    }

    /// Several threads (as queue workers do) open and answer connections concurrently.
    @Test func concurrentWorkersSeeEveryConnection() async {
        let t = ConnectionTracker(configuration: .init(capacity: 100_000, stripes: 16))
        let real = self.real
        await withTaskGroup(of: Void.self) { group in
            for worker in 0..<4 {
                group.addTask {
                    for i in 0..<5_000 {
                        let k = FlowKey(source: Endpoint(address: IPAddress(ipv4: 0xC000_0200 | UInt32(worker)), port: UInt16(i)),
                                        destination: endpoint("203.0.113.10", 80), transport: .tcp)
                        _ = t.inbound(k, flags: .syn, now: 0) { _ in .init(realServer: real, real: 0) }
                        let r = FlowKey(source: real, destination: k.source, transport: .tcp)
                        precondition(t.reply(r, flags: [.syn, .ack], now: 1) != nil)
                    }
                }
            }
        }
        #expect(t.count == 20_000)
    }
}
