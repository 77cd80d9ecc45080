import Foundation
import Testing

/// End-to-end tests: a real lab of network namespaces (client, balancer, three real servers on a bridge),
/// real HTTP and UDP servers, the real kernel queue and iptables. Each test runs `Tests/e2e/nat.sh SCENARIO`,
/// which builds its own namespaces (unique names per run), asserts on what the client receives, on checksum
/// counters and on the rules left behind, and tears everything down in a trap. They need root; CI runs as root.
@Suite(.serialized, .enabled(if: EndToEnd.canRun, "needs root to create network namespaces"))
struct EndToEndTests {
    @Test func roundRobinSpreadsSixtyRequestsEvenly() throws {
        let output = try EndToEnd.run("rr")
        #expect(output.contains("distribution rr r1=20 r2=20 r3=20"))
    }

    @Test func weightedRoundRobinFollowsWeights() throws {
        let output = try EndToEnd.run("wrr")
        #expect(output.contains("distribution wrr r1=10 r2=20 r3=30"))
    }

    /// With GSO on the queue the download reaches nfqlb as super-packets (the script requires some), and
    /// arrives byte for byte with no checksum error anywhere.
    @Test func fiveMegabyteDownloadIsByteIdentical() throws {
        let output = try EndToEnd.run("download")
        #expect(output.contains("download 5242880 bytes sha256 match"))
        #expect(output.contains("gso super-packets: "))
    }

    @Test func udpEchoThroughTheVIP() throws {
        let output = try EndToEnd.run("udp")
        #expect(output.contains("distribution udp r1=10 r2=10 r3=10"))
        #expect(output.contains(EndToEnd.icmpTranslated), "the real server's port unreachable, translated")
    }

    @Test func vipConfiguredLocallyOnTheBalancer() throws {
        let output = try EndToEnd.run("local-vip")
        #expect(output.contains("distribution rr r1=20 r2=20 r3=20"))
        #expect(output.contains("distribution udp r1=10 r2=10 r3=10"))
    }

    /// FULLNAT: real servers without a route back; they only ever see the balancer's local address.
    @Test func fullNATNeedsNoGatewayOnTheRealServers() throws {
        let output = try EndToEnd.run("fullnat")
        for line in ["distribution rr r1=20 r2=20 r3=20", "download 5242880 bytes sha256 match",
                     "upload 3145728 bytes identical", "distribution udp r1=10 r2=10 r3=10",
                     "fullnat peer: 198.51.100.1", EndToEnd.icmpTranslated] {
            #expect(output.contains(line))
        }
    }

    /// The conntrack fast path in NAT and FULLNAT, both families: nfqlb schedules each connection's first
    /// packet, the kernel's conntrack and NAT carry the rest (and translate the real server's ICMP error);
    /// nfqlb's counts follow the kernel's events, a restart keeps a connection, a drain's end deletes the
    /// removed server's kernel connections, and `down` leaves none.
    @Test(arguments: ["nat", "fullnat"], [false, true])
    func offloadedToConntrack(mode: String, ipv6: Bool) throws {
        let output = try EndToEnd.run("offload", ipv6: ipv6, environment: ["MODE": mode])
        for line in ["distribution rr r1=20 r2=20 r3=20", "download 5242880 bytes sha256 match",
                     "upload 3145728 bytes identical", "distribution udp r1=10 r2=10 r3=10",
                     "offloaded first packets so far: 93 of 93 queued", EndToEnd.icmpTranslated] + EndToEnd.offloadChecks(93) {
            #expect(output.contains(line), "\(mode)")
        }
        if mode == "fullnat" { #expect(output.contains("fullnat peer: ")) }
    }

    /// The Swift path across a restart: a slow upload and a UDP flow go on while nfqlb is stopped (it saves
    /// its connections to the state file) and started again (it takes them back).
    @Test(arguments: ["nat", "fullnat"])
    func connectionsSurviveARestart(mode: String) throws {
        let output = try EndToEnd.run("restart", environment: ["MODE": mode])
        #expect(output.contains("ok: restart: the upload and the UDP flow went on through a restart of nfqlb"), "\(mode)")
        #expect(output.contains("udp flow: ") && output.contains(" connections restored"), "\(mode)")
    }

    /// Two queues: the two directions of each connection land on different workers sharing one table.
    @Test func twoQueuesShareOneConnectionTable() throws {
        let output = try EndToEnd.run("multiqueue")
        #expect(output.contains("distribution rr r1=20 r2=20 r3=20"))
        #expect(output.contains("download 5242880 bytes sha256 match"))
        #expect(output.contains("queues used: 2"))
    }

    /// The real-server lifecycle on a running nfqlb: r1 set to weight 0, then removed with a drain time, by
    /// SIGHUP, under long connections, a stream of short ones reusing source ports, and UDP flows.
    @Test func drainingARealServerBreaksNothing() throws {
        let output = try EndToEnd.run("", script: "drain.sh")
        for line in ["long connections: 6 intact, 2 to r1", "short connections after weight 0: r1=0 ",
                     "connect times: max under 900 ms", "udp: the r1 flow moved within 1 datagram",
                     "reloads applied: 2"] {
            #expect(output.contains(line))
        }
    }

    /// Live operations through the control socket (`Tests/e2e/control.sh`): list --stats against the real
    /// servers' own counters, weight 0 under a download, service add/delete with its rules, reload of a broken
    /// file, save, and non-root callers.
    @Test func operatingThroughTheControlSocket() throws {
        let output = try EndToEnd.run("", script: "control.sh")
        for line in ["stats match: r1 conns=4 r2 conns=4 r3 conns=4", "quiesce: download intact, 10 new connections avoided r",
                     "service add/delete: reachable, then gone with its rules", "reload: broken file refused, good file applied",
                     "access: non-root refused", "metrics match: 12 connections, per real server as listed"] {
            #expect(output.contains(line))
        }
    }

    /// Health checks (`Tests/e2e/health.sh`): an HTTP server stopped and started under a client making a
    /// connection every 100 ms, the sorry server while all are down, notify in order, udp and exec probes.
    @Test func healthChecksTakeFailedServersOutAndBringThemBack() throws {
        let output = try EndToEnd.run("", script: "health.sh")
        for line in ["detection: r2 down after", "recovery: r2 up after", "sorry: answered while all down",
                     "notify: in order", "udp: r3 down after", "exec: r1 down after", "quiesce: download intact"] {
            #expect(output.contains(line))
        }
    }

    /// Three DR balancers behind an FRR router (BGP, BFD, ECMP), each with BIRD and nfqlb (`Tests/e2e/cluster.sh`):
    /// 300 long connections while one balancer's nfqlb is killed and another's link goes down, and both come back,
    /// and a third stops with SIGTERM; in DR and in TUN.
    @Test(arguments: ["dr", "tun"])
    func clusterKeepsConnectionsAcrossBalancerFailures(mode: String) throws {
        let output = try EndToEnd.run(mode, script: "cluster.sh", checksums: false)
        for line in ["ecmp: 3 next hops", "table: same digest on 3 balancers", "process: broken 0 of 300",
                     "link: broken 0 of 300", "stop: broken 0 of 300", "0 between the survivors", "0 between the others",
                     "operator: withdraw and announce followed by the router",
                     "ok: cluster: connections survive"] {
            #expect(output.contains(line))
        }
        // Detection: a killed nfqlb within 0.5 s (its live device goes, BIRD withdraws), a dead link too (BFD).
        for prefix in ["process: detection ", "link: detection "] {
            let line = output.split(separator: "\n").first { $0.hasPrefix(prefix) }
            let ms = line.flatMap { Int($0.dropFirst(prefix.count).split(separator: " ")[0]) }
            #expect(ms.map { $0 <= 500 } == true, "\(prefix): \(String(describing: line))")
        }
    }

    /// The same lab in FULLNAT: each balancer its own local address (announced over BGP, the others' with a
    /// longer AS path) and connection sync between them. Every phase reports the fraction of the 300 connections
    /// that survived; the issue's target is 99% (the script fails below it).
    @Test func clusterFullNATConnectionsSurviveThroughSync() throws {
        let output = try EndToEnd.run("fullnat", script: "cluster.sh", checksums: false)
        for line in ["ecmp: 3 next hops", "ok: cluster: connections survive", "cleanup: no rules left"] {
            #expect(output.contains(line))
        }
        for phase in ["process", "process back", "link", "link back", "stop"] {
            let prefix = "\(phase): survived "
            let line = output.split(separator: "\n").first { $0.hasPrefix(prefix) }
            let survived = line.flatMap { Int($0.dropFirst(prefix.count).split(separator: " ")[0]) }
            #expect(survived.map { $0 >= 297 } == true, "\(phase): \(String(describing: line))")
        }
        #expect(output.contains("process: sync b2: ") && output.contains("records-inserted="))
    }

    /// NAT active/backup (`Tests/e2e/failover.sh`): two balancers with connection sync and no BGP, the active
    /// holding the floating address (next hop and gateway); its nfqlb killed and the address moved, then back.
    @Test func natActiveBackupKeepsConnectionsThroughSync() throws {
        let output = try EndToEnd.run("", script: "failover.sh", checksums: false)
        for line in ["backup: 300 synced copies on b2", "backup again: 300 synced copies on b1",
                     "ok: failover: NAT connections survive"] {
            #expect(output.contains(line))
        }
        for phase in ["failover", "failback"] {
            let prefix = "\(phase): survived "
            let line = output.split(separator: "\n").first { $0.hasPrefix(prefix) }
            let survived = line.flatMap { Int($0.dropFirst(prefix.count).split(separator: " ")[0]) }
            #expect(survived.map { $0 >= 297 } == true, "\(phase): \(String(describing: line))")
        }
    }

    /// A SYN flood from spoofed sources (65,536-connection table, `syn-queue`) beside a working client, then 30 s
    /// of malformed packets beside it (`Tests/e2e/flood.sh`).
    @Test func floodsAndMalformedPacketsLeaveTheBalancerServing() throws {
        let output = try EndToEnd.run("all", script: "flood.sh", checksums: false)
        for line in ["ok: flood: nfqlb up, 5 long connections intact, new connections succeed again within 2 s",
                     "failures from 2 s after: 0", "ok: every packet counted once; nfqlb stopped cleanly"] {
            #expect(output.contains(line))
        }
    }

    /// One lab, nfqlb stopped and restarted with another config (setup `up` again: idempotent).
    @Test func restartWithANewConfiguration() throws {
        let output = try EndToEnd.run("all")
        for line in ["distribution rr r1=20 r2=20 r3=20", "download 5242880 bytes sha256 match",
                     "upload 3145728 bytes identical", "distribution udp r1=10 r2=10 r3=10",
                     "distribution wrr r1=10 r2=20 r3=30"] {
            #expect(output.contains(line))
        }
    }
}

/// DR and TUN: real servers prepared by `nfqlb real-server setup`, replies straight back to the client
/// through a router (`Tests/e2e/direct-return.sh`).
@Suite(.serialized, .enabled(if: EndToEnd.canRun, "needs root to create network namespaces"))
struct DirectReturnEndToEndTests {
    static let common = ["download 5242880 bytes identical", "upload 3145728 bytes identical",
                         "distribution udp r1=10 r2=10 r3=10", "direct return: balancer handled no reply"]

    /// DR: marked packets steered to the real server's MAC by policy routing.
    @Test func directRoutingBalancesAndRepliesBypassTheBalancer() throws {
        let output = try EndToEnd.run("dr", script: "direct-return.sh", environment: ["RESTART": "1"])
        for line in ["distribution dr r1=10 r2=10 r3=10", "copy range: 160 bytes", "gso super-packets: ",
                     "ok: restart: the upload and the UDP flow went on through a restart of nfqlb"] + Self.common {
            #expect(output.contains(line))
        }
    }

    /// DR with the conntrack fast path: the kernel keeps each connection's mark; nfqlb sees its first packets,
    /// counts the connections from the kernel's events, keeps them across a restart, ends them after a drain.
    @Test(arguments: [false, true])
    func directRoutingOffloadedToConntrack(ipv6: Bool) throws {
        let output = try EndToEnd.run("dr", script: "direct-return.sh", ipv6: ipv6, environment: ["OFFLOAD": "1"])
        // One packet per connection reaches nfqlb: the SYN (nfqlb creates the kernel's connection with its
        // verdict), the first datagram of each UDP flow.
        for line in ["distribution dr r1=10 r2=10 r3=10", "offloaded first packets so far: 62 of 62 queued"]
                    + Self.common + EndToEnd.offloadChecks(62) {
            #expect(output.contains(line))
        }
    }

    /// TUN: IPIP to the real servers, `nfqlb decap` there; the 3 MiB upload with DF over a 1500-byte path
    /// completes through the ICMP "fragmentation needed" answers.
    @Test func tunnelBalancesDecapsulatesAndHandlesThePathMTU() throws {
        let output = try EndToEnd.run("tun", script: "direct-return.sh", environment: ["RESTART": "1"])
        for line in ["distribution tun r1=10 r2=10 r3=10", "tunnel too big answered:",
                     "ok: restart: the upload and the UDP flow went on through a restart of nfqlb",
                     "decapsulated on every real server, none dropped"] + Self.common {
            #expect(output.contains(line))
        }
    }
}

/// IPv6 in every mode: the same scripts with the lab's IPv6 addresses (`LAB_FAMILY=6`): VIP 2001:db8:f::10,
/// real servers 2001:db8:5::1X.
@Suite(.serialized, .enabled(if: EndToEnd.canRun, "needs root to create network namespaces"))
struct IPv6EndToEndTests {
    @Test func natOverIPv6() throws {
        let output = try EndToEnd.run("all", ipv6: true)
        for line in ["distribution rr r1=20 r2=20 r3=20", "download 5242880 bytes sha256 match",
                     "upload 3145728 bytes identical", "distribution udp r1=10 r2=10 r3=10",
                     "distribution wrr r1=10 r2=20 r3=30", EndToEnd.icmpTranslated] {
            #expect(output.contains(line))
        }
    }

    @Test func fullNATOverIPv6() throws {
        let output = try EndToEnd.run("fullnat", ipv6: true)
        for line in ["distribution rr r1=20 r2=20 r3=20", "download 5242880 bytes sha256 match",
                     "upload 3145728 bytes identical", "distribution udp r1=10 r2=10 r3=10",
                     "fullnat peer: 2001:db8:5::1", EndToEnd.icmpTranslated] {
            #expect(output.contains(line))
        }
    }

    @Test func directRoutingOverIPv6() throws {
        let output = try EndToEnd.run("dr", script: "direct-return.sh", ipv6: true)
        for line in ["distribution dr r1=10 r2=10 r3=10", "copy range: 160 bytes"] + DirectReturnEndToEndTests.common {
            #expect(output.contains(line))
        }
    }

    /// IPv6-in-IPv6; the upload's full-size segments take the ICMPv6 "packet too big" path.
    @Test func tunnelOverIPv6() throws {
        let output = try EndToEnd.run("tun", script: "direct-return.sh", ipv6: true)
        for line in ["distribution tun r1=10 r2=10 r3=10", "tunnel too big answered:",
                     "decapsulated on every real server, none dropped"] + DirectReturnEndToEndTests.common {
            #expect(output.contains(line))
        }
    }
}

/// TUN between families, as IPVS allows: real servers addressed in the other family than the VIP.
@Suite(.serialized, .enabled(if: EndToEnd.canRun, "needs root to create network namespaces"))
struct CrossFamilyTunnelEndToEndTests {
    @Test(arguments: [false, true])
    func tunnelBetweenFamilies(ipv6VIP: Bool) throws {
        let output = try EndToEnd.run("tun", script: "direct-return.sh", ipv6: ipv6VIP, crossFamily: true)
        for line in ["distribution tun r1=10 r2=10 r3=10", "tunnel too big answered:",
                     "decapsulated on every real server, none dropped"] + DirectReturnEndToEndTests.common {
            #expect(output.contains(line))
        }
    }
}

enum EndToEnd {
    /// nat.sh's line when a real server's ICMP "port unreachable" reached the client as if from the VIP.
    static let icmpTranslated = "icmp: port unreachable reached the client from the VIP"
    /// lib.sh's lines when the conntrack fast path's checks passed, for `connections` made before them.
    static func offloadChecks(_ connections: Int) -> [String] {
        ["ok: offload: counts follow the kernel's connections (\(connections) new)",
         "ok: offload: a restart of nfqlb keeps offloaded connections",
         "ok: offload: the drain's end deleted the removed real server's kernel connections",
         "cleanup: no kernel connection of nfqlb's left"]
    }
    static var canRun: Bool { getuid() == 0 || ProcessInfo.processInfo.environment["CI"] != nil }

    static let packageRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .deletingLastPathComponent().deletingLastPathComponent()

    /// Runs `Tests/e2e/SCRIPT SCENARIO` (with IPv6 addresses when `ipv6`); fails the test with the script's
    /// output when it exits non-zero.
    /// `environment` adds to the script's environment (MODE, OFFLOAD).
    /// `checksums`: whether the hosts' checksum counters must stay at 0 (not under a flood of crafted packets).
    static func run(_ scenario: String, script: String = "nat.sh", ipv6: Bool = false, crossFamily: Bool = false,
                    environment extra: [String: String] = [:], checksums: Bool = true) throws -> String {
        let binary = ProcessInfo.processInfo.environment["NFQLB"]
            ?? packageRoot.appendingPathComponent(".build/debug/nfqlb").path
        guard FileManager.default.isExecutableFile(atPath: binary) else {
            Issue.record("nfqlb binary not found at \(binary): run `swift build` first (scripts/test.sh does)")
            return ""
        }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/bin/bash")
        process.arguments = [packageRoot.appendingPathComponent("Tests/e2e/\(script)").path, scenario]
        var environment = ProcessInfo.processInfo.environment
        environment["NFQLB"] = binary
        environment["LAB_FAMILY"] = ipv6 ? "6" : "4"
        environment["LAB_CROSS"] = crossFamily ? "1" : "0"
        environment.merge(extra) { _, given in given }
        process.environment = environment
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = pipe
        try process.run()
        let output = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        print(output)
        #expect(process.terminationStatus == 0, "\(script) \(scenario) failed:\n\(output)")
        if checksums {
            #expect(output.contains("checksum errors: client +0 r1 +0 r2 +0 r3 +0"), "checksum counters moved")
        }
        #expect(output.contains("cleanup: no rules left"))
        return output
    }
}
