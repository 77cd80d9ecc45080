import ArgumentParser
import Foundation
import Logging
import QueueBalancer

struct Run: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run the balancer in the foreground until SIGINT or SIGTERM.",
        discussion: """
        Binds one NFQUEUE per configured queue (needs CAP_NET_ADMIN) and balances the \
        configured services. The iptables rules must be installed first \
        (scripts/iptables-setup.sh up FILE). On SIGINT/SIGTERM the queues are unbound, \
        the counters are logged, and the tracked connections are saved to the state \
        file, from which the next `nfqlb run` takes them back: a restart within their \
        timeouts keeps them (while nfqlb is down the kernel drops their packets, and \
        TCP retransmits).

        SIGHUP re-reads the config file and applies it without a restart: connections \
        to real servers that stay are untouched; a real server left out drains for its \
        service's `drain` seconds (weight 0 first for a gentle removal). A config that \
        fails to load, or changes what needs a restart (queues, sizes, timeouts, \
        fullnat-ports, the order of DR real servers), is refused with the reason in \
        the log and the running one is kept. A reload does not touch the iptables \
        rules: when the new config adds VIPs or NAT real servers, run \
        scripts/iptables-setup.sh up FILE first.

        The stats file, rewritten every second, holds one `name value` line per \
        counter, e.g.
          forwarded 1234
          dropped_no_connection 0
          kernel_user_dropped 0
        """
    )

    @OptionGroup var options: ConfigOptions

    @Option(help: ArgumentHelp("Write the counters to this file every second and on exit.", valueName: "path"))
    var statsFile: String?

    @Option(help: ArgumentHelp("""
        Where the tracked connections and persistence templates are saved on SIGTERM and taken back at \
        start, so a restart within their timeouts breaks none (default: /run/nfqlb/netns-INODE/state, \
        removed by iptables-setup.sh down).
        """, valueName: "path"))
    var stateFile: String?

    @Flag(help: "Neither save nor restore connections across a restart.")
    var noStateFile = false

    @Flag(help: "Start even when the NFQLB-PREROUTING jump is not installed.")
    var skipRulesCheck = false

    @Option(help: "Log level: trace, debug, info, notice, warning, error, critical.")
    var logLevel: Logger.Level = .info

    func run() throws {
        let config = try options.load()
        let level = logLevel
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
        let logger = Logger(label: "nfqlb")
        let tunnelPaths: [IPAddress: TunnelPath]
        do {
            try Preflight.checkFullNATPorts(config)
            if !skipRulesCheck { try Preflight.checkRulesInstalled(config, configPath: options.config) }
            tunnelPaths = try TunnelPath.paths(for: config)
        } catch {
            throw failure("\(error)")
        }
        installSignalHandlers()
        let balancer = Balancer(config: config, logger: logger, tunnelPaths: tunnelPaths,
                                stateFile: noStateFile ? nil : stateFile ?? BalancerState.defaultPath)
        let path = options.config
        let reloader = Thread {
            while !stopSignal.isRaised {
                Thread.sleep(forTimeInterval: 0.1)
                if hangupSignal.isRaised {
                    hangupSignal.clear()
                    balancer.reload(from: path)
                }
            }
        }
        reloader.start()
        do {
            try balancer.run(stop: stopSignal, statsFile: statsFile)
        } catch {
            throw failure("\(error)")
        }
    }
}
