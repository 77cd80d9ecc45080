import ArgumentParser
import QueueBalancer

/// The settings of a virtual service that `service add` and `service edit` take, ipvsadm's letters where it has
/// them; each becomes the config file key of the same meaning.
struct ServiceSettings: ParsableArguments {
    @Option(name: .customShort("s"), help: ArgumentHelp("Scheduler: rr wrr lc wlc sed nq dh sh mh lblc lblcr fo ovf twos.", valueName: "scheduler"))
    var scheduler: String?

    @Option(name: .customShort("p"), help: ArgumentHelp("Persistence in seconds (0: off).", valueName: "seconds"))
    var persistent: Int?

    @Option(name: .customShort("M"), help: ArgumentHelp("Persistence netmask: prefix length or dotted mask.", valueName: "netmask"))
    var netmask: String?

    @Option(name: .customShort("b"), help: ArgumentHelp("Scheduler flags, comma-separated: sh-fallback,sh-port,mh-fallback,mh-port.", valueName: "flags"))
    var schedFlags: String?

    @Flag(name: .customShort("o"), help: "One-packet scheduling (UDP).")
    var ops = false

    @Option(help: "Forwarding mode: nat, fullnat, dr, tun (ipvsadm -m, -g, -i per real server).")
    var mode: String?

    @Option(name: .customLong("local-address"), help: ArgumentHelp("FULLNAT: a local address of the balancer (repeat for more).", valueName: "address"))
    var localAddresses: [String] = []

    @Option(help: ArgumentHelp("TUN: the outer source address.", valueName: "address"))
    var tunnelSource: String?

    @Option(help: ArgumentHelp("Seconds a removed real server keeps its connections.", valueName: "seconds"))
    var drain: Int?

    @Option(help: "Who carries a connection after its first packet: none or conntrack.")
    var offload: String?

    @Option(help: "A name for the service.")
    var name: String?

    @Option(help: "mh: the lookup table size (a prime).")
    var mhTableSize: Int?

    /// The config file keys given.
    var fields: [String: JSONValue] {
        var fields: [String: JSONValue] = [:]
        if let scheduler { fields["scheduler"] = .string(scheduler) }
        if let persistent { fields["persistence"] = JSONValue(persistent) }
        if let netmask { fields["persistence-netmask"] = .string(netmask) }
        if let schedFlags { fields["scheduler-flags"] = .array(schedFlags.split(separator: ",").map { .string(String($0)) }) }
        if ops { fields["ops"] = .bool(true) }
        if let mode { fields["mode"] = .string(mode) }
        if !localAddresses.isEmpty { fields["local-addresses"] = .array(localAddresses.map(JSONValue.string)) }
        if let tunnelSource { fields["tunnel-source"] = .string(tunnelSource) }
        if let drain { fields["drain"] = JSONValue(drain) }
        if let offload { fields["offload"] = .string(offload) }
        if let name { fields["name"] = .string(name) }
        if let mhTableSize { fields["mh-table-size"] = JSONValue(mhTableSize) }
        return fields
    }
}

struct ServiceCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "service",
        abstract: "Add, edit or delete a virtual service of the running nfqlb (ipvsadm -A, -E, -D).",
        discussion: """
        Each change is validated as the config file is, its iptables rules are installed \
        first (when scripts/iptables-setup.sh installed nfqlb's rules), and it is then served \
        without a restart; a refused change prints why, changes nothing and exits with status 2. \
        Changes to what the config file does not define survive `nfqlb reload`; the file wins \
        for what it sets (nfqlb save writes the running configuration out).
          nfqlb service add -t 203.0.113.20:443 -s rr --mode nat -r 198.51.100.11:8443 -r 198.51.100.12:8443
          nfqlb service edit -t 203.0.113.20:443 -s wlc -p 300
          nfqlb service delete -t 203.0.113.20:443
        """,
        subcommands: [Add.self, Edit.self, Delete.self]
    )

    struct Add: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Add a virtual service with its first real servers (ipvsadm -A, then -a).")
        @OptionGroup var control: ControlOptions
        @OptionGroup var service: ServiceOptions
        @OptionGroup var settings: ServiceSettings

        @Option(name: .customShort("r"), help: ArgumentHelp("A real server (repeat for more; weight 1, tune with nfqlb real edit).", valueName: "rip[:port]"))
        var reals: [String] = []

        @Option(name: .customShort("w"), help: "The weight of the real servers given with -r.")
        var weight = 1

        func run() throws {
            guard !reals.isEmpty else { throw ValidationError("give the service's first real servers with -r RIP[:PORT]") }
            var fields = settings.fields.merging(try service.required()) { _, id in id }
            if fields["mode"] == nil { fields["mode"] = .string("nat") }
            fields["reals"] = .array(try reals.map { text in
                guard let endpoint = Endpoint(parsing: text) else { throw ValidationError("'\(text)' is not RIP or RIP:PORT") }
                var real: [String: JSONValue] = ["address": .string("\(endpoint.address)"), "weight": JSONValue(weight)]
                if endpoint.port != 0 { real["port"] = JSONValue(Int(endpoint.port)) }
                return .object(real)
            })
            _ = try control.call("service.add", ["service": .object(fields)])
            print("service \(fields["protocol"]!.string!)/\(service.tcp ?? service.udp ?? "") added")
        }
    }

    struct Edit: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Change settings of a virtual service (ipvsadm -E); those not given stay.")
        @OptionGroup var control: ControlOptions
        @OptionGroup var service: ServiceOptions
        @OptionGroup var settings: ServiceSettings

        func run() throws {
            let fields = settings.fields
            guard !fields.isEmpty else { throw ValidationError("nothing to change: give -s, -p, -M, -b, -o, --mode, ...") }
            _ = try control.call("service.edit", ["service": .object(fields.merging(try service.required()) { _, id in id })])
            print("service \(service.tcp != nil ? "tcp" : "udp")/\(service.tcp ?? service.udp ?? "") changed")
        }
    }

    struct Delete: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Delete a virtual service (ipvsadm -D); its real servers drain as its `drain` says.")
        @OptionGroup var control: ControlOptions
        @OptionGroup var service: ServiceOptions

        func run() throws {
            _ = try control.call("service.delete", ["service": .object(try service.required())])
            print("service \(service.tcp != nil ? "tcp" : "udp")/\(service.tcp ?? service.udp ?? "") deleted")
        }
    }
}

struct RealCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "real",
        abstract: "Add, edit or delete a real server of a running nfqlb's service (ipvsadm -a, -e, -d).",
        discussion: """
        Validated, installed and kept like `nfqlb service` changes. Weight 0 quiesces a real \
        server: its connections go on, new ones go elsewhere. A deleted real server drains \
        for its service's `drain` seconds.
          nfqlb real add -t 203.0.113.10:80 -r 198.51.100.13:8080 -w 2
          nfqlb real edit -t 203.0.113.10:80 -r 198.51.100.13:8080 -w 0
          nfqlb real delete -t 203.0.113.10:80 -r 198.51.100.13:8080
        The port defaults to the service's, as in ipvsadm.
        """,
        subcommands: [Add.self, Edit.self, Delete.self]
    )

    struct RealOptions: ParsableArguments {
        @Option(name: .customShort("r"), help: ArgumentHelp("The real server.", valueName: "rip[:port]"))
        var real: String

        @Option(name: .customShort("w"), help: "Weight, 0-65535 (0: quiescent).")
        var weight: Int?

        @Option(name: .customShort("x"), help: "Upper connection threshold (0: none).")
        var upper: Int?

        @Option(name: .customShort("y"), help: "Lower connection threshold.")
        var lower: Int?

        func arguments(_ service: ServiceOptions) throws -> [String: JSONValue] {
            guard let endpoint = Endpoint(parsing: real) else { throw ValidationError("'\(real)' is not RIP or RIP:PORT") }
            var fields: [String: JSONValue] = ["address": .string("\(endpoint.address)")]
            if endpoint.port != 0 { fields["port"] = JSONValue(Int(endpoint.port)) }
            if let weight { fields["weight"] = JSONValue(weight) }
            if let upper { fields["upper"] = JSONValue(upper) }
            if let lower { fields["lower"] = JSONValue(lower) }
            return ["service": .object(try service.required()), "real": .object(fields)]
        }

        var changes: Bool { weight != nil || upper != nil || lower != nil }
    }

    struct Add: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Add a real server to a service (ipvsadm -a).")
        @OptionGroup var control: ControlOptions
        @OptionGroup var service: ServiceOptions
        @OptionGroup var real: RealOptions

        func run() throws {
            _ = try control.call("real.add", try real.arguments(service))
            print("real server \(real.real) added")
        }
    }

    struct Edit: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Change a real server's weight or thresholds (ipvsadm -e).")
        @OptionGroup var control: ControlOptions
        @OptionGroup var service: ServiceOptions
        @OptionGroup var real: RealOptions

        func run() throws {
            guard real.changes else { throw ValidationError("nothing to change: give -w, -x or -y") }
            _ = try control.call("real.edit", try real.arguments(service))
            print("real server \(real.real) changed")
        }
    }

    struct Delete: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Delete a real server from a service (ipvsadm -d).")
        @OptionGroup var control: ControlOptions
        @OptionGroup var service: ServiceOptions
        @Option(name: .customShort("r"), help: ArgumentHelp("The real server.", valueName: "rip[:port]"))
        var real: String

        func run() throws {
            guard let endpoint = Endpoint(parsing: real) else { throw ValidationError("'\(real)' is not RIP or RIP:PORT") }
            var fields: [String: JSONValue] = ["address": .string("\(endpoint.address)")]
            if endpoint.port != 0 { fields["port"] = JSONValue(Int(endpoint.port)) }
            _ = try control.call("real.delete", ["service": .object(try service.required()), "real": .object(fields)])
            print("real server \(real) deleted")
        }
    }
}
