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
        subcommands: [Run.self, Check.self, Rules.self, RealServerCommand.self, Decap.self]
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
        IPv4 services get iptables rules, IPv6 services ip6tables rules (--family ipv6; nothing when there are \
        none). DR services also need one fwmark rule and routing table per real server (--routes). \
        scripts/iptables-setup.sh applies all of it (with the sysctls) and removes it; to apply by hand:
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
    }

    func run() throws {
        let config = try options.load()
        if routes {
            print(IptablesRules.routeCommands(for: config, family: family.ip), terminator: "")
        } else {
            print(IptablesRules.restoreInput(for: config, family: family.ip, source: options.config), terminator: "")
        }
    }
}

struct RealServerCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "real-server",
        abstract: "Prepare a real server for LVS DR or TUN (run on the real server, as root).",
        discussion: """
        In DR and TUN the packets reach the real server still addressed to the VIP, and the real server \
        answers the client directly from the VIP. So the VIP goes on the real server's lo, and the real server \
        must never answer ARP for it (arp_ignore=1, arp_announce=2): on the shared network only the balancer \
        owns the VIP. Both commands are idempotent; teardown undoes only what setup did.
          nfqlb real-server setup --vip 203.0.113.10 --mode dr
          nfqlb real-server teardown --vip 203.0.113.10
        For TUN, setup also queues IPIP (protocol 4) at mangle INPUT for `nfqlb decap`, which this kernel \
        needs because it has no ipip module (elsewhere: ip link set tunl0 up, with the VIP on lo).
        """,
        subcommands: [Setup.self, Teardown.self]
    )

    struct Setup: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Put the VIP on lo and set the ARP sysctls.")

        @Option(help: "The virtual IP address the balancer forwards to this server.")
        var vip: String

        @Option(help: "The forwarding mode: dr or tun.")
        var mode: RealServerSetup.Mode = .dr

        @Option(help: "TUN: the NFQUEUE that `nfqlb decap` serves.")
        var queue: UInt16 = 0

        func run() throws {
            guard let address = IPAddress(vip) else { throw ValidationError("'\(vip)' is not an IP address") }
            try RealServerCommand.report { () throws(RealServerSetup.Failure) in
                try RealServerSetup().setup(vip: address, mode: mode, decapQueue: queue)
            }
        }
    }

    struct Teardown: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Undo what setup did for this VIP.")

        @Option(help: "The virtual IP address given to setup.")
        var vip: String

        func run() throws {
            guard let address = IPAddress(vip) else { throw ValidationError("'\(vip)' is not an IP address") }
            try RealServerCommand.report { () throws(RealServerSetup.Failure) in try RealServerSetup().teardown(vip: address) }
        }
    }

    static func report(_ body: () throws(RealServerSetup.Failure) -> [String]) throws {
        do {
            let done = try body()
            print(done.isEmpty ? "nothing to change" : done.joined(separator: "\n"))
        } catch {
            FileHandle.standardError.write(Data("nfqlb: \(error)\n".utf8))
            throw ExitCode(1)
        }
    }
}

extension RealServerSetup.Mode: ExpressibleByArgument {}

/// Raised by SIGINT/SIGTERM; read by the balancer's loops.
let stopSignal = StopSignal()
/// Raised by SIGHUP; taken by the reload thread of `nfqlb run`.
let hangupSignal = StopSignal()

/// SIGINT and SIGTERM raise ``stopSignal``. A launcher may start us with signals blocked (Foundation.Process
/// on Linux passes Dispatch's mask on): unblock them before the worker threads inherit the mask.
func installStopHandlers() {
    _ = stopSignal   // initialise the globals before a handler can touch them (no swift_once in a signal handler)
    _ = hangupSignal
    var stopSignals = sigset_t()
    sigemptyset(&stopSignals)
    sigaddset(&stopSignals, SIGINT)
    sigaddset(&stopSignals, SIGTERM)
    sigaddset(&stopSignals, SIGHUP)
    pthread_sigmask(SIG_UNBLOCK, &stopSignals, nil)
    signal(SIGINT) { _ in stopSignal.raise() }
    signal(SIGTERM) { _ in stopSignal.raise() }
    signal(SIGHUP) { _ in hangupSignal.raise() }
    signal(SIGPIPE, SIG_IGN)
}

struct Run: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run the balancer in the foreground until SIGINT or SIGTERM.",
        discussion: """
        Binds one NFQUEUE per configured queue (needs CAP_NET_ADMIN) and balances the configured services. \
        The iptables rules must be installed first (scripts/iptables-setup.sh up FILE). On SIGINT/SIGTERM \
        the queues are unbound and the counters are logged.

        SIGHUP re-reads the config file and applies it without a restart: connections to real servers that \
        stay are untouched; a real server left out drains for its service's `drain` seconds (weight 0 first \
        for a gentle removal). A config that fails to load, or changes what needs a restart (queues, sizes, \
        timeouts, fullnat-ports, the order of DR real servers), is refused with the reason in the log and the \
        running one is kept. A reload does not touch the iptables rules: when the new config adds VIPs or NAT \
        real servers, run scripts/iptables-setup.sh up FILE first.

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
        if let text = try? String(contentsOfFile: "/proc/sys/net/ipv4/ip_local_port_range", encoding: .utf8) {
            let bounds = text.split(whereSeparator: { $0 == " " || $0 == "\t" || $0 == "\n" }).compactMap { UInt16($0) }
            if bounds.count == 2, bounds[0] <= bounds[1],
               let conflict = config.fullnatPortConflict(kernelRange: bounds[0]...bounds[1]) {
                fail(conflict)
            }
        }
        if !skipRulesCheck {
            let families: [IPFamily] = config.services.contains { !$0.vip.isIPv4 } ? [.v4, .v6] : [.v4]
            switch families.map({ IptablesRules.installed(family: $0) }).reduce(Optional(true), { a, b in
                guard let a, let b else { return nil }
                return a && b
            }) {
            case true?: break
            case false?:
                fail("the iptables rules are not installed in this network namespace: run scripts/iptables-setup.sh up \(options.config) first (or pass --skip-rules-check)")
            case nil:
                fail("cannot check the iptables rules (is iptables installed, and are you root?); pass --skip-rules-check to start anyway")
            }
        }
        installStopHandlers()
        // TUN: the outer source and the MTU of the path towards each real server, from the kernel's routes.
        var tunnelPaths: [IPAddress: TunnelPath] = [:]
        for service in config.services where service.mode == .tun {
            for real in service.reals where tunnelPaths[real.address] == nil {
                guard let path = TunnelPath.resolve(to: real.address) else {
                    fail("no route to the TUN real server \(real.address): the tunnel needs one (ip route get \(real.address))")
                }
                tunnelPaths[real.address] = path
            }
        }
        let balancer = Balancer(config: config, logger: logger, tunnelPaths: tunnelPaths)
        let reloader = Thread { [options, tunnelPaths] in
            while !stopSignal.isRaised {
                Thread.sleep(forTimeInterval: 0.1)
                if hangupSignal.isRaised {
                    hangupSignal.clear()
                    Run.reload(balancer, path: options.config, tunnelPaths: tunnelPaths, logger: logger)
                }
            }
        }
        reloader.start()
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

    /// SIGHUP: load `path` and apply it to the running balancer, or log why not and keep the running config.
    static func reload(_ balancer: Balancer, path: String, tunnelPaths known: [IPAddress: TunnelPath], logger: Logger) {
        let previous = balancer.handler?.config ?? balancer.config
        let config: BalancerConfig
        do {
            config = try ConfigLoader.load(path: path)
        } catch {
            logger.error("configuration refused, still serving the previous one", metadata: ["reason": "\(error)"])
            return
        }
        var tunnelPaths = known
        for service in config.services where service.mode == .tun {
            for real in service.reals where tunnelPaths[real.address] == nil {
                guard let path = TunnelPath.resolve(to: real.address) else {
                    logger.error("configuration refused, still serving the previous one", metadata: [
                        "reason": "no route to the TUN real server \(real.address)"])
                    return
                }
                tunnelPaths[real.address] = path
            }
        }
        do {
            try balancer.update(to: config, tunnelPaths: tunnelPaths)
        } catch {
            logger.error("configuration refused, still serving the previous one", metadata: ["reason": "\(error)"])
            return
        }
        // Rules a draining server still needs must stay; rules the new config adds must be installed.
        func rules(_ c: BalancerConfig) -> Set<String> {
            Set([IPFamily.v4, .v6].flatMap { family in
                (IptablesRules.restoreInput(for: c, family: family) + IptablesRules.routeCommands(for: c, family: family))
                    .split(separator: "\n").filter { !$0.hasPrefix("#") }.map { "\(family) \($0)" }
            })
        }
        if !rules(config).isSubset(of: rules(previous)) {
            logger.notice("the new configuration needs iptables rules or routes the previous one did not: make sure scripts/iptables-setup.sh up \(path) has installed them")
        }
    }
}

struct Decap: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Decapsulate TUN traffic on a real server whose kernel has no ipip (foreground, root).",
        discussion: """
        `nfqlb real-server setup --vip VIP --mode tun --queue N` queues IPIP packets (protocol 4) at mangle INPUT; \
        `nfqlb decap --queue N --vip VIP` accepts each as its inner packet, which the stack delivers to the \
        service bound to the VIP. Inner packets with IP options, or not addressed to a --vip, or from a loopback, \
        unspecified or multicast source, are dropped and counted. SIGINT/SIGTERM stop it.
        """
    )

    @Option(help: "The NFQUEUE number given to real-server setup.")
    var queue: UInt16 = 0

    @Option(name: .customLong("vip"), help: "A VIP this server serves (repeat for several): only inner packets to these are delivered.")
    var vips: [String]

    func validate() throws {
        guard !vips.isEmpty else { throw ValidationError("give the VIPs this server serves with --vip") }
        for vip in vips where IPAddress(vip) == nil {
            throw ValidationError("'\(vip)' is not an IPv4 or IPv6 address")
        }
    }

    @Option(help: ArgumentHelp("Write the counters to this file every second and on exit.", valueName: "path"))
    var statsFile: String?

    func run() throws {
        LoggingSystem.bootstrap(StreamLogHandler.standardError)
        installStopHandlers()
        let runtime = Balancer(decapsulatingQueues: [queue], vips: vips.compactMap { IPAddress($0) },
                               logger: Logger(label: "nfqlb-decap"))
        do {
            try runtime.run(stop: stopSignal, statsFile: statsFile)
        } catch {
            FileHandle.standardError.write(Data("nfqlb: \(error)\n".utf8))
            throw ExitCode(1)
        }
    }
}

extension Logger.Level: @retroactive ExpressibleByArgument {}
