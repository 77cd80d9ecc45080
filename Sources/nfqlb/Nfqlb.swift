import ArgumentParser
import Foundation
import Glibc
import Logging
import QueueBalancer

@main
struct Nfqlb: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "nfqlb",
        abstract: "A layer-4 load balancer in the spirit of LVS, with a Netfilter NFQUEUE datapath.",
        discussion: """
        iptables rules in the raw table's PREROUTING hand packets for VIP:port to an NFQUEUE; nfqlb schedules \
        each new connection onto a real server and rewrites the headers (LVS NAT mode).

        Typical use, as root:
          nfqlb check --config lb.yaml                 # validate
          scripts/iptables-setup.sh up lb.yaml         # install the rules nfqlb rules prints
          nfqlb run --config lb.yaml                   # balance until SIGINT/SIGTERM
          scripts/iptables-setup.sh down               # remove the rules
        """,
        subcommands: [Run.self, Check.self, Rules.self]
    )
}

/// Options shared by every command that reads a configuration.
struct ConfigOptions: ParsableArguments {
    @Option(name: .shortAndLong, help: ArgumentHelp("The YAML configuration file.", valueName: "file"))
    var config: String

    /// Loads the config, or exits with status 2 after printing `file:line: reason`.
    func load() throws -> BalancerConfig {
        do {
            return try ConfigLoader.load(path: config)
        } catch {
            FileHandle.standardError.write(Data("nfqlb: \(error)\n".utf8))
            throw ExitCode(2)
        }
    }
}

struct Check: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Validate a configuration and print a summary.",
        discussion: "Exits 0 when the file is valid, 2 with `file:line: reason` when it is not."
    )

    @OptionGroup var options: ConfigOptions

    func run() throws {
        let config = try options.load()
        print("\(options.config): ok, \(config.services.count) service(s) on queue(s) \(config.queues.map(String.init).joined(separator: ","))")
        for service in config.services {
            let reals = service.reals.map { "\($0.endpoint) w\($0.weight)" }.joined(separator: ", ")
            print("  \(service) \(service.mode) \(service.scheduler): \(reals)")
        }
    }
}

struct Rules: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Print the iptables-restore input a configuration needs.",
        discussion: """
        The rules live in the raw table's NFQLB-PREROUTING chain, reached by one jump from PREROUTING. \
        scripts/iptables-setup.sh applies them (with the sysctls) and removes them; to apply by hand:
          nfqlb rules --config lb.yaml | iptables-restore --noflush
        """
    )

    @OptionGroup var options: ConfigOptions

    func run() throws {
        let config = try options.load()
        print(IptablesRules.restoreInput(for: config, source: options.config), terminator: "")
    }
}

/// Raised by SIGINT/SIGTERM; read by the balancer's loops.
let stopSignal = StopSignal()

struct Run: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run the balancer in the foreground until SIGINT or SIGTERM.",
        discussion: """
        Binds one NFQUEUE per configured queue (needs CAP_NET_ADMIN) and balances the configured services. \
        The iptables rules must be installed first (scripts/iptables-setup.sh up FILE). On SIGINT/SIGTERM \
        the queues are unbound and the counters are logged.

        The stats file, rewritten every second, holds one `name value` line per counter, e.g.
          forwarded 1234
          dropped_no_connection 0
          kernel_user_dropped 0
        """
    )

    @OptionGroup var options: ConfigOptions

    @Option(help: ArgumentHelp("Write the counters to this file every second and on exit.", valueName: "path"))
    var statsFile: String?

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
        if !skipRulesCheck {
            switch IptablesRules.installed() {
            case true?: break
            case false?:
                fail("the iptables rules are not installed in this network namespace: run scripts/iptables-setup.sh up \(options.config) first (or pass --skip-rules-check)")
            case nil:
                fail("cannot check the iptables rules (is iptables installed, and are you root?); pass --skip-rules-check to start anyway")
            }
        }
        // A launcher may start us with signals blocked (Foundation.Process on Linux passes Dispatch's mask on):
        // unblock the ones that stop us before the worker threads inherit the mask.
        var stopSignals = sigset_t()
        sigemptyset(&stopSignals)
        sigaddset(&stopSignals, SIGINT)
        sigaddset(&stopSignals, SIGTERM)
        pthread_sigmask(SIG_UNBLOCK, &stopSignals, nil)
        signal(SIGINT) { _ in stopSignal.raise() }
        signal(SIGTERM) { _ in stopSignal.raise() }
        signal(SIGPIPE, SIG_IGN)
        let balancer = Balancer(config: config, logger: logger)
        do {
            try balancer.run(stop: stopSignal, statsFile: statsFile)
        } catch {
            fail("\(error)")
        }
    }

    private func fail(_ message: String) -> Never {
        FileHandle.standardError.write(Data("nfqlb: \(message)\n".utf8))
        Foundation.exit(1)
    }
}

extension Logger.Level: @retroactive ExpressibleByArgument {}
