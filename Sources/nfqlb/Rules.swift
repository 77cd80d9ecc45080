import ArgumentParser
import Foundation
import QueueBalancer

struct Rules: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Print the iptables-restore input a configuration needs.",
        discussion: """
        The rules live in the raw table's NFQLB-PREROUTING chain, reached by one jump \
        from PREROUTING. IPv4 services get iptables rules, IPv6 services ip6tables \
        rules (--family ipv6). DR services also need one fwmark rule and routing \
        table per real server (--routes). scripts/iptables-setup.sh applies all of \
        it, with the sysctls, and removes it again. To apply by hand:
          nfqlb rules --config lb.yaml | iptables-restore --noflush
          nfqlb rules --config lb.yaml --family ipv6 | ip6tables-restore --noflush
          nfqlb rules --config lb.yaml --routes | ip -4 -batch -
          nfqlb rules --config lb.yaml --routes --family ipv6 | ip -6 -batch -
        """
    )

    @OptionGroup var options: ConfigOptions

    @Flag(help: "Print the policy routing of DR real servers instead, as `ip -batch` input.")
    var routes = false

    @Option(help: "ipv4 (iptables, default) or ipv6 (ip6tables).")
    var family: RuleFamily = .ipv4

    enum RuleFamily: String, ExpressibleByArgument, CaseIterable {
        case ipv4, ipv6
        var ip: IPFamily { self == .ipv4 ? .v4 : .v6 }
        var other: RuleFamily { self == .ipv4 ? .ipv6 : .ipv4 }
    }

    func run() throws {
        let config = try options.load()
        let output = routes ? IptablesRules.routeCommands(for: config, family: family.ip)
                            : IptablesRules.restoreInput(for: config, family: family.ip, source: options.config)
        let other = routes ? IptablesRules.routeCommands(for: config, family: family.other.ip)
                           : IptablesRules.restoreInput(for: config, family: family.other.ip)
        let hasServices = config.services.contains { $0.vip.isIPv4 == (family == .ipv4) }
        if (routes ? output.isEmpty : !hasServices) && !other.isEmpty {
            // On stderr, so that the output stays valid input for the tool.
            let what = routes ? "DR real server" : "service"
            FileHandle.standardError.write(Data("""
                nfqlb: \(options.config) has no \(family) \(what); for its \(family.other) ones: \
                nfqlb rules --config \(options.config)\(routes ? " --routes" : "") --family \(family.other)

                """.utf8))
        }
        print(output, terminator: "")
    }
}
