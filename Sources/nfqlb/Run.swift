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

        SIGHUP (or `nfqlb reload`, which also returns the outcome) re-reads the config \
        file and applies it without a restart: connections to real servers that stay are \
        untouched; a real server left out drains for its service's `drain` seconds (weight \
        0 first for a gentle removal). A config that fails to load, or changes what needs \
        a restart (queues, sizes, timeouts, fullnat-ports, the order of DR real servers), \
        is refused with the reason in the log and the running one is kept. Where \
        scripts/iptables-setup.sh installed nfqlb's rules, a reload or live change \
        installs the rules and DR routes the new configuration needs before serving it, \
        and removes those of drained real servers once they are gone.

        The control socket (--control-socket) takes the live commands: nfqlb list, \
        service, real, zero, reload, save; root only (SO_PEERCRED).

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

    @Option(help: ArgumentHelp("""
        The control socket that nfqlb list, service, real, zero, reload and save talk to (default: \
        /run/nfqlb/nfqlb.sock; in a network namespace other than the host's, \
        /run/nfqlb/netns-INODE/nfqlb.sock). Created mode 0600; only root may use it.
        """, valueName: "path"))
    var controlSocket: String?

    @Flag(help: "Listen on no control socket (SIGHUP still reloads).")
    var noControlSocket = false

    @Option(help: ArgumentHelp("""
        Also listen on a read-only socket (list, connections, save) that members of --read-only-group may \
        use, for monitoring without root, e.g. /run/nfqlb/nfqlb-ro.sock.
        """, valueName: "path"))
    var readOnlySocket: String?

    @Option(help: ArgumentHelp("The group that may use --read-only-socket (mode 0660).", valueName: "group"))
    var readOnlyGroup = "root"

    @Option(help: ArgumentHelp("""
        Serve Prometheus metrics on http://ADDRESS:PORT/metrics (overrides the config's metrics-listen; \
        e.g. 127.0.0.1:9469).
        """, valueName: "address:port"))
    var metricsListen: String?

    @Option(help: "Log level: trace, debug, info, notice, warning, error, critical.")
    var logLevel: Logger.Level = .info

    @Option(help: "Log lines as text (default) or json (one object per line, for log shippers).")
    var logFormat: LogFormat = .text

    enum LogFormat: String, ExpressibleByArgument, CaseIterable { case text, json }

    func validate() throws {
        if let metricsListen, Endpoint(listenAddress: metricsListen) == nil {
            throw ValidationError("--metrics-listen '\(metricsListen)' is not ADDRESS:PORT (IPv6: [ADDRESS]:PORT)")
        }
    }

    func run() throws {
        let config = try options.load()
        let level = logLevel
        let json = logFormat == .json
        LoggingSystem.bootstrap { label in
            if json { return JSONLogHandler(label: label, logLevel: level) }
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
        // nfqlb keeps the rules in step with its config where they were installed (iptables-setup.sh up).
        let rulesDirectory = (BalancerState.defaultPath as NSString).deletingLastPathComponent
        let rules = RulesInstaller.isInstalled ? RulesInstaller(stateDirectory: rulesDirectory) : nil
        // Health checks run when a service or real server has one (a reload may add them later: then too).
        let health = HealthChecker()
        let plane = ControlPlane(balancer: balancer, configPath: options.config, rules: rules, logger: logger, health: health)
        // Connection sync (NAT, FULLNAT across balancers): its socket now (a failure stops nfqlb before it
        // binds a queue), its threads once the queues are bound, until the workers stop.
        let sync: ConnectionSync?
        do {
            sync = try config.cluster?.sync.map { try ConnectionSync(settings: $0, tracker: balancer.handler.tracker, logger: logger) }
        } catch {
            throw failure("\(error)")
        }
        if let sync { plane.attach(sync: sync) }
        // A cluster balancer: the live device first (BIRD's routes through it vanish with this process), then the
        // announcer, which withdraws the VIPs at SIGTERM before the workers stop (`workersStop`); with sync, not
        // before the peers' connections are in.
        var liveDevice: LiveDevice?
        var announcer: ClusterAnnouncer?
        let workersStop = config.cluster?.announces == true ? StopSignal() : stopSignal
        if let cluster = config.cluster, cluster.announces {
            let made = ClusterAnnouncer(cluster: cluster, logger: logger, vips: { RoutingConfig.vips(plane.configuration) },
                                        servable: { [sync] in sync?.isReady == false ? [] : plane.servableVIPs })
            made.withdrawBeforeStart()
            do {
                liveDevice = try LiveDevice()
            } catch {
                throw failure("\(error)")
            }
            plane.attach(made)
            announcer = made
        }
        defer { withExtendedLifetime(liveDevice) {} }
        // Without a control socket, its thread's once-a-second work (rates, drains, rules) is the reload thread's.
        let ticksHere = noControlSocket
        let reloader = Thread {
            var nextTick = ContinuousClock.now
            while !stopSignal.isRaised {
                Thread.sleep(forTimeInterval: 0.1)
                if hangupSignal.isRaised {
                    hangupSignal.clear()
                    _ = try? plane.reload()
                }
                if ticksHere, ContinuousClock.now >= nextTick {
                    nextTick = ContinuousClock.now + .seconds(1)
                    plane.tick()
                }
            }
        }
        reloader.start()
        // Once the queues are bound: the control socket and the metrics listener (a failure stops nfqlb).
        var metrics: MetricsEndpoint?
        var control: ControlServer?
        var startFailure: String?
        let bound = {
            Thread { health.run(stop: stopSignal) }.start()
            if let announcer { Thread { announcer.run(stop: stopSignal, then: workersStop) }.start() }
            if let sync { Thread { sync.run(stop: workersStop) }.start() }
            if !noControlSocket {
                do {
                    let server = try ControlServer(path: controlSocket ?? ControlServer.defaultPath, plane: plane, logger: logger)
                    Thread { server.run(stop: stopSignal) }.start()
                    control = server
                    if let readOnlySocket {
                        guard let group = getgrnam(readOnlyGroup)?.pointee.gr_gid else {
                            throw ControlSocketError(description: "no group '\(readOnlyGroup)' for --read-only-socket")
                        }
                        let reader = try ControlServer(path: readOnlySocket, plane: plane, logger: logger, readOnlyGroup: group)
                        Thread { reader.run(stop: stopSignal) }.start()
                    }
                } catch {
                    startFailure = "\(error)"
                    stopSignal.raise()
                    return
                }
            }
            if let listen = metricsListen.flatMap(Endpoint.init(listenAddress:)) ?? config.metricsListen {
                do {
                    metrics = try MetricsEndpoint(listen: listen, exporter: MetricsExporter(plane: plane))
                    logger.info("metrics listening", metadata: ["url": "http://\(listen)/metrics"])
                } catch {
                    startFailure = "cannot serve metrics on \(listen): \(error)"
                    stopSignal.raise()
                }
            }
        }
        defer { metrics?.close() }
        do {
            try balancer.run(stop: workersStop, statsFile: statsFile, bound: bound)
        } catch {
            throw failure("\(error)")
        }
        // The control thread removes its socket file within its 200 ms poll, and the sync's threads end within
        // an interval and a poll: wait for them (bounded: 2 s), so the process never exits under a running thread.
        for _ in 0..<20 where control.map({ !$0.finished.isRaised }) ?? false || sync.map({ !$0.finished.isRaised }) ?? false {
            Thread.sleep(forTimeInterval: 0.1)
        }
        if let startFailure { throw failure(startFailure) }
    }
}
