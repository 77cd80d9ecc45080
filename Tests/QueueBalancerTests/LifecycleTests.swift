import Testing
@testable import QueueBalancer

/// The real-server lifecycle in virtual time: active -> quiescent (weight 0) / draining (left out of the config
/// with `drain`) -> removed, and config changes on a running handler.
@Suite struct LifecycleTests {
    /// A handler whose tracker counts through the handler's registry, as in ``Balancer``.
    struct Lab {
        let registry: RealServerRegistry
        let handler: PacketHandler
        var counters = CounterBatch()

        init(_ config: BalancerConfig, registryCapacity: Int = 64) {
            registry = RealServerRegistry(capacity: registryCapacity)
            let configuration = ConnectionTracker.Configuration(hashSeed: 7, portAllocators: config.portAllocators)
            handler = PacketHandler(config: config, tracker: ConnectionTracker(configuration: configuration, registry: registry),
                                    now: 0)
        }

        /// Sends a client packet from 192.0.2.2:`port`; returns the verdict and the real server's last address
        /// byte when the packet was rewritten to one.
        mutating func send(port: UInt16, flags: UInt8 = 0x10, udp: Bool = false, client: UInt8 = 2,
                           now: UInt64) -> (Verdict, UInt8?) {
            var packet = PacketBuilder()
            packet.source = [192, 0, 2, client]
            packet.sourcePort = port
            if udp {
                packet.transport = 17
                packet.destinationPort = 53
            } else {
                packet.tcpFlags = flags
            }
            let (verdict, out) = handler.run(packet.build(), now: now, counters: &counters)
            return (verdict, verdict == .acceptRewritten ? out[19] : nil)
        }

        /// The real server of a new TCP connection from `port` (SYN then ACK, so it is established).
        mutating func connect(port: UInt16, client: UInt8 = 2, now: UInt64) -> UInt8? {
            let (_, real) = send(port: port, flags: 0x02, client: client, now: now)
            _ = send(port: port, flags: 0x10, client: client, now: now)
            return real
        }

        func load(_ lastByte: UInt8, port: UInt16 = 8080) -> RealServerLoad? {
            registry.servers().first { $0.key.real == endpoint("198.51.100.\(lastByte)", port) }
                .map { registry[$0.number] }
        }
    }

    /// A TCP (or UDP) NAT service over 198.51.100.X:8080 for X in `reals`.
    static func config(reals: [UInt8] = [11, 12, 13], weights: [UInt32]? = nil, drain: UInt64 = 0,
                       persistence: UInt64 = 0, udp: Bool = false, scheduler: SchedulerKind = .rr) -> BalancerConfig {
        var service = VirtualService(
            vip: IPAddress("203.0.113.10")!, port: udp ? 53 : 80, transport: udp ? .udp : .tcp, mode: .nat,
            scheduler: scheduler,
            reals: reals.enumerated().map { i, x in
                RealServer(address: IPAddress("198.51.100.\(x)")!, port: 8080, weight: weights?[i] ?? 1)
            })
        service.drain = drain
        service.persistence = persistence
        service.persistencePrefix = 32
        return BalancerConfig(queues: [0], services: [service])
    }

    @Test func weightZeroKeepsItsConnectionsAndTakesNoNewOnes() throws {
        var lab = Lab(Self.config())
        #expect(lab.connect(port: 1000, now: 0) == 11)
        try lab.handler.update(to: Self.config(weights: [0, 1, 1]), now: 1000)
        #expect(lab.load(11)?.lifecycle == .quiescent)
        #expect(lab.send(port: 1000, now: 2000).1 == 11, "the established connection continues")
        for port: UInt16 in 2000..<2012 {
            #expect(lab.connect(port: port, now: 3000) != 11)
        }
        #expect(lab.load(11)?.active == 1)
        #expect(lab.counters[.droppedNoConnection] == 0)
    }

    /// IPVS (conn_reuse_mode 1) drops such a SYN and the client waits a second for its retransmission.
    @Test func aSYNReusingThePortOfAQuiescentServersConnectionIsScheduledAtOnce() throws {
        var lab = Lab(Self.config())
        #expect(lab.connect(port: 1000, now: 0) == 11)
        try lab.handler.update(to: Self.config(weights: [0, 1, 1]), now: 1000)
        let (verdict, real) = lab.send(port: 1000, flags: 0x02, now: 2000)
        #expect(verdict == .acceptRewritten, "forwarded, not dropped")
        #expect(real == 12 || real == 13)
        #expect(lab.load(11)?.connections == 0)
        #expect(lab.handler.tracker.snapshot().map(\.inbound.source.port) == [1000])
        #expect(lab.counters[.droppedNoConnection] == 0 && lab.counters[.droppedRealServerRemoved] == 0)
    }

    @Test func aDrainingServerKeepsEstablishedTCPUntilTheDrainTimeEnds() throws {
        var lab = Lab(Self.config(drain: 30))
        #expect(lab.connect(port: 1000, now: 0) == 11)
        #expect(lab.connect(port: 1001, now: 0) == 12)
        try lab.handler.update(to: Self.config(reals: [12, 13], drain: 30), now: 1000)
        #expect(lab.load(11)?.lifecycle == .draining)
        #expect(lab.send(port: 1000, now: 30_999).1 == 11, "within the drain time")
        #expect(lab.send(port: 1001, now: 30_999).1 == 12, "a server that stays")
        for port: UInt16 in 2000..<2010 { #expect(lab.connect(port: port, now: 2000) != 11) }
        // The housekeeping second after the drain time: removed, its connections forgotten.
        #expect(lab.registry.advance(now: 30_999) == false)
        #expect(lab.registry.advance(now: 31_000) == true)
        #expect(lab.load(11)?.lifecycle == .removed)
        #expect(lab.handler.tracker.forgetRemovedServers() == 1)
        #expect(lab.send(port: 1000, now: 31_500).0 == .drop)
        #expect(lab.counters[.droppedNoConnection] == 1)
        // The client gives up and reconnects from the same port: scheduled at once on a live server.
        let (verdict, real) = lab.send(port: 1000, flags: 0x02, now: 32_000)
        #expect(verdict == .acceptRewritten && real != 11)
        #expect(lab.send(port: 1001, now: 32_000).1 == 12)
    }

    @Test func aServerRemovedWithoutDrainLosesItsTCPConnectionsAtOnce() throws {
        var lab = Lab(Self.config())
        #expect(lab.connect(port: 1000, now: 0) == 11)
        try lab.handler.update(to: Self.config(reals: [12, 13]), now: 1000)
        #expect(lab.load(11)?.lifecycle == .removed)
        // Before the housekeeping sweep: the packet path itself refuses the connection.
        #expect(lab.send(port: 1000, now: 1001).0 == .drop)
        #expect(lab.counters[.droppedRealServerRemoved] == 1)
        #expect(lab.load(11)?.connections == 0)
        let (verdict, real) = lab.send(port: 1000, flags: 0x02, now: 1002)
        #expect(verdict == .acceptRewritten && (real == 12 || real == 13))
        // With nothing left, the number is freed at the next housekeeping step.
        #expect(lab.registry.advance(now: 2000) == false)
        #expect(lab.load(11) == nil)
    }

    @Test func aUDPFlowMovesOnItsNextDatagramWhenItsServerLeaves() throws {
        var lab = Lab(Self.config(drain: 30, udp: true))
        #expect(lab.send(port: 5000, udp: true, now: 0).1 == 11)
        #expect(lab.send(port: 5001, udp: true, now: 0).1 == 12)
        // Weight 0: the flow stays (quiescent, as IPVS).
        try lab.handler.update(to: Self.config(weights: [0, 1, 1], drain: 30, udp: true), now: 1000)
        #expect(lab.send(port: 5000, udp: true, now: 1500).1 == 11)
        // Left out of the config, even while draining: the very next datagram goes elsewhere.
        try lab.handler.update(to: Self.config(reals: [12, 13], drain: 30, udp: true), now: 2000)
        let (verdict, real) = lab.send(port: 5000, udp: true, now: 2001)
        #expect(verdict == .acceptRewritten && (real == 12 || real == 13))
        #expect(lab.counters[.connectionsCreated] == 3)
        #expect(lab.send(port: 5001, udp: true, now: 2002).1 == 12, "flows to servers that stay do not move")
        #expect(lab.load(11)?.connections == 0)
        // The old server's late answer no longer maps to the flow.
        var reply = PacketBuilder()
        reply.source = [198, 51, 100, 11]
        reply.sourcePort = 8080
        reply.destination = [192, 0, 2, 2]
        reply.destinationPort = 5000
        reply.transport = 17
        #expect(lab.handler.run(reply.build(), now: 2003, counters: &lab.counters).0 == .accept)
        #expect(lab.counters[.passedUnmatched] == 1)
    }

    @Test func aPersistenceTemplateToARemovedServerExpires() throws {
        var lab = Lab(Self.config(persistence: 300))
        #expect(lab.connect(port: 1000, now: 0) == 11)
        #expect(lab.connect(port: 1001, now: 1000) == 11, "sticky")
        // Weight 0: the template no longer sends new connections there.
        try lab.handler.update(to: Self.config(weights: [0, 1, 1], persistence: 300), now: 2000)
        let moved = lab.connect(port: 1002, now: 3000)
        #expect(moved == 12 || moved == 13)
        // The old connection's packets still reach 11, but no longer refresh a template naming it.
        #expect(lab.send(port: 1000, now: 3500).1 == 11)
        #expect(lab.connect(port: 1003, now: 4000) == moved, "the template now names the new server")
        // Removed and put back: the client stays where its template now points.
        try lab.handler.update(to: Self.config(reals: [12, 13], persistence: 300), now: 5000)
        try lab.handler.update(to: Self.config(persistence: 300), now: 6000)
        #expect(lab.connect(port: 1004, now: 7000) == moved)
        // A removed server's number is not reused while a template may still name it.
        var other = Lab(Self.config(persistence: 300))
        #expect(other.connect(port: 1000, now: 0) == 11)
        try other.handler.update(to: Self.config(reals: [12, 13], persistence: 300), now: 1000)
        other.registry.advance(now: 2000)
        #expect(other.handler.tracker.forgetRemovedServers() == 1)
        other.registry.advance(now: 2000)
        #expect(other.registry.servers().count == 3, "kept for the persistence time")
        other.registry.advance(now: 301_999)     // removed at 1 s, templates last 300 s, plus 1 s of rounding
        #expect(other.registry.servers().count == 3)
        other.registry.advance(now: 302_000)
        #expect(other.registry.servers().count == 2)
    }

    /// The library API: a config change keeps every connection to a server that stays, with its counts.
    @Test func aConfigChangeKeepsConnectionsToServersThatStay() throws {
        var lab = Lab(Self.config(drain: 60))
        var before: [UInt16: UInt8] = [:]
        for port: UInt16 in 1000..<1030 { before[port] = lab.connect(port: port, now: 0) }
        let counts = [11, 12, 13].map { lab.load($0)?.active }
        #expect(counts == [10, 10, 10])
        let loads = [12, 13].map { lab.load($0) }
        // Add a server, change weights and the scheduler, remove 11 with a drain time.
        try lab.handler.update(to: Self.config(reals: [12, 13, 14], weights: [2, 1, 5], drain: 60, scheduler: .wlc),
                               now: 1000)
        for port: UInt16 in 1000..<1030 {
            #expect(lab.send(port: port, now: 2000).1 == before[port], "port \(port)")
        }
        #expect(lab.load(12) === loads[0] && lab.load(13) === loads[1], "same state objects")
        #expect([12, 13].map { lab.load($0)?.active } == [10, 10])
        var fresh: [UInt8: Int] = [:]
        for port: UInt16 in 3000..<3016 { fresh[lab.connect(port: port, now: 3000)!, default: 0] += 1 }
        #expect(fresh[11] == nil)
        #expect(fresh[14] == 16, "wlc fills the new, heaviest, empty server first")
        #expect(lab.counters[.droppedNoConnection] == 0)
    }

    @Test func aRefusedChangeKeepsTheRunningConfig() throws {
        var lab = Lab(Self.config())
        #expect(lab.connect(port: 1000, now: 0) == 11)
        var other = Self.config(reals: [12])
        other.queues = [1]
        #expect(throws: ConfigUpdateError.self) { try lab.handler.update(to: other, now: 1000) }
        other = Self.config(reals: [12])
        other.maxConnections = 5
        #expect(throws: ConfigUpdateError.self) { try lab.handler.update(to: other, now: 1000) }
        #expect(lab.handler.config == Self.config())
        #expect(lab.load(11)?.lifecycle == .active)
        #expect(lab.send(port: 1000, now: 2000).1 == 11)
        // Too many real servers for the registry: refused before anything changed.
        var small = Lab(Self.config(), registryCapacity: 4)
        let error = #expect(throws: ConfigUpdateError.self) {
            try small.handler.update(to: Self.config(reals: [11, 12, 13, 14, 15]), now: 1000)
        }
        #expect(error?.reason.contains("too many real servers") == true)
        #expect(small.registry.servers().count == 3)
        #expect(small.connect(port: 1000, now: 2000) != nil)
    }

    @Test func dRealServersKeepTheirFwmarks() throws {
        func dr(_ reals: [UInt8]) -> BalancerConfig {
            var service = VirtualService(
                vip: IPAddress("203.0.113.10")!, port: 80, transport: .tcp, mode: .dr, scheduler: .rr,
                reals: reals.map { RealServer(address: IPAddress("198.51.100.\($0)")!, port: 80) })
            service.drain = 60
            return BalancerConfig(queues: [0], services: [service])
        }
        let lab = Lab(dr([11, 12, 13]))
        try lab.handler.update(to: dr([11, 12]), now: 1000)     // the last one leaves: no mark moves
        let error = #expect(throws: ConfigUpdateError.self) { try lab.handler.update(to: dr([12]), now: 2000) }
        #expect(error?.reason.contains("fwmark") == true)
        #expect(throws: ConfigUpdateError.self) { try lab.handler.update(to: Self.config(), now: 2000) }
        // 13 left at 1 s and drains for 60 s: a new server may not take its mark meanwhile (that would steer
        // 13's connections to it), and may once 13 is gone.
        let reuse = #expect(throws: ConfigUpdateError.self) { try lab.handler.update(to: dr([11, 12, 14]), now: 3000) }
        #expect(reuse?.reason.contains("still draining") == true)
        lab.registry.advance(now: 61_000)
        lab.registry.advance(now: 62_001)
        try lab.handler.update(to: dr([11, 12, 14]), now: 63_000)
    }

    @Test func aFullNATServerAddedLaterGetsItsOwnPorts() throws {
        func fullnat(_ reals: [UInt8]) -> BalancerConfig {
            BalancerConfig(queues: [0], services: [VirtualService(
                vip: IPAddress("203.0.113.10")!, port: 80, transport: .tcp, mode: .fullnat, scheduler: .rr,
                reals: reals.map { RealServer(address: IPAddress("198.51.100.\($0)")!, port: 8080) },
                localAddresses: [IPAddress("198.51.100.1")!])])
        }
        var lab = Lab(fullnat([11]))
        #expect(lab.connect(port: 1000, now: 0) == 11)
        try lab.handler.update(to: fullnat([11, 12]), now: 1000)
        var seen = Set<UInt8>()
        for port: UInt16 in 2000..<2004 { seen.insert(lab.connect(port: port, now: 2000)!) }
        #expect(seen == [11, 12])
        #expect(lab.counters[.droppedPortsExhausted] == 0)
        #expect(lab.handler.tracker.snapshot().allSatisfy { $0.reply.destination.address == IPAddress("198.51.100.1")! })
    }

    /// A replaced table is released only once no worker can be reading it.
    @Test func aReplacedTableOutlivesTheBatchesThatMayReadIt() throws {
        let registry = RealServerRegistry(capacity: 16)
        let handler = PacketHandler(config: Self.config(), tracker: ConnectionTracker(registry: registry),
                                    workers: 2, now: 0)
        handler.enterBatch(worker: 1)
        try handler.update(to: Self.config(weights: [2, 1, 1]), now: 1)
        #expect(handler.retiredTables == 1)
        handler.enterBatch(worker: 0)       // a batch started after the swap reads the new table only
        handler.reclaimRetiredTables()
        #expect(handler.retiredTables == 1)
        handler.leaveBatch(worker: 1)
        handler.reclaimRetiredTables()
        #expect(handler.retiredTables == 0)
        handler.leaveBatch(worker: 0)
    }
}
