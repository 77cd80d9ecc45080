import Foundation

/// The real-server side of LVS DR and TUN, the recipe an LVS user otherwise types by hand: the VIP on `lo`
/// (so the real server accepts packets addressed to it) and ARP settings so that it never answers ARP for the
/// VIP (`arp_ignore=1`: answer only for addresses of the receiving interface; `arp_announce=2`: never use the
/// VIP as the source of ARP requests). Only the balancer may own the VIP on the shared L2 network.
///
/// Idempotent both ways. What `setup` changes is recorded per network namespace under /run/nfqlb, so that
/// `teardown` removes the VIPs it added and, when none is left, restores the sysctls it changed, nothing else.
public struct RealServerSetup {
    public enum Mode: String, Sendable, CaseIterable { case dr, tun }

    public struct Failure: Error, CustomStringConvertible {
        public var description: String
    }

    let stateDirectory: String
    let sysctlRoot: String

    /// - Parameters:
    ///   - stateRoot: where the state of each network namespace lives (tests point it elsewhere).
    ///   - sysctlRoot: `/proc/sys` (tests point it at a scratch tree).
    public init(stateRoot: String = "/run/nfqlb", sysctlRoot: String = "/proc/sys") throws(Failure) {
        var info = stat()
        guard stat("/proc/self/ns/net", &info) == 0 else {
            throw Failure(description: "cannot identify the network namespace (/proc/self/ns/net)")
        }
        stateDirectory = "\(stateRoot)/realserver-netns-\(info.st_ino)"
        self.sysctlRoot = sysctlRoot
    }

    /// The sysctls of the LVS real-server recipe.
    static let sysctls: [(String, String)] = [
        ("net/ipv4/conf/all/arp_ignore", "1"),
        ("net/ipv4/conf/all/arp_announce", "2"),
        ("net/ipv4/conf/lo/arp_ignore", "1"),
        ("net/ipv4/conf/lo/arp_announce", "2"),
    ]

    /// The mangle INPUT chain that queues IPIP packets to `nfqlb decap` (TUN on kernels without ipip).
    public static let decapChain = "NFQLB-DECAP"

    /// Puts `vip` on `lo` and applies the ARP sysctls; for TUN also queues IP protocol 4 at mangle INPUT
    /// (after reassembly) to `decapQueue`, where `nfqlb decap` turns it into the inner packet. Returns what it
    /// did, one line per change.
    public func setup(vip: IPAddress, mode: Mode, decapQueue: UInt16 = 0) throws(Failure) -> [String] {
        guard vip.isIPv4 else { throw Failure(description: "IPv6 real servers are not supported yet (\(vip))") }
        try makeStateDirectory()
        var done: [String] = []
        let savedPath = stateDirectory + "/sysctl.saved"
        var saved = (try? String(contentsOfFile: savedPath, encoding: .utf8)) ?? ""
        for (key, value) in RealServerSetup.sysctls {
            let path = "\(sysctlRoot)/\(key)"
            guard let old = read(path) else { continue }
            if old == value { continue }
            if !saved.split(separator: "\n").contains(where: { $0.hasPrefix(key + " ") }) { saved += "\(key) \(old)\n" }
            try write(value, to: path)
            done.append("sysctl \(key.replacingOccurrences(of: "/", with: ".")) = \(value) (was \(old))")
        }
        try save(saved, to: savedPath)
        if try !vipIsOnLoopback(vip) {
            try ip(["addr", "add", "\(vip)/32", "dev", "lo"])
            try save("", to: stateDirectory + "/vip-\(vip)")
            done.append("added \(vip)/32 to lo")
        }
        if mode == .tun {
            let chain = RealServerSetup.decapChain
            let rule = ["-p", "4", "-m", "comment", "--comment", "nfqlb decap: IPIP to queue \(decapQueue)",
                        "-j", "NFQUEUE", "--queue-num", "\(decapQueue)"]
            let chainExists = runCapturingOutput(["iptables", "-w", "-t", "mangle", "-S", chain])?.status == 0
            let ruleExists = chainExists
                && runCapturingOutput(["iptables", "-w", "-t", "mangle", "-C", chain] + rule)?.status == 0
            if !ruleExists {
                try iptables(chainExists ? ["-F", chain] : ["-N", chain])
                try iptables(["-A", chain] + rule)
                done.append("queued IPIP (protocol 4) at mangle INPUT to NFQUEUE \(decapQueue) for nfqlb decap")
            }
            if runCapturingOutput(["iptables", "-w", "-t", "mangle", "-C", "INPUT", "-j", chain])?.status != 0 {
                try iptables(["-I", "INPUT", "1", "-j", chain])
            }
            try save("", to: stateDirectory + "/decap")
        }
        return done
    }

    private func iptables(_ arguments: [String]) throws(Failure) {
        guard let (status, _) = runCapturingOutput(["iptables", "-w", "-t", "mangle"] + arguments), status == 0 else {
            throw Failure(description: "`iptables -t mangle \(arguments.joined(separator: " "))` failed (is iptables installed? root?)")
        }
    }

    /// Removes `vip` from `lo` if ``setup(vip:mode:)`` added it; restores the sysctls when no VIP it added
    /// remains. Returns what it did.
    public func teardown(vip: IPAddress) throws(Failure) -> [String] {
        var done: [String] = []
        let marker = stateDirectory + "/vip-\(vip)"
        if FileManager.default.fileExists(atPath: marker) {
            if try vipIsOnLoopback(vip) {
                try ip(["addr", "del", "\(vip)/32", "dev", "lo"])
                done.append("removed \(vip)/32 from lo")
            }
            try? FileManager.default.removeItem(atPath: marker)
        }
        let remaining = (try? FileManager.default.contentsOfDirectory(atPath: stateDirectory))?
            .filter { $0.hasPrefix("vip-") } ?? []
        if remaining.isEmpty {
            if FileManager.default.fileExists(atPath: stateDirectory + "/decap") {
                let chain = RealServerSetup.decapChain
                while runCapturingOutput(["iptables", "-w", "-t", "mangle", "-D", "INPUT", "-j", chain])?.status == 0 {}
                _ = runCapturingOutput(["iptables", "-w", "-t", "mangle", "-F", chain])
                _ = runCapturingOutput(["iptables", "-w", "-t", "mangle", "-X", chain])
                done.append("removed the IPIP queue rule (mangle \(chain))")
            }
            let savedPath = stateDirectory + "/sysctl.saved"
            let saved = (try? String(contentsOfFile: savedPath, encoding: .utf8)) ?? ""
            for line in saved.split(separator: "\n").reversed() {
                let parts = line.split(separator: " ", maxSplits: 1).map(String.init)
                guard parts.count == 2 else { continue }
                try write(parts[1], to: "\(sysctlRoot)/\(parts[0])")
                done.append("sysctl \(parts[0].replacingOccurrences(of: "/", with: ".")) = \(parts[1]) (restored)")
            }
            try? FileManager.default.removeItem(atPath: stateDirectory)
        }
        return done
    }

    private func vipIsOnLoopback(_ vip: IPAddress) throws(Failure) -> Bool {
        guard let (status, output) = runCapturingOutput(["ip", "-4", "-o", "addr", "show", "dev", "lo"]), status == 0 else {
            throw Failure(description: "cannot run `ip addr show dev lo` (is iproute2 installed?)")
        }
        return output.contains(" \(vip)/32 ")
    }

    private func ip(_ arguments: [String]) throws(Failure) {
        guard let (status, _) = runCapturingOutput(["ip"] + arguments), status == 0 else {
            throw Failure(description: "`ip \(arguments.joined(separator: " "))` failed (root needed)")
        }
    }

    private func read(_ path: String) -> String? {
        (try? String(contentsOfFile: path, encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    private func write(_ value: String, to path: String) throws(Failure) {
        do {
            try (value + "\n").write(toFile: path, atomically: false, encoding: .utf8)
        } catch {
            throw Failure(description: "cannot write \(path): \(error.localizedDescription)")
        }
    }

    private func save(_ text: String, to path: String) throws(Failure) {
        do {
            try text.write(toFile: path, atomically: true, encoding: .utf8)
        } catch {
            throw Failure(description: "cannot write \(path): \(error.localizedDescription)")
        }
    }

    private func makeStateDirectory() throws(Failure) {
        do {
            try FileManager.default.createDirectory(atPath: stateDirectory, withIntermediateDirectories: true)
        } catch {
            throw Failure(description: "cannot create \(stateDirectory): \(error.localizedDescription)")
        }
    }
}
