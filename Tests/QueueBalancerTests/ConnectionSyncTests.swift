import Foundation
import Testing
@testable import QueueBalancer

/// Connection sync between balancers (``ConnectionSync``): its settings, what it chooses to send, and two
/// balancers exchanging a FULLNAT connection over real UDP sockets on loopback, after which the second forwards
/// the flow's packets, both ways, byte for byte as the first did.
@Suite(.serialized) struct ConnectionSyncTests {
    /// A key file in a fresh temporary directory (removed by the caller).
    static func keyFile(_ key: String = "0123456789abcdef0123456789abcdef") throws -> String {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("nfqlb-sync-\(getpid())-\(UInt32.random(in: 0...UInt32.max))")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let path = directory.appendingPathComponent("key").path
        try (key + "\n").write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    /// Balancer `index` (1 or 2) of a FULLNAT pair: its own local address 198.51.100.(index), the other's taken
    /// over, sync between 127.0.0.1:`ports`.
    static func yaml(_ index: Int, key: String, ports: (UInt16, UInt16), sync: String = "", mode: String = "fullnat") -> String {
        let own = index == 1 ? ports.0 : ports.1, other = index == 1 ? ports.1 : ports.0
        let locals = mode == "fullnat" ? "\n    local-addresses: [198.51.100.\(index)]" : ""
        return """
            queues: [0]
            cluster:
              local-as: 65001
              peers: [{ address: 198.51.100.254, as: 65000 }]
              sync: { listen: 127.0.0.1:\(own), peers: [127.0.0.1:\(other)], key-file: \(key), interval: 20ms\(sync) }
              takeover-local-addresses: [198.51.100.\(3 - index)]
            services:
              - vip: 203.0.113.10
                port: 80
                protocol: tcp
                mode: \(mode)\(locals)
                reals: [{ address: 198.51.100.11, port: 8080 }, { address: 198.51.100.12, port: 8080 }]
            """
    }

    @Test func settingsAreReadWithTheirDefaults() throws {
        let key = try Self.keyFile()
        defer { try? FileManager.default.removeItem(atPath: (key as NSString).deletingLastPathComponent) }
        let config = try ConfigLoader.parse(yaml: Self.yaml(1, key: key, ports: (8848, 8849)))
        let cluster = try #require(config.cluster)
        let sync = try #require(cluster.sync)
        #expect(sync.listen == endpoint("127.0.0.1", 8848) && sync.peers == [endpoint("127.0.0.1", 8849)])
        #expect(sync.key == Array("0123456789abcdef0123456789abcdef".utf8), "the key without its newline")
        #expect(sync.interval == 20 && sync.refresh == 30_000 && sync.maxRate == 10_000_000)
        #expect(cluster.takeoverLocalAddresses == [ip("198.51.100.2")])
        // The same key gives the same tracker seed on every balancer; another key another one.
        let other = try ConfigLoader.parse(yaml: Self.yaml(2, key: key, ports: (8848, 8849)))
        #expect(other.cluster?.sync?.trackerSeed == sync.trackerSeed)
        var changed = sync
        changed.key = Array("another key, sixteen bytes or more".utf8)
        #expect(changed.trackerSeed != sync.trackerSeed)
        // The replies to the taken-over local address are queued too; BIRD announces it with a longer path.
        let rules = IptablesRules.restoreInput(for: config)
        #expect(rules.contains("-d 198.51.100.1/32") && rules.contains("-d 198.51.100.2/32"))
        let bird = RoutingConfig.bird(config, cluster: cluster)
        #expect(bird.contains("protocol static nfqlb_local4 {") && bird.contains("route 198.51.100.1/32 via \"nfqlb-live\";"))
        #expect(bird.contains("protocol static nfqlb_takeover4 {") && bird.contains("route 198.51.100.2/32 via \"nfqlb-live\";"))
        #expect(bird.contains("if proto = \"nfqlb_takeover4\" then { bgp_path.prepend(65001); bgp_path.prepend(65001); accept; }"))
        let (status, output) = try RoutingConfigTests.check(bird, "/usr/sbin/bird", ["-p", "-c"])
        #expect(status == 0, "bird -p: \(output)")
        // No warning about FULLNAT with sync.
        #expect(cluster.warnings(for: config).isEmpty, "\(cluster.warnings(for: config))")
    }

    /// Without local-as and peers the cluster announces nothing: sync only, for active/backup.
    @Test func aClusterOfSyncOnlyAnnouncesNothing() throws {
        let key = try Self.keyFile()
        defer { try? FileManager.default.removeItem(atPath: (key as NSString).deletingLastPathComponent) }
        let config = try ConfigLoader.parse(yaml: """
            queues: [0]
            cluster: { sync: { listen: 198.51.100.1:8848, peers: [198.51.100.2:8848], key-file: \(key) } }
            services:
              - { vip: 203.0.113.10, port: 80, protocol: tcp, mode: nat, reals: [{ address: 198.51.100.11 }] }
            """)
        let cluster = try #require(config.cluster)
        #expect(!cluster.announces && cluster.sync != nil)
        #expect(cluster.warnings(for: config) == ["203.0.113.10:80/tcp (nat): replies return only through the real servers' gateway: run NAT active/backup (the backup holds the synced connections)"])
        // Either both or neither: local-as alone still needs its peers.
        do {
            _ = try ConfigLoader.parse(yaml: """
                queues: [0]
                cluster: { local-as: 65001, sync: { listen: 198.51.100.1:8848, peers: [198.51.100.2:8848], key-file: \(key) } }
                services:
                  - { vip: 203.0.113.10, port: 80, protocol: tcp, mode: nat, reals: [{ address: 198.51.100.11 }] }
                """)
            Issue.record("local-as without peers accepted")
        } catch {
            #expect(error.reason.contains("cluster needs 'peers'"), "\(error)")
        }
    }

    @Test func mistakesAreRefused() throws {
        let key = try Self.keyFile()
        let short = try Self.keyFile("too short")
        defer {
            for path in [key, short] { try? FileManager.default.removeItem(atPath: (path as NSString).deletingLastPathComponent) }
        }
        let good = Self.yaml(1, key: key, ports: (8848, 8849))
        let cases: [(String, String)] = [
            (Self.yaml(1, key: "/nonexistent/nfqlb.key", ports: (8848, 8849)), "cannot be read"),
            (Self.yaml(1, key: short, ports: (8848, 8849)), "the key needs at least 16"),
            (Self.yaml(1, key: "relative.key", ports: (8848, 8849)), "must be an absolute path"),
            (Self.yaml(1, key: key, ports: (8848, 8848)), "is this balancer's own listen endpoint"),
            (good.replacingOccurrences(of: "peers: [127.0.0.1:8849]", with: "peers: [\"[2001:db8::2]:8848\"]"), "is not of listen's family"),
            (good.replacingOccurrences(of: "listen: 127.0.0.1:8848", with: "listen: 0.0.0.0:8848"), "must be this balancer's own address"),
            (Self.yaml(1, key: key, ports: (8848, 8849), sync: ", refresh: 10ms"), "refresh must be within 1s-2m"),
            (Self.yaml(1, key: key, ports: (8848, 8849), sync: ", max-rate: 5"), "max-rate"),
            (good.replacingOccurrences(of: "takeover-local-addresses: [198.51.100.2]", with: "takeover-local-addresses: [198.51.100.1]"),
             "is this balancer's own local address"),
            (good.replacingOccurrences(of: "  sync: {", with: "  # sync: {"), "need cluster sync"),
        ]
        for (yaml, reason) in cases {
            do {
                _ = try ConfigLoader.parse(yaml: yaml)
                Issue.record("accepted (\(reason)):\n\(yaml)")
            } catch {
                #expect(error.reason.contains(reason), "\(error)")
                #expect(error.line > 0)
            }
        }
    }

    static func saved(_ port: UInt16, state: ConnectionState = .established, expires: UInt64 = 10_000,
                      fromPeer: Bool = false, inputOnly: Bool = false) -> ConnectionTracker.Saved {
        ConnectionTracker.Saved(
            inbound: FlowKey(source: endpoint("192.0.2.2", port), destination: endpoint("203.0.113.10", 80), transport: .tcp),
            reply: FlowKey(source: endpoint("198.51.100.11", 8080), destination: endpoint("198.51.100.1", port + 20000), transport: .tcp),
            state: state, expires: expires, real: RealServerID(0), translated: true, inputOnly: inputOnly, fromPeer: fromPeer)
    }

    @Test func removalsAndNewConnectionsGoFirstAndCopiesAreNotPassedOn() {
        let now: UInt64 = 1_000
        var sent: [FlowKey: (record: SyncRecord, at: UInt64)] = [:]
        let first = ConnectionSync.changes(current: [Self.saved(1), Self.saved(2), Self.saved(3, fromPeer: true),
                                                     Self.saved(4, inputOnly: true), Self.saved(5, expires: 900)],
                                           sent: sent, now: now, refresh: 5_000)
        #expect(first.map(\.key.source.port) == [1, 2], "not: another balancer's copy, DR/TUN, expired")
        #expect(first.allSatisfy { $0.record.operation == .update && $0.record.lifetime == 9_000 })
        #expect(first[0].record.local == endpoint("198.51.100.1", 20001) && first[0].record.real == endpoint("198.51.100.11", 8080))
        for change in first { sent[change.key] = (change.record, now) }
        // Nothing changed: nothing to send until the refresh.
        #expect(ConnectionSync.changes(current: [Self.saved(1), Self.saved(2)], sent: sent, now: 2_000, refresh: 5_000).isEmpty)
        // Connection 2 ends, 1 changes state, 6 is new: the removal first, then the new one, then the change.
        let next = ConnectionSync.changes(current: [Self.saved(1, state: .finWait), Self.saved(6)], sent: sent, now: 2_000, refresh: 5_000)
        #expect(next.map(\.key.source.port) == [2, 6, 1])
        #expect(next.map(\.record.operation) == [.remove, .update, .update])
        // At the refresh every connection is sent again.
        #expect(ConnectionSync.changes(current: [Self.saved(1), Self.saved(2)], sent: sent, now: 6_000, refresh: 5_000).count == 2)
    }

    @Test func recordsInsertUpdateReplaceAndRemoveCopiesButNeverTheBalancersOwn() throws {
        let key = try Self.keyFile()
        defer { try? FileManager.default.removeItem(atPath: (key as NSString).deletingLastPathComponent) }
        let config = try ConfigLoader.parse(yaml: Self.yaml(2, key: key, ports: (8848, 8849)))
        let handler = PacketHandler(config: config, tracker: ConnectionTracker(config: config, hashSeed: config.cluster?.sync?.trackerSeed))
        let tracker = handler.tracker
        let first = try #require(tracker.registry.number(of: .init(service: config.services[0], real: config.services[0].reals[0])))
        let second = try #require(tracker.registry.number(of: .init(service: config.services[0], real: config.services[0].reals[1])))
        // The sender chose its local ports so that LIP:port falls in the client's lock stripe (under the seed the
        // key gives every balancer): the copy must too. Two such ports, and one that does not.
        let hasher = FlowHasher(seed: tracker.configuration.hashSeed)
        let mask = UInt64(tracker.configuration.stripes - 1)
        let client = hasher.hash(endpoint("192.0.2.2", 40_000), .tcp) & mask
        let fitting = (UInt16(61_000)...65_535).filter { hasher.hash(endpoint("198.51.100.1", $0), .tcp) & mask == client }
        let (port1, port2) = (fitting[0], fitting[1])
        let misfit = try #require((UInt16(61_000)...65_535).first { !fitting.contains($0) })
        func record(_ operation: SyncRecord.Operation, real: Int = 0, port: UInt16? = nil, state: ConnectionState = .established) -> SyncRecord {
            SyncRecord(operation: operation, transport: .tcp, state: state, client: endpoint("192.0.2.2", 40_000),
                       virtual: endpoint("203.0.113.10", 80), real: config.services[0].reals[real].endpoint,
                       local: endpoint("198.51.100.1", port ?? port1), lifetime: 60_000)
        }
        func copies() -> [ConnectionTracker.Listed] { tracker.connections(limit: 10) { _ in true }.connections }
        #expect(tracker.synced(record(.remove), real: first, now: 1_000) == .ignored, "removal of an unknown one")
        #expect(tracker.synced(record(.update, port: misfit), real: first, now: 1_000) == .failed, "a port of another stripe")
        #expect(tracker.synced(record(.update), real: first, now: 1_000) == .inserted)
        #expect(copies().count == 1 && copies()[0].synced && copies()[0].expires == 61_000 && copies()[0].state == .established)
        #expect(tracker.synced(record(.update, state: .finWait), real: first, now: 2_000) == .updated)
        #expect(copies()[0].state == .finWait && copies()[0].expires == 62_000)
        // The sender's connection on this tuple is another now (another real server and local port): replaced.
        #expect(tracker.synced(record(.update, real: 1, port: port2), real: second, now: 3_000) == .inserted)
        #expect(copies().count == 1 && copies()[0].real == second && copies()[0].reply.destination.port == port2)
        #expect(tracker.synced(record(.remove, real: 1, port: port2), real: second, now: 4_000) == .removed)
        #expect(copies().isEmpty)
        // A copy a packet touched is this balancer's own: the others' records leave it alone.
        #expect(tracker.synced(record(.update), real: first, now: 5_000) == .inserted)
        var ack = PacketBuilder()
        ack.tcpFlags = 0x10
        var counters = CounterBatch()
        #expect(handler.run(ack.build(), now: 6_000, counters: &counters).0 == .acceptRewritten)
        #expect(copies().count == 1 && !copies()[0].synced)
        #expect(tracker.synced(record(.remove), real: first, now: 7_000) == .ignored)
        #expect(copies().count == 1)
    }

    /// Waits (bounded: 5 s) until `condition` holds.
    static func eventually(_ condition: () -> Bool) -> Bool {
        for _ in 0..<500 {
            if condition() { return true }
            usleep(10_000)
        }
        return condition()
    }

    /// FULLNAT on every balancer at once; NAT as active/backup (the backup holds the active's connections).
    @Test(arguments: ["fullnat", "nat"])
    func anotherBalancerForwardsASyncedConnectionAsTheFirstDid(mode: String) throws {
        let key = try Self.keyFile()
        defer { try? FileManager.default.removeItem(atPath: (key as NSString).deletingLastPathComponent) }
        let base = UInt16.random(in: 30000...50000)
        let ports = (base, base + 1)
        let configA = try ConfigLoader.parse(yaml: Self.yaml(1, key: key, ports: ports, mode: mode))
        let configB = try ConfigLoader.parse(yaml: Self.yaml(2, key: key, ports: ports, mode: mode))
        let source: [UInt8] = mode == "fullnat" ? [198, 51, 100, 1] : [192, 0, 2, 2]   // A's local address, or the client
        let seed = try #require(configA.cluster?.sync?.trackerSeed)
        let a = PacketHandler(config: configA, tracker: ConnectionTracker(config: configA, hashSeed: seed))
        let b = PacketHandler(config: configB, tracker: ConnectionTracker(config: configB, hashSeed: seed))
        let syncA = try ConnectionSync(settings: try #require(configA.cluster?.sync), tracker: a.tracker, logger: .init(label: "a"))
        let syncB = try ConnectionSync(settings: try #require(configB.cluster?.sync), tracker: b.tracker, logger: .init(label: "b"))
        let stop = StopSignal()
        let threads = [Thread { syncA.run(stop: stop) }, Thread { syncB.run(stop: stop) }]
        threads.forEach { $0.start() }
        defer { stop.raise(); usleep(400_000) }

        // Balancer A opens 40 connections (SYN): each from A's local address and a port of A's.
        var countersA = CounterBatch(), countersB = CounterBatch()
        var expected: [UInt16: [UInt8]] = [:]
        for port: UInt16 in 41000..<41040 {
            var syn = PacketBuilder()
            syn.sourcePort = port
            let (verdict, out) = a.run(syn.build(), now: monotonicMilliseconds(), counters: &countersA)
            #expect(verdict == .acceptRewritten)
            #expect(Array(out[12..<16]) == source)
            var ack = syn
            ack.tcpFlags = 0x10
            ack.payload = Array("GET /".utf8)
            expected[port] = a.run(ack.build(), now: monotonicMilliseconds(), counters: &countersA).1
        }
        #expect(Self.eventually { syncB.counters.snapshot["records-inserted", default: 0] == 40 }, "\(syncB.counters.snapshot)")
        #expect(b.tracker.connections(limit: 100) { $0.synced }.matched == 40)

        // The router moves the flows to B: their next packets leave B exactly as A sent them (A's local address
        // and port), and the real servers' replies to A's local address come back through B to the client.
        for port: UInt16 in 41000..<41040 {
            var ack = PacketBuilder()
            ack.sourcePort = port
            ack.tcpFlags = 0x10
            ack.payload = Array("GET /".utf8)
            let (verdict, out) = b.run(ack.build(), now: monotonicMilliseconds(), counters: &countersB)
            #expect(verdict == .acceptRewritten)
            #expect(out == expected[port], "port \(port): B forwards as A did")
            var reply = PacketBuilder()
            reply.source = Array(out[16..<20])
            reply.sourcePort = 8080
            reply.destination = Array(out[12..<16])
            reply.destinationPort = UInt16(out[20]) << 8 | UInt16(out[21])
            reply.tcpFlags = 0x10
            let (replyVerdict, back) = b.run(reply.build(), now: monotonicMilliseconds(), counters: &countersB)
            #expect(replyVerdict == .acceptRewritten)
            #expect(Array(back[12..<16]) == [203, 0, 113, 10] && Array(back[16..<20]) == [192, 0, 2, 2])
        }
        #expect(countersB[.connectionsCreated] == 0 && countersB[.droppedNoConnection] == 0)
        // Touched by B's packets, they are B's own now (B would send them on).
        #expect(b.tracker.connections(limit: 100) { $0.synced }.matched == 0)

        // FULLNAT: a reply to a local port with no connection is dropped (the kernel would reset it), not passed.
        if mode == "fullnat" {
            var stray = PacketBuilder()
            stray.source = [198, 51, 100, 11]
            stray.sourcePort = 8080
            stray.destination = [198, 51, 100, 1]
            stray.destinationPort = 61999
            stray.tcpFlags = 0x10
            #expect(b.run(stray.build(), now: monotonicMilliseconds(), counters: &countersB).0 == .drop)
            #expect(countersB[.droppedNoConnection] == 1)
        }

        // A datagram with another key, or from an address that is not a peer's, changes nothing.
        let forged = SyncMessage(sender: 7, epoch: 1, sequence: 1, records: []).encoded(key: Array("not the cluster's key at all".utf8))
        let fd = socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0)
        defer { close(fd) }
        _ = forged.withUnsafeBytes { raw in
            SocketAddress(endpoint("127.0.0.1", ports.1)).withSockaddr { sendto(fd, raw.baseAddress, raw.count, 0, $0, $1) }
        }
        #expect(Self.eventually { syncB.counters.snapshot["rejected-invalid", default: 0] == 1 }, "\(syncB.counters.snapshot)")
    }
}
