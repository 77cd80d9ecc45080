/// Keeps the kernel's iptables rules and DR policy routes in step with a running configuration, so that the
/// config, the rules and the datapath never disagree after a reload or a live change.
///
/// nfqlb manages its rules only where they were installed (`scripts/iptables-setup.sh up`, which also sets the
/// sysctls): ``isInstalled``. Each family's rules are replaced in one `iptables-restore --noflush` transaction
/// per table: declaring nfqlb's own chains empties them, the new rules fill them, and the jumps from the
/// built-in chains are added only where missing. DR routes are added (`ip -force -batch`: a rule that exists
/// is left as it is) and recorded in the undo file `iptables-setup.sh down` reads.
public struct RulesInstaller: Sendable {
    /// `/run/nfqlb/netns-INODE`, where iptables-setup.sh keeps what `down` undoes.
    public var stateDirectory: String

    public init(stateDirectory: String) { self.stateDirectory = stateDirectory }

    /// Why rules could not be installed: the tool and what it printed.
    public struct Failure: Error, CustomStringConvertible {
        public var description: String
    }

    /// Whether nfqlb's rules are installed in this network namespace (the jump to its chain exists).
    public static var isInstalled: Bool { IptablesRules.installed() == true }

    /// Each chain nfqlb owns: table, chain, the built-in chain that jumps to it.
    static let chains: [(table: String, chain: String, hook: String)] = [
        ("raw", IptablesRules.chain, "PREROUTING"), ("mangle", ConntrackOffload.chain, "PREROUTING"),
        ("nat", ChainRule.Chain.destinationNAT.rawValue, "PREROUTING"), ("nat", ChainRule.Chain.sourceNAT.rawValue, "POSTROUTING"),
    ]

    /// Installs what `config` needs, replacing nfqlb's previous rules.
    public func install(_ config: BalancerConfig) throws(Failure) {
        for family in [IPFamily.v4, .v6] {
            let tool = family == .v4 ? "iptables" : "ip6tables"
            let input = Self.replacement(IptablesRules.restoreInput(for: config, family: family)) { table, hook, chain in
                Self.jumpExists(tool: tool, table: table, hook: hook, chain: chain)
            } chainExists: { table, chain in
                runCapturingOutput([tool, "-w", "-t", table, "-S", chain])?.status == 0
            }
            if input.isEmpty { continue }
            guard let (status, output) = runCapturingOutput(["\(tool)-restore", "-w", "--noflush"], input: input, errors: true) else {
                throw Failure(description: "\(tool)-restore could not be started (apt-get install iptables)")
            }
            guard status == 0 else { throw Failure(description: "\(tool)-restore refused nfqlb's rules: \(output.trimmed)") }
        }
        try installRoutes(config)
    }

    /// Adds the DR policy routes and rules of `config` (idempotent).
    func installRoutes(_ config: BalancerConfig, families: [IPFamily] = [.v4, .v6]) throws(Failure) {
        for family in families {
            let commands = IptablesRules.routeCommands(for: config, family: family)
            guard !commands.isEmpty else { continue }
            recordUndo(commands, family: family)
            guard let (status, output) = runCapturingOutput(["ip", family == .v4 ? "-4" : "-6", "-force", "-batch", "-"],
                                                            input: commands, errors: true) else {
                throw Failure(description: "ip could not be started (apt-get install iproute2)")
            }
            // `rule add` of a rule that exists fails (File exists) and -force goes on: those are fine.
            let problems = output.split(separator: "\n").filter { !$0.contains("File exists") && !$0.hasPrefix("Command failed") }
            if status != 0 && !problems.isEmpty {
                throw Failure(description: "ip refused the DR routes: \(problems.joined(separator: "; "))")
            }
        }
    }

    /// Puts back the DR routes of `config` that the kernel dropped: a link that goes down takes the routes
    /// through it with it, and they do not come back with the link. Returns the tables restored (empty when
    /// none was missing); throws when they could not be put back (the link is still down).
    public func restoreMissingRoutes(_ config: BalancerConfig) throws(Failure) -> [Int] {
        var restored: [Int] = []
        for family in [IPFamily.v4, .v6] {
            let tables = config.directRoutes.filter { IPFamily(of: $0.realServer) == family }.map(\.table)
            guard !tables.isEmpty,
                  let (status, output) = runCapturingOutput(["ip", family == .v4 ? "-4" : "-6", "-o", "route", "show", "table", "all"]),
                  status == 0 else { continue }
            let present = Set(output.split(separator: "\n").compactMap { line -> Int? in
                let words = line.split(separator: " ")
                guard words.first == "default", let at = words.firstIndex(of: "table"), at + 1 < words.count else { return nil }
                return Int(words[at + 1])
            })
            let missing = tables.filter { !present.contains(Int($0)) }.map { Int($0) }
            guard !missing.isEmpty else { continue }
            try installRoutes(config, families: [family])
            restored += missing
        }
        return restored
    }

    /// `restoreInput` made to replace nfqlb's rules in place: without the jumps that exist already, and with an
    /// empty declaration of each of nfqlb's chains that exists but that the new rules no longer use. Empty when
    /// there is nothing to do.
    static func replacement(_ restoreInput: String, jumpExists: (String, String, String) -> Bool,
                            chainExists: (String, String) -> Bool) -> String {
        var lines: [String] = []
        var table = ""
        var declared = Set<String>()
        for line in restoreInput.split(separator: "\n").map(String.init) where !line.hasPrefix("#") {
            if line.hasPrefix("*") { table = String(line.dropFirst()) }
            if line.hasPrefix(":") { declared.insert("\(table) \(line.dropFirst().split(separator: " ")[0])") }
            let words = line.split(separator: " ")
            if words.count == 5, words[0] == "-I", words[2] == "1", words[3] == "-j",
               jumpExists(table, String(words[1]), String(words[4])) {
                continue
            }
            lines.append(line)
        }
        for (table, chain, _) in chains where !declared.contains("\(table) \(chain)") && chainExists(table, chain) {
            lines += ["*\(table)", ":\(chain) - [0:0]", "COMMIT"]
        }
        return lines.isEmpty ? "" : lines.joined(separator: "\n") + "\n"
    }

    static func jumpExists(tool: String, table: String, hook: String, chain: String) -> Bool {
        guard let (status, text) = runCapturingOutput([tool, "-w", "-t", table, "-S", hook]), status == 0 else { return false }
        return text.split(separator: "\n").contains { $0 == "-A \(hook) -j \(chain)" }
    }

    /// Adds to iptables-setup.sh's undo file (`routes.down`, `routes6.down`) how to remove these routes.
    private func recordUndo(_ commands: String, family: IPFamily) {
        let path = "\(stateDirectory)/\(family == .v4 ? "routes.down" : "routes6.down")"
        var known = Set((try? String(contentsOfFile: path, encoding: .utf8))?.split(separator: "\n").map(String.init) ?? [])
        var undo = known.sorted()
        for line in commands.split(separator: "\n") {
            let words = line.split(separator: " ")
            let command: String
            if words.first == "rule", line.hasPrefix("rule add") {
                command = "rule del" + line.dropFirst("rule add".count)
            } else if words.first == "route", let table = words.last {
                command = "route flush table \(table)"
            } else {
                continue
            }
            if known.insert(command).inserted { undo.append(command) }
        }
        try? replaceFileAtomically(path, with: (undo.joined(separator: "\n") + "\n").utf8, mode: 0o644)
    }
}

extension String {
    var trimmed: String { trimmingCharacters(in: .whitespacesAndNewlines) }
}
