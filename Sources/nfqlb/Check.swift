import ArgumentParser
import QueueBalancer

struct Check: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Validate a configuration and print a summary.",
        discussion: """
        Exits 0 when the file is valid, 2 with `file:line: reason` when it is not, and \
        prints each real server's effective health check, defaults included:
          nfqlb check --config lb.yaml
        With --show-table, each mh service's Maglev table too: its size, seed, entries per real \
        server and a SHA-256 digest. Balancers behind the same router must print the same digest, \
        or a flow that ECMP moves between them changes real server:
          nfqlb check --config lb.yaml --show-table
        """
    )

    @OptionGroup var options: ConfigOptions

    @Flag(help: "Print each mh service's Maglev table: size, seed, entries per real server, digest.")
    var showTable = false

    func run() throws {
        let config = try options.load()
        print("\(options.config): ok, \(config.services.count) service(s) on queue(s) \(config.queues.map(String.init).joined(separator: ","))\(config.synQueue.map { ", new TCP connections on queue \($0)" } ?? "")")
        for service in config.services {
            let reals = service.reals.map { "\($0.endpoint) w\($0.weight)" }.joined(separator: ", ")
            print("  \(service) \(service.mode) \(service.scheduler): \(reals)")
            for real in service.reals {
                print("    \(real.endpoint) health: \(service.healthCheck(of: real).map { "\($0)" } ?? "none (always up)")")
            }
            if let sorry = service.sorryServer { print("    sorry-server \(sorry) (while no real server is up)") }
            if let quorum = service.quorum { print("    quorum: min-weight \(quorum.minWeight), hysteresis \(quorum.hysteresis)") }
            if !service.notify.isEmpty { print("    notify: \(service.notify.joined(separator: ", "))") }
            if config.adoptsMidstream(service) { print("    adopt-midstream: TCP packets of unknown connections are scheduled by the table") }
            if showTable, let table = service.maglevTable {
                let shares = table.entries.map { "\($0.real) \($0.count)" }.joined(separator: ", ")
                print("    mh table: size \(table.size), seed \(table.seed), entries \(shares)")
                print("    mh table sha256: \(table.digest)")
            }
        }
        if let cluster = config.cluster {
            let peers = cluster.peers.map { "\($0.address) AS\($0.remoteAS)" }.joined(separator: ", ")
            let bfd = cluster.bfd.map { "BFD \($0.interval) ms x \($0.multiplier)" } ?? "no BFD"
            if cluster.announces {
                print("  cluster: AS\(cluster.localAS), peers \(peers), \(bfd), hold time \(cluster.holdTime / 1000) s")
            } else {
                print("  cluster: announces nothing (no local-as and peers): connection sync only, active/backup")
            }
            if let sync = cluster.sync {
                print("  cluster sync: listen \(sync.listen), peers \(sync.peers.map { "\($0)" }.joined(separator: ", ")), every \(sync.interval) ms, refresh \(sync.refresh / 1000) s, at most \(sync.maxRate) bytes/s per peer, key \(sync.keyFile)")
            }
            if !cluster.takeoverLocalAddresses.isEmpty {
                print("  cluster takeover local addresses: \(cluster.takeoverLocalAddresses.map { "\($0)" }.joined(separator: ", "))")
            }
            for warning in cluster.warnings(for: config) { print("  warning: \(warning)") }
        }
    }
}
