import ArgumentParser
import QueueBalancer

struct ConntrackCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "conntrack",
        abstract: "Show or delete the kernel's connections of offloaded services (offload: conntrack).",
        discussion: """
        With `offload: conntrack` nfqlb schedules only the first packet of a \
        connection; the kernel's connection tracking carries the rest, and the \
        connection lives in the kernel's table with the real server's mark. These \
        commands read that table, as `ipvsadm -Lcn` reads IPVS's. Connections stay \
        when nfqlb stops or restarts (a restarted nfqlb counts them again); \
        scripts/iptables-setup.sh down deletes them.
          nfqlb conntrack list --config lb.yaml
          nfqlb conntrack flush --config lb.yaml
        """,
        subcommands: [List.self, Flush.self]
    )

    struct List: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "List the kernel's connections of the config's offloaded services.",
            discussion: "One line per connection: protocol, state, client, virtual service, real server, mark, and with nf_conntrack_acct=1 packets/bytes client->server and back.")

        @OptionGroup var options: ConfigOptions

        func run() throws {
            let config = try options.load()
            let connections = try ConntrackCommand.attempt { () throws(ConntrackError) in try OffloadedConnections.list(for: config) }
            print("pro state        source                                     virtual                                    destination                                mark  in(packets/bytes) out(packets/bytes)")
            for connection in connections {
                func counts(_ packets: UInt64?, _ bytes: UInt64?) -> String {
                    guard let packets, let bytes else { return "-" }
                    return "\(packets)/\(bytes)"
                }
                let columns = [
                    connection.original.transport.description.uppercased().padding(3),
                    connection.state.padding(12),
                    connection.original.source.description.padding(42),
                    connection.original.destination.description.padding(42),
                    connection.real.description.padding(42),
                    connection.mark.description.padding(5),
                    counts(connection.packetsIn, connection.bytesIn).padding(17),
                    counts(connection.packetsOut, connection.bytesOut),
                ]
                print(columns.joined(separator: " "))
            }
        }
    }

    struct Flush: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Delete the kernel's connections of the config's offloaded services.",
            discussion: "Their packets are then queued again: TCP ones the balancer does not know are dropped, as after any loss of state; clients reconnect.")

        @OptionGroup var options: ConfigOptions

        func run() throws {
            let config = try options.load()
            let deleted = try ConntrackCommand.attempt { () throws(ConntrackError) in
                try OffloadedConnections.delete(try OffloadedConnections.list(for: config))
            }
            print("nfqlb: \(deleted) kernel connection\(deleted == 1 ? "" : "s") deleted")
        }
    }

    static func attempt<T>(_ body: () throws(ConntrackError) -> T) throws -> T {
        do {
            return try body()
        } catch {
            throw failure("\(error)")
        }
    }
}

extension String {
    fileprivate func padding(_ width: Int) -> String {
        count >= width ? self : self + String(repeating: " ", count: width - count)
    }
}
