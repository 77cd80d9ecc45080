import Glibc

/// The iptables rules a configuration needs, as `iptables-restore --noflush` input.
///
/// Everything lives in dedicated chains (``chain``) reached by one jump from the built-in chain, so the
/// setup script can install, replace and remove nfqlb's rules without touching anyone else's. Both directions
/// are queued in the raw table's PREROUTING (priority -300): before routing (the rewritten destination is
/// then routed) and before conntrack, with `CT --notrack` so conntrack does not fill with half-seen tuples
/// that the handler rewrites (docs/ARCHITECTURE.md, "Kernel facts"). What each mode needs besides the
/// client -> VIP rule comes from its forwarder (``ForwardingMethod``).
public enum IptablesRules {
    /// The chain in the raw table holding nfqlb's rules.
    public static let chain = "NFQLB-PREROUTING"

    /// `ADDRESS/32` or `ADDRESS/128`: one host, as iptables matches it.
    static func host(_ address: IPAddress) -> String {
        address.isIPv4 ? "\(address)/32" : "\(address)/128"
    }

    /// The `iptables-restore --noflush` input for the IPv4 services of `config`, or with `family` `.v6` the
    /// `ip6tables-restore --noflush` input for its IPv6 services (empty when it has none: IPv4 always gets its
    /// chain, so that `run` can check the jump).
    ///
    /// Services with `offload: conntrack` are queued in the mangle table instead (``ConntrackOffload``), after
    /// conntrack, and the nat table gets their DNAT and SNAT rules: those sections come only with such services.
    public static func restoreInput(for config: BalancerConfig, family: IPFamily = .v4, source: String? = nil) -> String {
        let all = config.services.filter { IPFamily(of: $0.vip) == family }
        if family == .v6 && all.isEmpty { return "" }
        // The Swift path's services: queued here, untracked. Offloaded ones need conntrack.
        let services = all.filter { $0.offload == .none }
        let offloaded = all.filter { $0.offload == .conntrack }
        let marks = ConntrackOffload.marks(for: config)
        let offloadRules = offloaded.flatMap { $0.mode.method.offloadRules(for: $0, marks: marks, config: config) }
        let tool = family == .v4 ? "iptables-restore" : "ip6tables-restore"
        var lines: [String] = []
        lines.append("# nfqlb \(family) rules" + (source.map { " for \($0)" } ?? "") + ": apply with \(tool) --noflush")
        lines.append("*raw")
        lines.append(":\(chain) - [0:0]")
        let target = queueTarget(config.queues)
        var seen = Set<String>()
        func add(_ rule: QueueRule) {
            guard seen.insert(rule.match).inserted else { return }
            lines.append("-A \(chain) \(rule.match) -m comment --comment \"\(rule.comment)\" -j CT --notrack")
            lines.append("-A \(chain) \(rule.match) -m comment --comment \"\(rule.comment)\" -j \(target)")
        }
        // Sources nfqlb writes into packets (which accept_local=1 lets the kernel accept) are spoofed when they
        // arrive from outside: dropped before queueing, unless nfqlb itself marked the packet.
        var spoofable: [(address: IPAddress, mode: ForwardingMode)] = []
        for service in services {
            for address in service.mode.method.spoofableSources(for: service) where !spoofable.contains(where: { $0.address == address }) {
                spoofable.append((address, service.mode))
            }
        }
        let mark = Fwmark.translated
        for (address, mode) in spoofable {
            lines.append("-A \(chain) ! -i lo -s \(host(address)) -m mark ! --mark \(mark)/\(mark) -m comment --comment \"nfqlb \(mode) anti-spoof\" -j DROP")
        }
        for service in services {
            let proto = service.transport.description
            if let synQueue = config.synQueue, service.transport == .tcp {
                // First: a connection's opening SYN to its own queue (a rule that ends in NFQUEUE ends the chain).
                let match = "-d \(host(service.vip)) -p tcp -m tcp --dport \(service.port) --tcp-flags SYN,ACK,RST,FIN SYN"
                let comment = "nfqlb \(service.mode) \(service): new connections to the SYN queue"
                if seen.insert(match).inserted {
                    lines.append("-A \(chain) \(match) -m comment --comment \"\(comment)\" -j CT --notrack")
                    lines.append("-A \(chain) \(match) -m comment --comment \"\(comment)\" -j \(queueTarget([synQueue]))")
                }
            }
            add(QueueRule(match: "-d \(host(service.vip)) -p \(proto) -m \(proto) --dport \(service.port)",
                          comment: "nfqlb \(service.mode) \(service): client to VIP"))
            service.mode.method.replyRules(for: service, config: config).forEach(add)
        }
        // ICMP errors about the connections (IPVS forwards them in both directions): from the client side to a
        // VIP, and from where each mode's real servers report from.
        let icmp = family == .v4 ? "-p icmp -m icmp --icmp-type" : "-p ipv6-icmp -m icmp6 --icmpv6-type"
        let errorTypes = ICMPHeader.errorTypes(family)
        for service in services {
            for type in errorTypes {
                add(QueueRule(match: "-d \(host(service.vip)) \(icmp) \(type)",
                              comment: "nfqlb: ICMP errors about \(service.vip)'s connections"))
            }
            let sources = service.mode.method.errorSources(for: service)
            for type in errorTypes {
                for source in sources {
                    add(QueueRule(match: "\(source.match) \(icmp) \(type)", comment: source.comment))
                }
            }
        }
        lines += offloadRules.filter { $0.chain == .raw }.map { "-A \(chain) \($0.rule)" }
        lines.append("-I PREROUTING 1 -j \(chain)")
        lines.append("COMMIT")
        if !offloaded.isEmpty {
            lines.append("*mangle")
            lines.append(":\(ConntrackOffload.chain) - [0:0]")
            lines += offloaded.flatMap { ConntrackOffload.mangleRules(for: $0, queueTarget: target) }
            lines.append("-I PREROUTING 1 -j \(ConntrackOffload.chain)")
            lines.append("COMMIT")
        }
        let natRules = offloadRules.filter { $0.chain != .raw }
        if !natRules.isEmpty {
            lines.append("*nat")
            lines += [ChainRule.Chain.destinationNAT, .sourceNAT].map { ":\($0.rawValue) - [0:0]" }
            lines += natRules.map { "-A \($0.chain.rawValue) \($0.rule)" }
            lines.append("-I PREROUTING 1 -j \(ChainRule.Chain.destinationNAT.rawValue)")
            lines.append("-I POSTROUTING 1 -j \(ChainRule.Chain.sourceNAT.rawValue)")
            lines.append("COMMIT")
        }
        return lines.joined(separator: "\n") + "\n"
    }

    /// The policy routing the DR real servers of one family need, as `ip -4 -batch` (or `ip -6 -batch`) input
    /// (``DirectRoutingForwarder/routeCommands(for:family:)``).
    public static func routeCommands(for config: BalancerConfig, family: IPFamily = .v4) -> String {
        DirectRoutingForwarder.routeCommands(for: config, family: family)
    }

    /// Every rule and route `config` needs, both families, one line each (comments left out): what a reload
    /// compares to tell whether rules must be installed.
    static func lines(for config: BalancerConfig) -> Set<String> {
        Set([IPFamily.v4, .v6].flatMap { family in
            (restoreInput(for: config, family: family) + routeCommands(for: config, family: family))
                .split(separator: "\n").filter { !$0.hasPrefix("#") }.map { "\(family) \($0)" }
        })
    }

    /// `--queue-num N` for one queue, `--queue-balance A:B` for several (consecutive, checked by the config).
    static func queueTarget(_ queues: [UInt16]) -> String {
        let sorted = queues.sorted()
        if sorted.count == 1 { return "NFQUEUE --queue-num \(sorted[0])" }
        return "NFQUEUE --queue-balance \(sorted.first!):\(sorted.last!)"
    }

    /// Whether the jump to ``chain`` is installed in this network namespace (from `iptables -t raw -S
    /// PREROUTING`, or `ip6tables` for `.v6`). Nil when iptables cannot be run.
    public static func installed(family: IPFamily = .v4) -> Bool? {
        guard let (status, text) = runCapturingOutput([family == .v4 ? "iptables" : "ip6tables", "-w", "-t", "raw",
                                                       "-S", "PREROUTING"]),
              status == 0 else { return nil }
        return text.split(separator: "\n").contains { $0 == "-A PREROUTING -j \(chain)" }
    }
}

/// One queueing rule: an iptables match and the comment that says why nfqlb queues it.
struct QueueRule: Sendable {
    var match: String
    var comment: String

    /// The answers of `real` behind `service` (`-s RIP --sport rport`); under FULLNAT those addressed to the
    /// local address `local` and its ports.
    static func reply(of service: VirtualService, from real: RealServer,
                      to local: (address: IPAddress, ports: ClosedRange<UInt16>)? = nil) -> QueueRule {
        let proto = service.transport.description
        let destination = local.map { " -d \(IptablesRules.host($0.address))" } ?? ""
        let ports = local.map { " --dport \($0.ports.lowerBound):\($0.ports.upperBound)" } ?? ""
        return QueueRule(match: "-s \(IptablesRules.host(real.address))\(destination) -p \(proto) -m \(proto) --sport \(real.port)\(ports)",
                         comment: "nfqlb \(service.mode) \(service): reply from \(real.endpoint)" + (local.map { " to \($0.address)" } ?? ""))
    }
}
