import ArgumentParser
import Logging
import QueueBalancer

struct Decap: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Decapsulate TUN traffic on a real server whose kernel has no ipip (foreground, root).",
        discussion: """
        `nfqlb real-server setup --vip VIP --mode tun --queue N` queues tunnelled packets \
        (IP protocols 4 and 41) at mangle INPUT; `nfqlb decap --queue N --vip VIP` \
        accepts each as its inner packet, which the stack delivers to the service bound \
        to the VIP. Give the balancers' addresses with --allow-source: tunnels from \
        anywhere else are dropped (without it, anyone who can reach this server can \
        send packets to the VIP from any client address they like). Inner packets \
        other than TCP, UDP and ICMP, with IP options, not addressed to a --vip, or \
        from a loopback, unspecified or multicast source, are dropped and counted. \
        SIGINT/SIGTERM stop it.
          nfqlb decap --queue 0 --vip 203.0.113.10 --allow-source 198.51.100.1 \\
                      --stats-file /run/nfqlb-decap.stats
        """
    )

    @Option(help: "The NFQUEUE number given to real-server setup.")
    var queue: UInt16 = 0

    @Option(name: .customLong("vip"),
            help: "A VIP this server serves (repeat for several): only inner packets to these are delivered.")
    var vips: [IPAddress]

    @Option(name: .customLong("allow-source"),
            help: ArgumentHelp("A balancer's address or prefix (repeat for several): only tunnels from these are opened.",
                               valueName: "prefix"))
    var allowedSources: [IPPrefix] = []

    @Option(help: ArgumentHelp("Write the counters to this file every second and on exit.", valueName: "path"))
    var statsFile: String?

    func validate() throws {
        guard !vips.isEmpty else { throw ValidationError("give the VIPs this server serves with --vip") }
    }

    func run() throws {
        LoggingSystem.bootstrap(StreamLogHandler.standardError)
        installSignalHandlers()
        let sizes = BalancerConfig(queues: [queue], services: [])   // the balancer's default queue sizes
        let logger = Logger(label: "nfqlb-decap")
        if allowedSources.isEmpty {
            logger.warning("no --allow-source: tunnels from any address are opened, so anyone who can reach this server can send to the VIP from a forged client address; give the balancers' addresses")
        }
        let runtime = QueueRuntime(processor: Decapsulator(vips: vips, allowedSources: allowedSources),
                                   queues: sizes.queues, queueLength: sizes.queueLength,
                                   socketBufferMiB: sizes.socketBufferMiB, logger: logger)
        do {
            try runtime.run(stop: stopSignal, statistics: statsFile.map(StatisticsWriter.init(path:)),
                            metadata: ["vips": "\(vips.map(\.description).joined(separator: ","))",
                                       "allowed-sources": "\(allowedSources.isEmpty ? "any" : allowedSources.map(\.description).joined(separator: ","))"])
        } catch {
            throw failure("\(error)")
        }
    }
}
