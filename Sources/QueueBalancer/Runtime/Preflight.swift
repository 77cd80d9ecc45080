import Foundation

/// The checks `nfqlb run` makes before it binds a queue, each failing with the one line that tells the
/// operator what to do.
public enum Preflight {
    public struct Failure: Error, CustomStringConvertible {
        public var description: String
    }

    /// FULLNAT's ports must stay outside the kernel's ephemeral ports (`net.ipv4.ip_local_port_range`).
    public static func checkFullNATPorts(_ config: BalancerConfig,
                                         rangeFile: String = "/proc/sys/net/ipv4/ip_local_port_range") throws(Failure) {
        guard let text = try? String(contentsOfFile: rangeFile, encoding: .utf8) else { return }
        let bounds = text.split(whereSeparator: { $0 == " " || $0 == "\t" || $0 == "\n" }).compactMap { UInt16($0) }
        guard bounds.count == 2, bounds[0] <= bounds[1] else { return }
        if let conflict = config.fullnatPortConflict(kernelRange: bounds[0]...bounds[1]) {
            throw Failure(description: conflict)
        }
    }

    /// The jump to nfqlb's chain must be installed in this network namespace, for every family the config
    /// serves (`configPath` names the file in the advice).
    public static func checkRulesInstalled(_ config: BalancerConfig, configPath: String) throws(Failure) {
        let families: [IPFamily] = config.services.contains { !$0.vip.isIPv4 } ? [.v4, .v6] : [.v4]
        let installed = families.map { IptablesRules.installed(family: $0) }
        if installed.contains(nil) {
            throw Failure(description: "cannot check the iptables rules (is iptables installed, and are you root?); pass --skip-rules-check to start anyway")
        }
        if installed.contains(false) {
            throw Failure(description: "the iptables rules are not installed in this network namespace: run scripts/iptables-setup.sh up \(configPath) first (or pass --skip-rules-check)")
        }
    }
}
