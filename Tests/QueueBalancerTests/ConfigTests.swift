import Foundation
import Testing
@testable import QueueBalancer

@Suite struct ConfigTests {
    static let valid = """
    queues: [0, 1]
    timeouts: { tcp: 600, udp: 60 }
    services:
      - vip: 203.0.113.10
        port: 80
        protocol: tcp
        mode: nat
        scheduler: rr
        reals:
          - { address: 198.51.100.11, port: 8080, weight: 1 }
          - { address: 198.51.100.12, port: 8080, weight: 2 }
      - vip: 203.0.113.10
        port: 53
        protocol: udp
        mode: nat
        reals:
          - { address: 198.51.100.11 }
    """

    @Test func validConfigLoads() throws {
        let config = try ConfigLoader.parse(yaml: ConfigTests.valid)
        #expect(config.queues == [0, 1])
        #expect(config.services.count == 2)
        #expect(config.services[0].reals[1] == RealServer(address: IPAddress("198.51.100.12")!, port: 8080, weight: 2))
        #expect(config.services[1].scheduler == .wlc)
        #expect(config.services[1].reals[0].port == 53 && config.services[1].reals[0].weight == 1)
        #expect(config.timeouts.timeout(.established) == 600_000)
        #expect(config.timeouts.timeout(.udp) == 60_000)
        #expect(config.timeouts.timeout(.finWait) == 120_000)
    }

    /// `syn-queue`: TCP SYNs of the Swift path's services go first to their own queue, everything else to
    /// `queues`; the SYN queue is bound too, and may not be one of `queues`.
    @Test func synQueueTakesTheOpeningSYNs() throws {
        let config = try ConfigLoader.parse(yaml: "syn-queue: 2\n" + ConfigTests.valid)
        #expect(config.synQueue == 2 && config.allQueues == [0, 1, 2])
        let rules = IptablesRules.restoreInput(for: config).split(separator: "\n")
        let syn = rules.firstIndex { $0.contains("--dport 80 --tcp-flags SYN,ACK,RST,FIN SYN") && $0.hasSuffix("-j NFQUEUE --queue-num 2") }
        let rest = rules.firstIndex { $0.contains("-p tcp -m tcp --dport 80 -m comment") && $0.hasSuffix("-j NFQUEUE --queue-balance 0:1") }
        #expect(syn != nil && rest != nil && syn! < rest!, "the SYN rule comes first")
        #expect(!rules.contains { $0.contains("-p udp") && $0.contains("--queue-num 2") }, "UDP has no SYN")
        #expect(throws: ConfigError(file: "<config>", line: 1, reason: "syn-queue 1 must be a queue of its own, not one of queues")) {
            try ConfigLoader.parse(yaml: "syn-queue: 1\n" + ConfigTests.valid)
        }
        #expect(IptablesRules.restoreInput(for: try ConfigLoader.parse(yaml: ConfigTests.valid)).contains("--tcp-flags") == false)
    }

    /// One refused configuration: its name (shown by the test runner), the YAML, the line and the reason.
    struct Refusal: CustomTestStringConvertible, Sendable {
        var name: String
        var yaml: String
        var line: Int
        var reason: String
        init(_ name: String, _ yaml: String, _ line: Int, _ reason: String) {
            (self.name, self.yaml, self.line, self.reason) = (name, yaml, line, reason)
        }
        var testDescription: String { name }
    }

    static let errors: [Refusal] = [
        Refusal("unknown key", ConfigTests.valid.replacingOccurrences(of: "scheduler: rr", with: "schedular: rr"), 8, "unknown key 'schedular'"),
        Refusal("bad address", ConfigTests.valid.replacingOccurrences(of: "198.51.100.12", with: "198.51.100.300"), 11, "'198.51.100.300' is not an IPv4 or IPv6 address"),
        Refusal("duplicate service", ConfigTests.valid.replacingOccurrences(of: "port: 53", with: "port: 80").replacingOccurrences(of: "protocol: udp", with: "protocol: tcp"), 12, "duplicate service 203.0.113.10:80/tcp (first defined at line 4)"),
        Refusal("empty reals", ConfigTests.valid.replacingOccurrences(of: "    reals:\n      - { address: 198.51.100.11 }", with: "    reals: []"), 16, "has no real servers"),
        Refusal("port out of range", ConfigTests.valid.replacingOccurrences(of: "port: 8080, weight: 2", with: "port: 70000, weight: 2"), 11, "port 70000 is out of range 1..65535"),
        Refusal("weight out of range", ConfigTests.valid.replacingOccurrences(of: "weight: 2", with: "weight: 65536"), 11, "weight 65536 is out of range 0..65535"),
        Refusal("negative weight", ConfigTests.valid.replacingOccurrences(of: "weight: 2", with: "weight: -1"), 11, "weight -1 is out of range 0..65535"),
        Refusal("TUN real server on another port", ConfigTests.valid.replacingOccurrences(of: "mode: nat\n    scheduler", with: "mode: tun\n    scheduler"), 10, "a tun real server's port must equal the VIP port 80 (tun does not rewrite ports), not 8080"),
        Refusal("tunnel-source on a NAT service", ConfigTests.valid.replacingOccurrences(of: "mode: nat\n    scheduler", with: "mode: nat\n    tunnel-source: 192.0.2.1\n    scheduler"), 8, "tunnel-source belongs to tun services only"),
        Refusal("FULLNAT without local addresses", ConfigTests.valid.replacingOccurrences(of: "mode: nat\n    scheduler", with: "mode: fullnat\n    scheduler"), 4, "a fullnat service needs 'local-addresses'"),
        Refusal("local addresses on a NAT service", ConfigTests.valid.replacingOccurrences(of: "mode: nat\n    scheduler", with: "mode: nat\n    local-addresses: [198.51.100.1]\n    scheduler"), 8, "local-addresses belong to fullnat services only"),
        Refusal("scheduler flag of another scheduler", ConfigTests.valid.replacingOccurrences(of: "scheduler: rr", with: "scheduler: rr\n    scheduler-flags: [sh-port]"), 9, "scheduler flag 'sh-port' needs scheduler sh, not rr"),
        Refusal("mh table not prime", ConfigTests.valid.replacingOccurrences(of: "scheduler: rr", with: "scheduler: mh\n    mh-table-size: 65536"), 9, "mh-table-size 65536 must be a prime"),
        Refusal("bad fullnat-ports", "fullnat-ports: 70000-80000\n" + ConfigTests.valid, 1, "fullnat-ports '70000-80000' is not a range FIRST-LAST within 1024-65535"),
        Refusal("DR real server on another port", ConfigTests.valid.replacingOccurrences(of: "mode: nat\n    scheduler", with: "mode: dr\n    scheduler"), 10, "a dr real server's port must equal the VIP port 80 (dr does not rewrite ports), not 8080"),
        Refusal("unknown mode", ConfigTests.valid.replacingOccurrences(of: "mode: nat\n    scheduler", with: "mode: snat\n    scheduler"), 7, "mode 'snat' is not one of nat | fullnat | dr | tun"),
        Refusal("unknown scheduler", ConfigTests.valid.replacingOccurrences(of: "scheduler: rr", with: "scheduler: xyz"), 8, "scheduler 'xyz' is not one of rr | wrr | lc"),
        Refusal("bad protocol", ConfigTests.valid.replacingOccurrences(of: "protocol: udp", with: "protocol: sctp"), 14, "protocol 'sctp' is not one of tcp | udp"),
        Refusal("queues not consecutive", ConfigTests.valid.replacingOccurrences(of: "[0, 1]", with: "[0, 2]"), 1, "consecutive"),
        Refusal("missing vip", ConfigTests.valid.replacingOccurrences(of: "  - vip: 203.0.113.10\n    port: 53", with: "  - port: 53"), 12, "a service needs 'vip'"),
        Refusal("IPv6 VIP, IPv4 real server", ConfigTests.valid.replacingOccurrences(of: "- vip: 203.0.113.10\n    port: 80", with: "- vip: 2001:db8::10\n    port: 80"), 10, "is not of the same address family as vip 2001:db8::10"),
        Refusal("invalid YAML", "queues: [0\nservices: x", 2, "invalid YAML"),
        Refusal("duplicate real", ConfigTests.valid.replacingOccurrences(of: "198.51.100.12", with: "198.51.100.11"), 11, "real server 198.51.100.11:8080 is listed twice"),
    ]

    @Test(arguments: errors)
    func invalidConfigIsRefusedWithLineAndReason(_ refusal: Refusal) {
        let (name, yaml, line, reason) = (refusal.name, refusal.yaml, refusal.line, refusal.reason)
        do {
            _ = try ConfigLoader.parse(yaml: yaml, file: "lb.yaml")
            Issue.record("\(name): accepted")
        } catch {
            #expect(error.line == line, "\(name): \(error)")
            #expect(error.reason.contains(reason), "\(name): \(error)")
            #expect(error.description.hasPrefix("lb.yaml:\(line): "), "\(name)")
        }
    }

    /// Dual stack: one name for an IPv4 and an IPv6 service of every mode; a real server of the other family
    /// is accepted by TUN only, refused with the reason otherwise.
    @Test func dualStackServicesShareAName() throws {
        var yaml = "queues: [0]\nservices:\n"
        for mode in ForwardingMode.allCases {
            let port = mode == .dr || mode == .tun ? "" : ", port: 8080"
            let locals4 = mode == .fullnat ? ", local-addresses: [198.51.100.1]" : ""
            let locals6 = mode == .fullnat ? ", local-addresses: [\"2001:db8:5::1\"]" : ""
            let vport = 80 + ForwardingMode.allCases.firstIndex(of: mode)!
            yaml += """
              - { name: web, vip: 203.0.113.10, port: \(vport), protocol: tcp, mode: \(mode)\(locals4),
                  reals: [ { address: 198.51.100.11\(port) } ] }
              - { name: web, vip: "2001:db8:f::10", port: \(vport), protocol: tcp, mode: \(mode)\(locals6),
                  reals: [ { address: "2001:db8:5::11"\(port) } ] }

            """
        }
        let config = try ConfigLoader.parse(yaml: yaml, file: "dual.yaml")
        #expect(config.services.count == 8)
        #expect(config.services.filter { !$0.vip.isIPv4 }.count == 4)
        #expect(config.services.allSatisfy { $0.name == "web" })
        #expect(IptablesRules.restoreInput(for: config, family: .v6).contains("-d 2001:db8:f::10/128 -p tcp -m tcp --dport 83"))
        // TUN may carry one family in the other (IPVS does); the other modes may not.
        let mixed = "queues: [0]\nservices:\n  - { vip: 203.0.113.10, port: 80, protocol: tcp, mode: tun,\n      reals: [ { address: \"2001:db8:5::11\" }, { address: 198.51.100.11 } ] }\n"
        #expect(try ConfigLoader.parse(yaml: mixed, file: "mixed.yaml").services[0].reals.count == 2)
        let error = #expect(throws: ConfigError.self) {
            try ConfigLoader.parse(yaml: mixed.replacingOccurrences(of: "mode: tun", with: "mode: dr"), file: "mixed.yaml")
        }
        #expect(error?.description.hasPrefix("mixed.yaml:4: real server 2001:db8:5::11 is not of the same address family as vip 203.0.113.10 (dr cannot translate between families") == true)
    }

    @Test func schedulerFlagsAreRead() throws {
        let yaml = ConfigTests.valid.replacingOccurrences(of: "scheduler: rr", with: "scheduler: mh\n    scheduler-flags: [mh-fallback, mh-port]\n    mh-table-size: 251")
        let options = try ConfigLoader.parse(yaml: yaml).services[0].schedulerOptions
        #expect(options.mhFallback && options.mhPort && !options.shPort && options.mhTableSize == 251)
    }

    @Test func directRoutesNumberDistinctDRRealServers() throws {
        let yaml = """
        queues: [0]
        fwmark-base: 100
        services:
          - { vip: 203.0.113.10, port: 80, protocol: tcp, mode: dr, reals: [ { address: 198.51.100.11 }, { address: 198.51.100.12 } ] }
          - { vip: 203.0.113.10, port: 53, protocol: udp, mode: dr, reals: [ { address: 198.51.100.12 }, { address: 198.51.100.13 } ] }
          - { vip: 203.0.113.11, port: 80, protocol: tcp, mode: nat, reals: [ { address: 198.51.100.14 } ] }
        """
        let routes = try ConfigLoader.parse(yaml: yaml).directRoutes
        #expect(routes.map(\.realServer.description) == ["198.51.100.11", "198.51.100.12", "198.51.100.13"])
        #expect(routes.map(\.mark) == [100, 101, 102])
        #expect(routes.map(\.table) == [100, 101, 102])
    }

    @Test func addressParsing() {
        #expect(IPAddress("203.0.113.10")?.ipv4 == 0xCB00_710A)
        #expect(IPAddress("2001:db8::1")?.description == "2001:db8::1")
        #expect(IPAddress("::ffff:192.0.2.1")?.ipv4 == 0xC000_0201)
        #expect(IPAddress("2001:db8:0:0:1:0:0:1")?.description == "2001:db8::1:0:0:1")
        for bad in ["1.2.3", "1.2.3.4.5", "256.1.1.1", "01.2.3.4", "1::2::3", "2001:db8::g", "", "a.b.c.d"] {
            #expect(IPAddress(bad) == nil, "\(bad)")
        }
    }
}
