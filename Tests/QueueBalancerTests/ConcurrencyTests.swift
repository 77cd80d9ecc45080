import Foundation
import Synchronization
import Testing
@testable import QueueBalancer

/// The balancer as `nfqlb run` drives it: queue workers on their own threads handle packets while the control
/// thread reloads the configuration and the housekeeping thread expires connections and reclaims tables.
/// Run under ThreadSanitizer by `scripts/test.sh` (docs/ARCHITECTURE.md, "Fuzzing and sanitizers").
@Suite struct ConcurrencyTests {
    /// Two workers send SYNs and the first data packet of each connection while the configuration flips 300
    /// times between two real-server sets (one server leaves with a drain, one comes back, weights change)
    /// and housekeeping runs: every packet gets a verdict that forwards it to a server of one of the two sets,
    /// nothing is lost in the counters, and the retired tables are all released in the end.
    @Test func workersHandlePacketsWhileTheConfigReloads() throws {
        var a = natConfig(weights: [1, 1, 1]), b = natConfig(weights: [3, 0, 1, 2])
        a.services[0].drain = 60      // a server that leaves keeps its connections (the clock stands still)
        b.services[0].drain = 60
        let allowed = Set((a.services[0].reals + b.services[0].reals).map(\.address))
        let handler = PacketHandler(config: a, tracker: ConnectionTracker(config: a), workers: 2, now: 0)
        let totals = DatapathCounters()
        let bad = Atomic<Int>(0), sent = Atomic<Int>(0)
        let done = Atomic<Bool>(false)
        let finished = DispatchSemaphore(value: 0)
        for worker in 0..<2 {
            Thread {
                var counters = CounterBatch()
                var port: UInt16 = 1024 + UInt16(worker) * 30_000
                var rounds = 0
                while !done.load(ordering: .relaxed) || rounds < 200 {
                    handler.enterBatch(worker: worker)
                    for flags: UInt8 in [0x02, 0x18] {
                        var packet = PacketBuilder()
                        packet.sourcePort = port
                        packet.tcpFlags = flags
                        var bytes = packet.build()
                        let verdict = bytes.withUnsafeMutableBytes { handler.handle($0, info: [], now: 1_000, counters: &counters) }
                        let real = IPAddress(ipv4: UInt32(bytes[16]) << 24 | UInt32(bytes[17]) << 16 | UInt32(bytes[18]) << 8 | UInt32(bytes[19]))
                        if verdict != .acceptRewritten || !allowed.contains(real) { bad.wrappingAdd(1, ordering: .relaxed) }
                        sent.wrappingAdd(1, ordering: .relaxed)
                    }
                    handler.leaveBatch(worker: worker)
                    port = port &+ 1
                    rounds += 1
                    if rounds % 64 == 0 { totals.add(counters); counters = CounterBatch() }
                }
                totals.add(counters)
                finished.signal()
            }.start()
        }
        for i in 0..<300 {
            try handler.update(to: i % 2 == 0 ? b : a, now: 1_000)
            handler.housekeeping(now: 1_000, counters: totals)
        }
        done.store(true, ordering: .relaxed)
        finished.wait()
        finished.wait()
        handler.housekeeping(now: 1_000, counters: totals)
        #expect(bad.load(ordering: .relaxed) == 0, "\(DatapathCounter.allCases.filter { totals[$0] > 0 }.map { "\($0.name) \(totals[$0])" })")
        #expect(totals[.forwarded] == UInt64(sent.load(ordering: .relaxed)))
        #expect(handler.retiredTables == 0)
    }
}
