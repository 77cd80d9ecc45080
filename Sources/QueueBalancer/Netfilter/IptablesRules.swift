import Glibc

/// The iptables rules a configuration needs, as `iptables-restore --noflush` input.
///
/// Everything lives in dedicated chains (``chain``) reached by one jump from the built-in chain, so the
/// setup script can install, replace and remove nfqlb's rules without touching anyone else's.
/// Per DESIGN.md, both directions are queued in the raw table's PREROUTING (priority -300): before routing
/// (the rewritten destination is then routed) and before conntrack, with `CT --notrack` so conntrack does not
/// fill with half-seen tuples that the handler rewrites.
public enum IptablesRules {
    /// The chain in the raw table holding nfqlb's rules.
    public static let chain = "NFQLB-PREROUTING"

    /// The fwmark bit on packets nfqlb rewrote or replaced (NAT, FULLNAT, TUN's ICMP answers, decapsulation). With bridge netfilter (a bridge on the
    /// balancer and `net.bridge.bridge-nf-call-iptables=1`, the kernel default), a queued packet passes
    /// PREROUTING twice: once at the bridge port, where it is queued and rewritten, and again at the bridge
    /// device with its new headers. The anti-spoof rules skip marked packets so that they do not drop the
    /// second pass of a translated packet (measured: FULLNAT downloads fell to 4 Mbit/s without this).
    public static let translatedMark: UInt32 = 0x0100_0000

    /// The `iptables-restore --noflush` input for the IPv4 services of `config`, or with `family` `.v6` the
    /// `ip6tables-restore --noflush` input for its IPv6 services (empty when it has none: IPv4 always gets its
    /// chain, so that `run` can check the jump).
    public static func restoreInput(for config: BalancerConfig, family: IPFamily = .v4, source: String? = nil) -> String {
        let services = config.services.filter { $0.vip.isIPv4 == (family == .v4) }
        if family == .v6 && services.isEmpty { return "" }
        let tool = family == .v4 ? "iptables-restore" : "ip6tables-restore"
        let host = family == .v4 ? "/32" : "/128"
        var lines: [String] = []
        lines.append("# nfqlb \(family) rules" + (source.map { " for \($0)" } ?? "") + ": apply with \(tool) --noflush")
        lines.append("*raw")
        lines.append(":\(chain) - [0:0]")
        let target = queueTarget(config.queues)
        var seen = Set<String>()
        func add(_ match: String, _ comment: String) {
            guard seen.insert(match).inserted else { return }
            lines.append("-A \(chain) \(match) -m comment --comment \"\(comment)\" -j CT --notrack")
            lines.append("-A \(chain) \(match) -m comment --comment \"\(comment)\" -j \(target)")
        }
        // FULLNAT rewrites sources to the VIP and the local addresses, which accept_local=1 lets the kernel
        // accept: so packets arriving from outside with those sources are spoofed, and dropped before queueing.
        var spoofable: [IPAddress] = []
        for service in services where service.mode == .fullnat {
            for address in [service.vip] + service.localAddresses where !spoofable.contains(address) {
                spoofable.append(address)
            }
        }
        for address in spoofable {
            let mark = "0x\(String(translatedMark, radix: 16))"
            lines.append("-A \(chain) ! -i lo -s \(address)\(host) -m mark ! --mark \(mark)/\(mark) -m comment --comment \"nfqlb fullnat anti-spoof\" -j DROP")
        }
        let ports = "\(config.fullnatPorts.lowerBound):\(config.fullnatPorts.upperBound)"
        for service in services {
            let proto = service.transport.description
            add("-d \(service.vip)\(host) -p \(proto) -m \(proto) --dport \(service.port)",
                "nfqlb \(service.mode) \(service): client to VIP")
            switch service.mode {
            case .nat:
                for real in service.reals {
                    add("-s \(real.address)\(host) -p \(proto) -m \(proto) --sport \(real.port)",
                        "nfqlb \(service.mode) \(service): reply from \(real.endpoint)")
                }
            case .fullnat:
                for local in service.localAddresses {
                    for real in service.reals {
                        add("-s \(real.address)\(host) -d \(local)\(host) -p \(proto) -m \(proto) --sport \(real.port) --dport \(ports)",
                            "nfqlb \(service.mode) \(service): reply from \(real.endpoint) to \(local)")
                    }
                }
            case .dr, .tun:
                break   // replies go straight to the client
            }
        }
        // ICMP errors about the connections (IPVS forwards them in both directions): from the client side to a
        // VIP, and from the real servers (NAT) or to the local addresses (FULLNAT).
        let icmp = family == .v4 ? "-p icmp -m icmp --icmp-type" : "-p ipv6-icmp -m icmp6 --icmpv6-type"
        let errorTypes = family == .v4 ? [3, 11, 12] : [1, 2, 3, 4]
        for service in services {
            for type in errorTypes {
                add("-d \(service.vip)\(host) \(icmp) \(type)", "nfqlb: ICMP errors about \(service.vip)'s connections")
            }
            for type in errorTypes {
                switch service.mode {
                case .nat:
                    for real in service.reals {
                        add("-s \(real.address)\(host) \(icmp) \(type)", "nfqlb: ICMP errors from real server \(real.address)")
                    }
                case .fullnat:
                    for local in service.localAddresses {
                        add("-d \(local)\(host) \(icmp) \(type)", "nfqlb: ICMP errors to local address \(local)")
                    }
                case .dr, .tun:
                    break
                }
            }
        }
        lines.append("-I PREROUTING 1 -j \(chain)")
        lines.append("COMMIT")
        return lines.joined(separator: "\n") + "\n"
    }

    /// The policy routing of the DR real servers of one family, as `ip -4 -batch` (or `ip -6 -batch`) input:
    /// one fwmark rule and one table with a default route via the real server each. Empty when the config has
    /// no DR real server of that family.
    public static func routeCommands(for config: BalancerConfig, family: IPFamily = .v4) -> String {
        config.directRoutes.filter { $0.realServer.isIPv4 == (family == .v4) }.map { route in
            "rule add fwmark 0x\(String(route.mark, radix: 16)) table \(route.table) pref \(routeRulePreference)\n"
                + "route replace default via \(route.realServer) table \(route.table)\n"
        }.joined()
    }

    /// Preference of the fwmark rules: after `local` (0), before `main` (32766).
    public static let routeRulePreference = 100

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
