/// BIRD's control socket through `birdc`: enabling and disabling the VIPs' static protocols, and reading their
/// state. Each call runs `birdc -s SOCKET COMMAND` and reads its answer (a few milliseconds).
public struct BirdControl: Sendable {
    public var socket: String
    /// The program (found on PATH).
    public var program = "birdc"

    public init(socket: String) { self.socket = socket }

    public struct Failure: Error, CustomStringConvertible, Equatable {
        public var description: String
    }

    /// Runs one command; its output, or why it failed.
    func run(_ command: [String]) -> Result<String, Failure> {
        guard let result = runCapturingOutput([program, "-s", socket] + command, errors: true) else {
            return .failure(Failure(description: "cannot run \(program)"))
        }
        let lines = result.output.split(separator: "\n").map(String.init).filter { !$0.hasPrefix("BIRD ") }
        guard result.status == 0, !lines.contains(where: { $0.hasPrefix("Unable to connect") || $0.contains("syntax error") }) else {
            return .failure(Failure(description: lines.joined(separator: " ").prefix(200).description))
        }
        return .success(lines.joined(separator: "\n"))
    }

    /// Enables (announces) or disables (withdraws) a protocol.
    public func set(_ name: String, enabled: Bool) -> Failure? {
        switch run([enabled ? "enable" : "disable", name]) {
        case .failure(let failure): return failure
        case .success(let output):
            // "NAME: enabled", "NAME: already enabled", "NAME: disabled"...; anything else is BIRD refusing.
            return output.contains("\(name): ") ? nil : Failure(description: "birdc \(enabled ? "enable" : "disable") \(name): \(output)")
        }
    }

    /// The state of every protocol whose name starts with `prefix`: true when up (its routes are exported),
    /// false when down or disabled.
    public func states(prefix: String) -> Result<[String: Bool], Failure> {
        run(["show", "protocols"]).map { Self.parseProtocols($0, prefix: prefix) }
    }

    /// `show protocols` output: `Name Proto Table State Since Info` rows.
    static func parseProtocols(_ output: String, prefix: String) -> [String: Bool] {
        var states: [String: Bool] = [:]
        for line in output.split(separator: "\n") {
            let words = line.split(separator: " ", omittingEmptySubsequences: true)
            guard words.count >= 4, words[0].hasPrefix(prefix) else { continue }
            states[String(words[0])] = words[3] == "up"
        }
        return states
    }
}
