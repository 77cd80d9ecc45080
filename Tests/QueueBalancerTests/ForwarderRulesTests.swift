import Testing
@testable import QueueBalancer

/// What each mode adds to the rules beside client -> VIP, read off one config with a service of each mode:
/// NAT queues its real servers' answers and errors, FULLNAT the answers and errors to its local addresses
/// and drops spoofed sources, DR and TUN queue nothing else (their real servers answer clients directly),
/// and only DR has policy routes.
@Suite struct ForwarderRulesTests {
    static let config: BalancerConfig = {
        let real = RealServer(address: ip("198.51.100.11"), port: 80)
        func service(_ port: UInt16, _ mode: ForwardingMode) -> VirtualService {
            VirtualService(vip: ip("203.0.113.10"), port: port, transport: .tcp, mode: mode, scheduler: .rr, reals: [real],
                           localAddresses: mode == .fullnat ? [ip("198.51.100.1")] : [])
        }
        return BalancerConfig(queues: [0], services: [service(80, .nat), service(81, .fullnat), service(82, .dr),
                                                      service(83, .tun)])
    }()

    func lines(_ mode: ForwardingMode) -> [String] {
        IptablesRules.restoreInput(for: Self.config).split(separator: "\n").map(String.init)
            .filter { $0.contains("--comment \"nfqlb \(mode) ") && !$0.contains("client to VIP") }
    }

    @Test func eachModeBringsItsOwnRules() {
        #expect(lines(.nat).count == 2 && lines(.nat).allSatisfy { $0.contains("-s 198.51.100.11/32 -p tcp -m tcp --sport 80 ") })
        #expect(lines(.fullnat).first?.contains("! -i lo -s 203.0.113.10/32 -m mark ! --mark 0x1000000/0x1000000") == true)
        #expect(lines(.fullnat).contains { $0.contains("-s 198.51.100.11/32 -d 198.51.100.1/32 -p tcp -m tcp --sport 80 --dport 61000:65535") })
        #expect(lines(.dr).isEmpty && lines(.tun).isEmpty)
        let rules = IptablesRules.restoreInput(for: Self.config)
        #expect(rules.contains("-s 198.51.100.11/32 -p icmp -m icmp --icmp-type 3 -m comment --comment \"nfqlb: ICMP errors from real server 198.51.100.11\""))
        #expect(rules.contains("-d 198.51.100.1/32 -p icmp -m icmp --icmp-type 11 -m comment --comment \"nfqlb: ICMP errors to local address 198.51.100.1\""))
        #expect(IptablesRules.routeCommands(for: Self.config) == "rule add fwmark 0x1000 table 4096 pref 100\nroute replace default via 198.51.100.11 table 4096\n")
    }

    /// DR alone reads headers only; every mode but TUN takes GSO super-packets, so a config with a TUN service
    /// binds its queues without GSO.
    @Test func queueNeedsFollowTheModes() {
        for mode in ForwardingMode.allCases {
            #expect(mode.method.queueNeeds.wholePackets == (mode != .dr), "\(mode)")
            #expect(mode.method.queueNeeds.gsoSuperPackets == (mode != .tun), "\(mode)")
        }
        #expect(QueueNeeds(for: Self.config) == QueueNeeds(wholePackets: true, gsoSuperPackets: false))
        var withoutTUN = Self.config
        withoutTUN.services.removeLast()
        #expect(QueueNeeds(for: withoutTUN) == QueueNeeds(wholePackets: true, gsoSuperPackets: true))
        let drOnly = PacketHandler(config: BalancerConfig(queues: [0], services: [withoutTUN.services[2]]),
                                   tracker: ConnectionTracker())
        #expect(drOnly.copyRange == PacketHandler.headerCopyRange && drOnly.queueFlags == .gso)
        // Queues bound with GSO cannot take a TUN service without a restart.
        let handler = PacketHandler(config: withoutTUN, tracker: ConnectionTracker(config: withoutTUN))
        #expect(handler.copyRange == QueueSocket.wholePackets && handler.queueFlags == .gso)
        #expect(throws: ConfigUpdateError(reason: "the queues deliver GSO super-packets, which a tun service cannot take: restart")) {
            try handler.update(to: Self.config)
        }
    }
}
