import Foundation
import Testing
@testable import QueueBalancer

/// Connections and persistence templates saved by one balancer and taken back by the next
/// (`nfqlb run --state-file`): the packets of the restored connections go where they went before.
@Suite struct BalancerStateTests {
    static func config(natReals: [String]) -> BalancerConfig {
        var nat = VirtualService(vip: ip("203.0.113.10"), port: 80, transport: .tcp, mode: .nat, scheduler: .rr,
                                 reals: natReals.map { RealServer(address: ip($0), port: 8080) })
        nat.persistence = 300
        nat.persistencePrefix = 32
        let fullnat = VirtualService(vip: ip("203.0.113.10"), port: 81, transport: .tcp, mode: .fullnat, scheduler: .rr,
                                     reals: [RealServer(address: ip("198.51.100.11"), port: 8081)],
                                     localAddresses: [ip("198.51.100.1")])
        var config = BalancerConfig(queues: [0], services: [nat, fullnat])
        config.maxConnections = 4096
        return config
    }

    func packet(client: UInt8, port: UInt16, to vport: UInt16, flags: UInt8) -> [UInt8] {
        var b = PacketBuilder()
        b.source = [192, 0, 2, client]; b.sourcePort = port; b.destinationPort = vport; b.tcpFlags = flags
        return b.build()
    }

    /// Where a client packet was sent: destination address and port after the rewrite.
    func destination(_ out: [UInt8]) -> String { "\(out[16]).\(out[17]).\(out[18]).\(out[19]):\(UInt16(out[22]) << 8 | UInt16(out[23]))" }

    @Test func restoredConnectionsGoOnToTheirRealServers() throws {
        let before = Self.config(natReals: ["198.51.100.11", "198.51.100.12", "198.51.100.13"])
        let a = PacketHandler(config: before, tracker: ConnectionTracker(config: before), now: 1_000)
        var counters = CounterBatch()
        var natServer: [UInt8: String] = [:]
        for client: UInt8 in 10..<16 {                                   // NAT: rr over three, persistence on
            _ = a.run(packet(client: client, port: 40000, to: 80, flags: 0x02), now: 1_000, counters: &counters)
            let (_, out) = a.run(packet(client: client, port: 40000, to: 80, flags: 0x10), now: 1_000, counters: &counters)
            natServer[client] = destination(out)
        }
        var local: [UInt16] = []                                         // FULLNAT: local ports handed out
        for port: UInt16 in 50000..<50004 {
            let (_, out) = a.run(packet(client: 20, port: port, to: 81, flags: 0x02), now: 1_000, counters: &counters)
            local.append(UInt16(out[20]) << 8 | UInt16(out[21]))
        }
        let saved = a.savedState(now: 2_000)
        #expect(saved.connections.count == 10 && saved.templates.count == 6)
        let decoded = try BalancerState(decoding: saved.encoded())
        #expect(decoded == saved)

        // The next balancer: r2 left the config, r4 came first (numbers differ from the first run's).
        let after = Self.config(natReals: ["198.51.100.14", "198.51.100.11", "198.51.100.13"])
        let b = PacketHandler(config: after, tracker: ConnectionTracker(config: after, hashSeed: decoded.hashSeed), now: 2_000)
        let report = b.restore(decoded, now: 2_000)
        let toR2 = natServer.values.filter { $0 == "198.51.100.12:8080" }.count
        #expect(report == PacketHandler.RestoreReport(connections: 10 - toR2, templates: 6 - toR2, orphaned: 2 * toR2, failed: 0))
        for (client, server) in natServer where server != "198.51.100.12:8080" {
            let (verdict, out) = b.run(packet(client: client, port: 40000, to: 80, flags: 0x18), now: 2_000, counters: &counters)
            #expect(verdict == .acceptRewritten && destination(out) == server, "client \(client)")
            // A new connection from the same client keeps its server: the template came back too.
            let (_, fresh) = b.run(packet(client: client, port: 40001, to: 80, flags: 0x02), now: 2_000, counters: &counters)
            #expect(destination(fresh) == server, "template of client \(client)")
        }
        // FULLNAT: the real server's answer to each local port finds its connection (same stripe, same hash),
        // and a new connection never gets a port still in use.
        for (i, port) in local.enumerated() {
            var reply = PacketBuilder()
            reply.source = [198, 51, 100, 11]; reply.sourcePort = 8081
            reply.destination = [198, 51, 100, 1]; reply.destinationPort = port; reply.tcpFlags = 0x12
            let (verdict, out) = b.run(reply.build(), now: 2_000, counters: &counters)
            #expect(verdict == .acceptRewritten && Array(out[16..<20]) == [192, 0, 2, 20]
                    && UInt16(out[22]) << 8 | UInt16(out[23]) == 50000 + UInt16(i), "local port \(port)")
        }
        for port: UInt16 in 51000..<51200 {
            let (_, out) = b.run(packet(client: 20, port: port, to: 81, flags: 0x02), now: 2_000, counters: &counters)
            #expect(!local.contains(UInt16(out[20]) << 8 | UInt16(out[21])))
        }
    }

    @Test func aDamagedOrForeignFileIsRefusedWithItsReason() throws {
        let config = Self.config(natReals: ["198.51.100.11"])
        let handler = PacketHandler(config: config, tracker: ConnectionTracker(config: config), now: 1_000)
        var counters = CounterBatch()
        _ = handler.run(packet(client: 10, port: 40000, to: 80, flags: 0x02), now: 1_000, counters: &counters)
        let bytes = handler.savedState(now: 1_000).encoded()
        for cut in [0, 4, 8, 20, bytes.count / 2, bytes.count - 1] {
            #expect(throws: BalancerState.Unusable.self) { try BalancerState(decoding: Array(bytes.prefix(cut))) }
        }
        var version = bytes
        version[8] = 9
        #expect(throws: BalancerState.Unusable(description: "format version 9, this nfqlb reads 1")) {
            try BalancerState(decoding: version)
        }
        #expect(throws: BalancerState.Unusable.self) { try BalancerState(decoding: bytes + [0]) }
        var random = SystemRandomNumberGenerator()
        for _ in 0..<200 {                                          // never a trap
            var noise = bytes
            for _ in 0..<4 { noise[Int.random(in: 8..<noise.count, using: &random)] = UInt8.random(in: 0...255, using: &random) }
            _ = try? BalancerState(decoding: noise)
        }
        // The file is read once; another table shape is refused.
        let path = NSTemporaryDirectory() + "nfqlb-state-\(UUID().uuidString)/state"
        try handler.savedState(now: 1_000).write(to: path)
        defer { try? FileManager.default.removeItem(atPath: (path as NSString).deletingLastPathComponent) }
        #expect(try BalancerState.take(from: path, for: config)?.connections.count == 1)
        #expect(try BalancerState.take(from: path, for: config) == nil, "deleted once read")
        try handler.savedState(now: 1_000).write(to: path)
        var bigger = config
        bigger.maxConnections = 8192
        #expect(throws: BalancerState.Unusable(description: "written for another max-connections or fullnat-ports")) {
            try BalancerState.take(from: path, for: bigger)
        }
        let mode = try FileManager.default.attributesOfItem(atPath: (path as NSString).deletingLastPathComponent)[.posixPermissions] as? NSNumber
        #expect(mode?.intValue == 0o700)
    }
}
