import Foundation
import Testing

/// The nfqlb command as a user meets it: exit statuses and the one-line errors. Runs the built binary.
@Suite struct CommandLineTests {
    struct Result {
        var status: Int32
        var output: String
        var error: String
    }

    static func nfqlb(_ arguments: [String], wrappedIn wrapper: [String] = []) throws -> Result {
        let binary = ProcessInfo.processInfo.environment["NFQLB"]
            ?? EndToEnd.packageRoot.appendingPathComponent(".build/debug/nfqlb").path
        return try run(wrapper + [binary] + arguments)
    }

    static func write(_ text: String) throws -> String {
        let path = NSTemporaryDirectory() + "nfqlb-cli-\(UUID().uuidString).yaml"
        try text.write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    static let example = EndToEnd.packageRoot.appendingPathComponent("examples/nat.yaml").path

    /// scripts/install.sh into a scratch root: every file in place, and the unit passes `systemd-analyze verify`.
    @Test(.enabled(if: FileManager.default.isExecutableFile(atPath: "/usr/bin/systemd-analyze"), "needs systemd-analyze"))
    func installPutsTheServiceInPlaceAndItsUnitVerifies() throws {
        let root = NSTemporaryDirectory() + "nfqlb-install-\(UUID().uuidString.prefix(8))"
        defer { try? FileManager.default.removeItem(atPath: root) }
        let binary = ProcessInfo.processInfo.environment["NFQLB"]
            ?? EndToEnd.packageRoot.appendingPathComponent(".build/debug/nfqlb").path
        let result = try Self.run(["/bin/bash", EndToEnd.packageRoot.appendingPathComponent("scripts/install.sh").path,
                                   "--destdir", root], environment: ["NFQLB": binary])
        #expect(result.status == 0, "\(result.output)\(result.error)")
        #expect(result.output.contains("dist/nfqlb.service passes systemd-analyze verify"))
        for file in ["usr/local/sbin/nfqlb", "usr/local/lib/nfqlb/iptables-setup.sh", "etc/nfqlb/lb.yaml",
                     "etc/systemd/system/nfqlb.service"] {
            #expect(FileManager.default.fileExists(atPath: "\(root)/\(file)"), "\(file) not installed")
        }
        let unit = try String(contentsOfFile: "\(root)/etc/systemd/system/nfqlb.service", encoding: .utf8)
        #expect(unit.contains("ExecReload=/usr/local/sbin/nfqlb reload"))
        #expect(unit.contains("CapabilityBoundingSet=CAP_NET_ADMIN CAP_NET_RAW"))
    }

    /// Runs `command` (found on PATH by env) with `extra` added to the environment.
    static func run(_ command: [String], environment extra: [String: String] = [:]) throws -> Result {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = command
        process.environment = ProcessInfo.processInfo.environment.merging(extra) { _, new in new }
        let out = Pipe(), err = Pipe()
        process.standardOutput = out
        process.standardError = err
        try process.run()
        let output = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        let error = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        return Result(status: process.terminationStatus, output: output, error: error)
    }

    @Test func checkAcceptsTheExample() throws {
        let result = try Self.nfqlb(["check", "--config", Self.example])
        #expect(result.status == 0)
        #expect(result.output.contains("203.0.113.10:80/tcp nat wrr: 198.51.100.11:8080 w1, 198.51.100.12:8080 w2"))
    }

    @Test func badConfigExitsTwoWithFileLineAndReason() throws {
        let path = try Self.write("queues: [0]\nservices:\n  - vip: 203.0.113.10\n    port: 80\n    protocol: tcp\n    mode: nat\n    reals:\n      - { address: 198.51.100.11, weight: 70000 }\n")
        defer { unlink(path) }
        for command in ["check", "rules", "run"] {
            let result = try Self.nfqlb([command, "--config", path])
            #expect(result.status == 2, "\(command)")
            #expect(result.error == "nfqlb: \(path):8: weight 70000 is out of range 0..65535\n", "\(command)")
            #expect(result.output.isEmpty)
        }
    }

    @Test func rulesPrintRestoreInput() throws {
        let result = try Self.nfqlb(["rules", "--config", Self.example])
        #expect(result.status == 0)
        #expect(result.output.contains("*raw\n:NFQLB-PREROUTING - [0:0]\n"))
        #expect(result.output.hasSuffix("COMMIT\n"))
    }

    @Test func helpTeaches() throws {
        let result = try Self.nfqlb(["--help"])
        #expect(result.output.contains("Typical use, as root:"))
        #expect(result.output.contains("scripts/iptables-setup.sh up lb.yaml"))
        let run = try Self.nfqlb(["run", "--help"])
        #expect(run.output.contains("--stats-file <path>"))
    }

    /// The top-level help teaches the four LVS modes, in lines that fit a terminal.
    @Test func helpTeachesTheFourModes() throws {
        let result = try Self.nfqlb(["--help"])
        for mode in ["nat ", "fullnat ", "dr ", "tun "] {
            #expect(result.output.contains("\n  \(mode)"), "\(mode)")
        }
        #expect(result.output.split(separator: "\n").allSatisfy { $0.count <= 80 })
    }

    /// An address is checked where it is given: the usage error names the option.
    @Test func aBadAddressIsAUsageError() throws {
        let result = try Self.nfqlb(["real-server", "setup", "--vip", "203.0.113"])
        #expect(result.status == 64)
        #expect(result.error.contains("The value '203.0.113' is invalid for '--vip <vip>'"))
    }

    /// The IPv4 rules of a config with only IPv6 services are an empty chain: valid, with a hint on stderr.
    @Test func rulesOfTheOtherFamilyAreHinted() throws {
        let path = try Self.write("queues: [0]\nservices:\n  - vip: 2001:db8:f::10\n    port: 80\n    protocol: tcp\n    mode: nat\n    reals:\n      - { address: 2001:db8:5::11 }\n")
        defer { unlink(path) }
        let result = try Self.nfqlb(["rules", "--config", path])
        #expect(result.status == 0)
        #expect(result.output.hasPrefix("# nfqlb IPv4 rules") && !result.output.contains("-j NFQUEUE"))
        #expect(result.error == "nfqlb: \(path) has no ipv4 service; for its ipv6 ones: nfqlb rules --config \(path) --family ipv6\n")
        let v6 = try Self.nfqlb(["rules", "--config", path, "--family", "ipv6"])
        #expect(v6.output.contains("-d 2001:db8:f::10/128 -p tcp -m tcp --dport 80") && v6.error.isEmpty)
    }

    /// In a new, empty network namespace (`unshare -n`) nothing is installed: one line, exit 1.
    @Test(.enabled(if: EndToEnd.canRun, "needs root for unshare -n"))
    func runWithoutRulesExplainsInOneLine() throws {
        let result = try Self.nfqlb(["run", "--config", Self.example], wrappedIn: ["unshare", "-n"])
        #expect(result.status == 1)
        #expect(result.error == "nfqlb: the iptables rules are not installed in this network namespace: run scripts/iptables-setup.sh up \(Self.example) first (or pass --skip-rules-check)\n")
    }

    /// As an unprivileged user binding the queue fails: one line naming CAP_NET_ADMIN, exit 1.
    @Test(.enabled(if: EndToEnd.canRun, "needs root to drop to another user"))
    func runWithoutCapNetAdminExplainsInOneLine() throws {
        let result = try Self.nfqlb(["run", "--config", Self.example, "--skip-rules-check"],
                                    wrappedIn: ["unshare", "-n", "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"])
        #expect(result.status == 1)
        #expect(result.error == "nfqlb: binding NFQUEUE 0: Operation not permitted (nfqlb needs CAP_NET_ADMIN: run it as root)\n")
    }
}
