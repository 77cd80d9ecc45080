import ArgumentParser
import Foundation
import QueueBalancer

/// `--control-socket`, shared by every command that talks to a running nfqlb.
struct ControlOptions: ParsableArguments {
    @Option(help: ArgumentHelp("""
        The running nfqlb's control socket (default: /run/nfqlb/nfqlb.sock; in a network namespace other than \
        the host's, /run/nfqlb/netns-INODE/nfqlb.sock).
        """, valueName: "path"))
    var controlSocket: String?

    var path: String { controlSocket ?? ControlServer.defaultPath }

    /// Sends one request and returns its result; an error answer is printed as `nfqlb: message` with exit status
    /// 2 for a refused configuration or change, 1 otherwise.
    func call(_ cmd: String, _ args: [String: JSONValue] = [:]) throws -> JSONValue {
        let answer: ControlAnswer
        do {
            answer = try ControlClient(path: path).call(cmd, args)
        } catch {
            throw failure("\(error)")
        }
        guard answer.isSuccess, let result = answer.result else {
            let code = answer.errorCode ?? "?"
            let status: Int32 = ["invalid", "refused", "bad-argument", "rules"].contains(code) ? 2 : 1
            throw failure(answer.errorMessage ?? "nfqlb answered \(answer.value.jsonText)", status: status)
        }
        return result
    }
}

/// `-t VIP:PORT` / `-u VIP:PORT`: a virtual service, as ipvsadm names it.
struct ServiceOptions: ParsableArguments {
    @Option(name: [.customShort("t"), .customLong("tcp-service")], help: ArgumentHelp("A TCP virtual service.", valueName: "vip:port"))
    var tcp: String?

    @Option(name: [.customShort("u"), .customLong("udp-service")], help: ArgumentHelp("A UDP virtual service.", valueName: "vip:port"))
    var udp: String?

    /// The service as the protocol names it, nil when neither option is given.
    func identity() throws -> [String: JSONValue]? {
        if tcp != nil && udp != nil { throw ValidationError("give -t or -u, not both") }
        guard let text = tcp ?? udp else { return nil }
        guard let endpoint = Endpoint(parsing: text), endpoint.port != 0 else {
            throw ValidationError("'\(text)' is not VIP:PORT (IPv6: [VIP]:PORT)")
        }
        return ["protocol": .string(tcp != nil ? "tcp" : "udp"), "vip": .string("\(endpoint.address)"),
                "port": JSONValue(Int(endpoint.port))]
    }

    func required() throws -> [String: JSONValue] {
        guard let id = try identity() else { throw ValidationError("name the virtual service with -t VIP:PORT or -u VIP:PORT") }
        return id
    }
}

extension Endpoint {
    /// `ADDRESS:PORT`, `[IPv6]:PORT`, or an address alone (port 0).
    init?(parsing text: String) {
        var host = Substring(text), port: Substring?
        if text.hasPrefix("[") {
            guard let close = text.firstIndex(of: "]") else { return nil }
            host = text[text.index(after: text.startIndex)..<close]
            let rest = text[text.index(after: close)...]
            if rest.hasPrefix(":") { port = rest.dropFirst() } else if !rest.isEmpty { return nil }
        } else if let colon = text.lastIndex(of: ":"), text.firstIndex(of: ":") == colon {
            host = text[..<colon]
            port = text[text.index(after: colon)...]
        }
        guard let address = IPAddress(String(host)) else { return nil }
        if let port {
            guard let n = UInt16(port), n > 0 else { return nil }
            self.init(address: address, port: n)
        } else {
            self.init(address: address, port: 0)
        }
    }
}

struct List: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "List the virtual services and real servers of the running nfqlb (ipvsadm -L).",
        discussion: """
        The columns are ipvsadm's: ActiveConn counts established TCP connections, InActConn \
        every other tracked one; State says whether a real server takes new connections \
        (active), has weight 0 (quiescent), reached its -x threshold (overloaded), or left \
        the configuration and drains its connections (draining).
          nfqlb list -n                  # services and real servers
          nfqlb list -n --stats          # connections, packets and bytes since start or zero
          nfqlb list -n --rate           # per second, over the last 2 s
          nfqlb list -n -t 203.0.113.10:80 --json | jq .
          nfqlb list -c -n --real 198.51.100.11    # connections (ipvsadm -Lcn)
        Names are never resolved: -n is accepted for ipvsadm's habit.
        """
    )

    @OptionGroup var control: ControlOptions
    @OptionGroup var service: ServiceOptions

    @Flag(name: [.customShort("n"), .long], help: "Numeric output (always: nfqlb resolves no names).")
    var numeric = false

    @Flag(help: "Connections, packets and bytes per service and real server.")
    var stats = false

    @Flag(help: "Connections, packets and bytes per second.")
    var rate = false

    @Flag(help: "The real servers' upper and lower connection thresholds (-x, -y).")
    var thresholds = false

    @Flag(name: .customLong("persistent-conn"), help: "Persistence templates per real server.")
    var persistentConn = false

    @Flag(help: "Whole numbers instead of K, M, G.")
    var exact = false

    @Flag(help: "The control socket's JSON result instead of the table.")
    var json = false

    @Flag(name: [.customShort("c"), .long], help: "The tracked connections instead (ipvsadm -L -c).")
    var connections = false

    @Option(help: ArgumentHelp("With --connections: only those to this real server.", valueName: "rip[:port]"))
    var real: String?

    @Option(help: "With --connections: at most this many lines.")
    var limit = 1000

    func validate() throws {
        if [stats, rate, thresholds, persistentConn].filter({ $0 }).count > 1 {
            throw ValidationError("choose one of --stats, --rate, --thresholds, --persistent-conn")
        }
        if real != nil && !connections { throw ValidationError("--real filters --connections") }
    }

    func run() throws {
        var args: [String: JSONValue] = [:]
        if let id = try service.identity() { args["service"] = .object(id) }
        if connections {
            if let real {
                guard let endpoint = Endpoint(parsing: real) else { throw ValidationError("'\(real)' is not RIP or RIP:PORT") }
                var filter: [String: JSONValue] = ["address": .string("\(endpoint.address)")]
                if endpoint.port != 0 { filter["port"] = JSONValue(Int(endpoint.port)) }
                args["real"] = .object(filter)
            }
            args["limit"] = JSONValue(limit)
            let result = try control.call("connections", args)
            print(json ? result.jsonText : ListFormatter().connections(result), terminator: json ? "\n" : "")
            return
        }
        let result = try control.call("list", args)
        if json { print(result.jsonText); return }
        let columns: ListFormatter.Columns = stats ? .stats : rate ? .rate : thresholds ? .thresholds : persistentConn ? .persistent : .standard
        print(ListFormatter(columns: columns, exact: exact).services(result), terminator: "")
    }
}

struct Zero: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Zero the packet, byte and connection counters (ipvsadm -Z), of all services or one.",
        discussion: "  nfqlb zero -t 203.0.113.10:80"
    )

    @OptionGroup var control: ControlOptions
    @OptionGroup var service: ServiceOptions

    func run() throws {
        var args: [String: JSONValue] = [:]
        if let id = try service.identity() { args["service"] = .object(id) }
        let result = try control.call("zero", args)
        print("zeroed the counters of \(result["real-servers"]?.integer ?? 0) real servers")
    }
}

struct Reload: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Re-read the config file, as SIGHUP does, and say whether it was applied.",
        discussion: """
        The running nfqlb loads its config file again and applies it without a restart, \
        installing first the iptables rules and DR routes the new configuration needs (when \
        scripts/iptables-setup.sh installed nfqlb's rules); rules only draining real servers \
        still need are removed once they have drained. Live changes (service and real \
        commands) to services and real servers the file does not define are applied again on \
        top of it: the file wins for what it sets. A file that does not load is refused with \
        file:line: reason (exit status 2) and the running configuration stays.
        """
    )

    @OptionGroup var control: ControlOptions

    func run() throws {
        let result = try control.call("reload")
        print("reloaded \(result["file"]?.string ?? "?"): \(result["services"]?.integer ?? 0) services, \(result["live-changes-kept"]?.integer ?? 0) live changes kept")
    }
}
