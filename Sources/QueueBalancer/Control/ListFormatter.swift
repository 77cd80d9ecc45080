import Foundation

/// `nfqlb list` as `ipvsadm -L -n` prints it, from the control plane's `list` and `connections` results: the
/// same column headers and widths, plus a State column (active, quiescent, overloaded, draining).
public struct ListFormatter: Sendable {
    public enum Columns: Sendable { case standard, stats, rate, thresholds, persistent }

    public var columns: Columns
    /// `--exact`: whole numbers instead of K/M/G.
    public var exact: Bool

    public init(columns: Columns = .standard, exact: Bool = false) {
        self.columns = columns
        self.exact = exact
    }

    public func services(_ result: JSONValue) -> String {
        var out = "nfqlb virtual servers (connection table size=\(result["size"]?.integer ?? 0))\n"
        switch columns {
        case .standard:
            out += "Prot LocalAddress:Port Scheduler Flags\n  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn State\n"
        case .stats:
            out += "Prot LocalAddress:Port               Conns   InPkts  OutPkts  InBytes OutBytes\n  -> RemoteAddress:Port\n"
        case .rate:
            out += "Prot LocalAddress:Port                 CPS    InPPS   OutPPS    InBPS   OutBPS\n  -> RemoteAddress:Port\n"
        case .thresholds:
            out += "Prot LocalAddress:Port Scheduler Flags\n  -> RemoteAddress:Port            Uthreshold Lthreshold ActiveConn InActConn\n"
        case .persistent:
            out += "Prot LocalAddress:Port Scheduler Flags\n  -> RemoteAddress:Port           Forward Weight PersistConn ActiveConn InActConn\n"
        }
        for service in result["services"]?.array ?? [] {
            let name = "\(service["protocol"]?.string?.uppercased() ?? "?")  \(endpoint(service["vip"], service["port"]))"
            switch columns {
            case .stats: out += pad(name, 33) + numbers(service["stats"], ["conns", "inpkts", "outpkts", "inbytes", "outbytes"]) + "\n"
            case .rate: out += pad(name, 33) + numbers(service["rate"], ["cps", "inpps", "outpps", "inbps", "outbps"]) + "\n"
            default: out += "\(name) \(service["scheduler"]?.string ?? "?")\(flags(service))\n"
            }
            for real in service["reals"]?.array ?? [] {
                let remote = "  -> " + pad(endpoint(real["address"], real["port"]), 28)
                func int(_ key: String) -> String { "\(real[key]?.integer ?? 0)" }
                switch columns {
                case .standard:
                    out += remote + " " + pad(real["forward"]?.string ?? "?", 7) + " " + pad(int("weight"), 6) + " "
                        + pad(int("active"), 10) + " " + pad(int("inactive"), 9) + " " + (real["state"]?.string ?? "") + "\n"
                case .stats: out += pad(remote, 33) + numbers(real["stats"], ["conns", "inpkts", "outpkts", "inbytes", "outbytes"]) + "\n"
                case .rate: out += pad(remote, 33) + numbers(real["rate"], ["cps", "inpps", "outpps", "inbps", "outbps"]) + "\n"
                case .thresholds:
                    out += remote + " " + pad(int("upper"), 10) + " " + pad(int("lower"), 10) + " " + pad(int("active"), 10) + " "
                        + int("inactive") + "\n"
                case .persistent:
                    out += remote + " " + pad(real["forward"]?.string ?? "?", 7) + " " + pad(int("weight"), 6) + " "
                        + pad(int("persistent"), 11) + " " + pad(int("active"), 10) + " " + int("inactive") + "\n"
                }
            }
        }
        return out.split(separator: "\n", omittingEmptySubsequences: false).map { line in
            var trimmed = Substring(line)
            while trimmed.last == " " { trimmed = trimmed.dropLast() }
            return String(trimmed)
        }.joined(separator: "\n")
    }

    /// `ipvsadm -L -c -n`: one line per connection, then how many matched when the list was cut.
    public func connections(_ result: JSONValue) -> String {
        var out = "pro expire state       source                  virtual                 destination             local\n"
        for c in result["connections"]?.array ?? [] {
            let expire = c["expires"]?.integer ?? 0
            let clock = String(format: "%02d:%02d", expire / 60, expire % 60)
            var line = pad(c["protocol"]?.string?.uppercased() ?? "?", 3) + " " + pad(clock, 6) + " "
                + pad(c["state"]?.string ?? "?", 11) + " " + pad(c["source"]?.string ?? "", 23) + " "
                + pad(c["virtual"]?.string ?? "", 23) + " " + pad(c["destination"]?.string ?? "", 23) + " "
                + (c["local"]?.string ?? "") + (c["offloaded"] == .bool(true) ? " (kernel)" : "")
                + (c["synced"] == .bool(true) ? " (synced)" : "")
            while line.last == " " { line.removeLast() }
            out += line + "\n"
        }
        if result["truncated"] == .bool(true) {
            out += "(\(result["connections"]?.array?.count ?? 0) of \(result["matched"]?.integer ?? 0) connections shown: raise --limit)\n"
        }
        return out
    }

    private func endpoint(_ address: JSONValue?, _ port: JSONValue?) -> String {
        let a = address?.string ?? "?"
        let p = port?.integer ?? 0
        return a.contains(":") ? "[\(a)]:\(p)" : "\(a):\(p)"
    }

    private func flags(_ service: JSONValue) -> String {
        var text = ""
        if let flags = service["scheduler-flags"]?.array, !flags.isEmpty {
            text += " (" + flags.compactMap(\.string).joined(separator: ",") + ")"
        }
        if let seconds = service["persistence"]?.integer {
            text += " persistent \(seconds)"
            if let mask = service["persistence-netmask"]?.integer {
                let v4 = !(service["vip"]?.string?.contains(":") ?? false)
                text += " mask \(v4 ? Ipvsadm.dottedMask(mask) : "\(mask)")"
            }
        }
        if service["ops"] == .bool(true) { text += " ops" }
        if let mode = service["mode"]?.string, mode == "fullnat" { text += " fullnat" }
        return text
    }

    private func numbers(_ values: JSONValue?, _ keys: [String]) -> String {
        keys.map { " " + number(UInt64(max(0, values?[$0]?.integer ?? 0))) }.joined()
    }

    /// ipvsadm's large numbers: 8 columns, K, M, G, T beyond, unless `--exact`.
    func number(_ n: UInt64) -> String {
        if exact { return pad(String(n), 8, right: true) }
        let text: String
        switch n {
        case ..<100_000_000: text = "\(n)"
        case ..<100_000_000_000: text = "\(n / 1000)K"
        case ..<100_000_000_000_000: text = "\(n / 1_000_000)M"
        case ..<100_000_000_000_000_000: text = "\(n / 1_000_000_000)G"
        default: text = "\(n / 1_000_000_000_000)T"
        }
        return pad(text, 8, right: true)
    }

    private func pad(_ text: String, _ width: Int, right: Bool = false) -> String {
        guard text.count < width else { return text }
        let fill = String(repeating: " ", count: width - text.count)
        return right ? fill + text : text + fill
    }
}
