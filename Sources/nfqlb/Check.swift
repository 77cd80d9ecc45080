import ArgumentParser
import QueueBalancer

struct Check: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Validate a configuration and print a summary.",
        discussion: """
        Exits 0 when the file is valid, 2 with `file:line: reason` when it is not, and \
        prints each real server's effective health check, defaults included:
          nfqlb check --config lb.yaml
        """
    )

    @OptionGroup var options: ConfigOptions

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
        }
    }
}
