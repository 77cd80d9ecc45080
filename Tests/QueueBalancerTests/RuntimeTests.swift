import Foundation
import Testing
@testable import QueueBalancer

/// The parts of the runtime that need no queue: the checks before start, and the statistics it writes.
@Suite struct RuntimeTests {
    @Test func fullNATPortsMustStayOutOfTheEphemeralRange() throws {
        var config = BalancerConfig(queues: [0], services: [VirtualService(
            vip: ip("203.0.113.10"), port: 80, transport: .tcp, mode: .fullnat, scheduler: .rr,
            reals: [RealServer(address: ip("198.51.100.11"), port: 80)], localAddresses: [ip("198.51.100.1")])])
        let path = NSTemporaryDirectory() + "nfqlb-range-\(UUID().uuidString)"
        defer { unlink(path) }
        try "32768\t60999\n".write(toFile: path, atomically: true, encoding: .utf8)
        try Preflight.checkFullNATPorts(config, rangeFile: path)
        config.fullnatPorts = 50000...65535
        #expect(throws: Preflight.Failure.self) { try Preflight.checkFullNATPorts(config, rangeFile: path) }
        #expect(config.fullnatPortConflict(kernelRange: 32768...60999)?.hasPrefix("fullnat-ports 50000-65535 overlap") == true)
    }

    @Test func statisticsAreNameValueLines() throws {
        let counters = DatapathCounters()
        counters.add(.forwarded, 7)
        var kernel = KernelQueueStats()
        kernel.userDropped = 2
        let statistics = Statistics(counters: counters, gauges: [("connections_active", 3)], kernel: kernel)
        let lines = statistics.text.split(separator: "\n")
        #expect(lines.count == DatapathCounter.allCases.count + 4)
        #expect(lines.contains("forwarded 7") && lines.contains("connections_active 3") && lines.contains("kernel_user_dropped 2"))
        #expect(statistics.summary == "forwarded 7, connections_active 3, kernel_user_dropped 2")
        let path = NSTemporaryDirectory() + "nfqlb-stats-\(UUID().uuidString)"
        defer { unlink(path) }
        try StatisticsWriter(path: path).write(statistics)
        #expect(try String(contentsOfFile: path, encoding: .utf8) == statistics.text)
    }

    /// A symlink planted where the old writer put its temporary file (`PATH.tmp`), or at the path itself,
    /// must not make the writer (root) write through it: the victim keeps its bytes, the path becomes a
    /// regular file of mode 0644 with the statistics, and no temporary file is left behind.
    @Test func statisticsFileIsNotWrittenThroughSymlinks() throws {
        let directory = NSTemporaryDirectory() + "nfqlb-stats-dir-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: false)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let victim = directory + "/victim", path = directory + "/stats"
        try "victim".write(toFile: victim, atomically: false, encoding: .utf8)
        #expect(symlink(victim, path + ".tmp") == 0)
        #expect(symlink(victim, path) == 0)
        let statistics = Statistics(counters: DatapathCounters(), gauges: [], kernel: KernelQueueStats())
        try StatisticsWriter(path: path).write(statistics)
        #expect(try String(contentsOfFile: victim, encoding: .utf8) == "victim")
        let attributes = try FileManager.default.attributesOfItem(atPath: path)
        #expect(attributes[.type] as? FileAttributeType == .typeRegular)
        #expect((attributes[.posixPermissions] as? NSNumber)?.intValue == 0o644)
        #expect(try String(contentsOfFile: path, encoding: .utf8) == statistics.text)
        #expect(try FileManager.default.contentsOfDirectory(atPath: directory).sorted() == ["stats", "stats.tmp", "victim"])
    }

    @Test func statisticsWriteFailureNamesThePath() {
        let path = "/nonexistent-\(UUID().uuidString)/stats"
        let statistics = Statistics(counters: DatapathCounters(), gauges: [], kernel: KernelQueueStats())
        #expect { try StatisticsWriter(path: path).write(statistics) } throws: { error in
            "\(error)".hasPrefix("cannot write \(path): ")
        }
    }
}
