import ArgumentParser
import Logging
import QueueBalancer

/// `nfqlb cluster`: several balancers behind a router that spreads flows with ECMP.
struct ClusterCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "cluster",
        abstract: "Several balancers behind ECMP: the routing daemons' configuration.",
        discussion: """
        nfqlb speaks no routing protocol: BIRD on each balancer announces the VIPs over BGP, \
        and nfqlb switches each VIP's announcement on only while it serves it. The router \
        (FRR or BIRD) installs one ECMP route per VIP with a next hop per balancer.
          nfqlb cluster config --config lb.yaml > /etc/bird/bird.conf     # each balancer
          nfqlb cluster config --config lb.yaml --router frr > frr.conf   # the router
        """,
        subcommands: [Config.self, Status.self, Withdraw.self, Announce.self, RouterECMP.self]
    )

    /// Prints what `cluster.*` answered: the switch and each VIP's announcement.
    static func show(_ result: JSONValue) {
        if result["announces"]?.bool == false {
            print("balancer: announces nothing (connection sync only)")
        } else {
            print("balancer: \(result["withdrawn"]?.bool == true ? "withdrawn by the operator" : "announcing what it serves")")
        }
        for vip in result["vips"]?.array ?? [] {
            print("  \(vip["vip"]?.string ?? "?") \(vip["announced"]?.bool == true ? "announced" : "withdrawn") (BIRD protocol \(vip["protocol"]?.string ?? "?"))")
        }
        if let sync = result["sync"]?.object {
            print("connection sync:")
            for name in sync.keys.sorted() { print("  \(name) \(sync[name]?.integer ?? 0)") }
        }
    }

    struct Status: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Show which VIPs this balancer announces.",
            discussion: """
            A VIP is announced while nfqlb serves it: the queues are bound, one of its services \
            has its quorum, and the balancer is not withdrawn. As BIRD last reported it (once a second).
            """
        )
        @OptionGroup var control: ControlOptions
        func run() throws { ClusterCommand.show(try control.call("cluster.status")) }
    }

    struct Withdraw: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Withdraw every VIP of this balancer, for maintenance; it keeps serving what still arrives.",
            discussion: """
            The router moves the flows to the other balancers (with adopt-midstream, DR and TUN \
            connections go on there). Until `nfqlb cluster announce` or a restart.
            """
        )
        @OptionGroup var control: ControlOptions
        func run() throws { ClusterCommand.show(try control.call("cluster.withdraw")) }
    }

    struct RouterECMP: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "router-ecmp",
            abstract: "On the router: mirror each VIP's ECMP route into a resilient next-hop group.",
            discussion: """
            Runs on the router (not a balancer), beside FRR or BIRD, until SIGTERM. The kernel's \
            plain ECMP groups rehash up to half of all flows when a balancer leaves or comes back; \
            a resilient group moves only the flows of the balancer that left, and gives one that \
            comes back its share (after --unbalanced-timer). The routing daemon's route stays the \
            source of truth: its next hops are copied, on every change, into a resilient group in \
            --table, which a policy rule (`to VIP lookup TABLE`) consults first. At exit the rules, \
            routes and groups are removed and the daemon's routes serve again.
              nfqlb cluster router-ecmp --config lb.yaml
            """
        )

        @OptionGroup var options: ConfigOptions
        @Option(help: "The routing table of the mirrored routes.") var table: UInt32 = 4242
        @Option(help: "Buckets per group.") var buckets = 128
        @Option(help: "Seconds a bucket must be idle before it moves to a returning balancer.") var idleTimer = 1
        @Option(help: "Seconds after which busy buckets move too.") var unbalancedTimer = 3

        func run() throws {
            let config = try options.load()
            LoggingSystem.bootstrap(StreamLogHandler.standardError)
            installSignalHandlers()
            var settings = ResilientECMP.Settings()
            settings.table = table
            settings.buckets = buckets
            settings.idleTimer = idleTimer
            settings.unbalancedTimer = unbalancedTimer
            let mirror = ResilientECMP(vips: RoutingConfig.vips(config), settings: settings, logger: Logger(label: "nfqlb"))
            do {
                try mirror.run(stop: stopSignal)
            } catch {
                throw failure("\(error)")
            }
        }
    }

    struct Announce: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Announce this balancer's VIPs again after `nfqlb cluster withdraw`."
        )
        @OptionGroup var control: ControlOptions
        func run() throws { ClusterCommand.show(try control.call("cluster.announce")) }
    }

    struct Config: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Print BIRD's configuration for a balancer, or the router's.",
            discussion: """
            From the config's `cluster:` section. Without --router: BIRD 2's bird.conf for a \
            balancer: a static protocol per VIP (disabled until nfqlb enables it), BFD, and a \
            BGP session per peer exporting only the VIPs. With --router frr: bgpd and bfdd \
            configuration for FRR (dynamic neighbors from the balancers' prefix, maximum-paths, \
            BFD profile); --router bird: the same for BIRD (merge paths on). Check them with \
            `bird -p -c FILE` and `vtysh --dryrun -f FILE`.
            """
        )

        @OptionGroup var options: ConfigOptions

        enum Router: String, ExpressibleByArgument, CaseIterable { case frr, bird }

        @Option(help: ArgumentHelp("Print the router's configuration instead (frr or bird).", valueName: "daemon"))
        var router: Router?

        func run() throws {
            let config = try options.load()
            guard let cluster = config.cluster else {
                throw failure("\(options.config) has no cluster: section (see README, \"Several balancers\")", status: 2)
            }
            guard cluster.announces else {
                throw failure("\(options.config): its cluster announces nothing (no local-as and peers: sync only)", status: 2)
            }
            let ranges = RoutingConfig.balancerRanges(cluster)
            switch router {
            case nil: print(RoutingConfig.bird(config, cluster: cluster), terminator: "")
            case .frr?: print(RoutingConfig.frr(config, cluster: cluster, balancers: ranges), terminator: "")
            case .bird?: print(RoutingConfig.birdRouter(config, cluster: cluster, balancers: ranges), terminator: "")
            }
        }
    }
}
