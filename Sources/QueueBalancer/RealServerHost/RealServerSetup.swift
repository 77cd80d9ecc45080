import Foundation

/// The real-server side of LVS DR and TUN, the recipe an LVS user otherwise types by hand: the VIP on `lo`
/// (so the real server accepts packets addressed to it) and, for an IPv4 VIP, ARP settings so that it never
/// answers ARP for the VIP (`arp_ignore=1`: answer only for addresses of the receiving interface;
/// `arp_announce=2`: never use the VIP as the source of ARP requests). Only the balancer may own the VIP on the
/// shared L2 network. An IPv6 VIP needs no setting: Linux answers neighbour solicitations only for addresses of
/// the interface they arrive on, never for one on `lo` (verified on this kernel).
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

    /// The mangle INPUT chain (of iptables, or ip6tables) that queues tunnelled packets to `nfqlb decap` (TUN
    /// on kernels without ipip/ip6_tunnel).
    public static let decapChain = "NFQLB-DECAP"

    /// Puts `vip` on `lo` (IPv4: and applies the ARP sysctls); for TUN also queues the tunnel protocols (4 and
    /// 41, in iptables and ip6tables: the outer packet has the real server's family, which may differ from the
    /// VIP's) at mangle INPUT (after reassembly) to `decapQueue`, where `nfqlb decap` turns each into its inner
    /// packet. Returns what it did, one line per change.
    public func setup(vip: IPAddress, mode: Mode, decapQueue: UInt16 = 0) throws(Failure) -> [String] {
        try makeStateDirectory()
        var done: [String] = []
        let savedPath = stateDirectory + "/sysctl.saved"
        var saved = (try? String(contentsOfFile: savedPath, encoding: .utf8)) ?? ""
        for (key, value) in RealServerSetup.sysctls where vip.isIPv4 {
            let path = "\(sysctlRoot)/\(key)"
            guard let old = read(path) else { continue }
            if old == value { continue }
            if !saved.split(separator: "\n").contains(where: { $0.hasPrefix(key + " ") }) { saved += "\(key) \(old)\n" }
            try write(value, to: path)
            done.append("sysctl \(key.replacingOccurrences(of: "/", with: ".")) = \(value) (was \(old))")
        }
        try save(saved, to: savedPath)
        let host = vip.isIPv4 ? "/32" : "/128"
        if try !vipIsOnLoopback(vip) {
            try ip([vip.isIPv4 ? "-4" : "-6", "addr", "add", "\(vip)\(host)", "dev", "lo"])
            try save("", to: stateDirectory + "/vip-\(vip)")
            done.append("added \(vip)\(host) to lo")
        }
        if mode == .tun {
            // The outer packet has the real server's family, the inner one the VIP's: queue both tunnel
            // protocols (4: IPv4 inside, 41: IPv6 inside) in both families' mangle INPUT.
            let chain = RealServerSetup.decapChain
            for tool in ["iptables", "ip6tables"] {
                let rules = ["4", "41"].map { proto in
                    ["-p", proto, "-m", "comment", "--comment", "nfqlb decap: protocol \(proto) to queue \(decapQueue)",
                     "-j", "NFQUEUE", "--queue-num", "\(decapQueue)"]
                }
                let chainExists = runCapturingOutput([tool, "-w", "-t", "mangle", "-S", chain])?.status == 0
                let rulesExist = chainExists && rules.allSatisfy {
                    runCapturingOutput([tool, "-w", "-t", "mangle", "-C", chain] + $0)?.status == 0
                }
                if !rulesExist {
                    try mangle(tool, chainExists ? ["-F", chain] : ["-N", chain])
                    for rule in rules { try mangle(tool, ["-A", chain] + rule) }
                    done.append("queued tunnelled packets (protocols 4 and 41) at \(tool) mangle INPUT to NFQUEUE \(decapQueue) for nfqlb decap")
                }
                if runCapturingOutput([tool, "-w", "-t", "mangle", "-C", "INPUT", "-j", chain])?.status != 0 {
                    try mangle(tool, ["-I", "INPUT", "1", "-j", chain])
                }
                try save("", to: stateDirectory + (tool == "iptables" ? "/decap" : "/decap6"))
            }
        }
        return done
    }

    private func mangle(_ tool: String, _ arguments: [String]) throws(Failure) {
        guard let (status, _) = runCapturingOutput([tool, "-w", "-t", "mangle"] + arguments), status == 0 else {
            throw Failure(description: "`\(tool) -t mangle \(arguments.joined(separator: " "))` failed (is iptables installed? root?)")
        }
    }

    /// Removes `vip` from `lo` if ``setup(vip:mode:)`` added it; restores the sysctls when no VIP it added
    /// remains. Returns what it did.
    public func teardown(vip: IPAddress) throws(Failure) -> [String] {
        var done: [String] = []
        let marker = stateDirectory + "/vip-\(vip)"
        if FileManager.default.fileExists(atPath: marker) {
            let host = vip.isIPv4 ? "/32" : "/128"
            if try vipIsOnLoopback(vip) {
                try ip([vip.isIPv4 ? "-4" : "-6", "addr", "del", "\(vip)\(host)", "dev", "lo"])
                done.append("removed \(vip)\(host) from lo")
            }
            try? FileManager.default.removeItem(atPath: marker)
        }
        let remaining = (try? FileManager.default.contentsOfDirectory(atPath: stateDirectory))?
            .filter { $0.hasPrefix("vip-") } ?? []
        if remaining.isEmpty {
            for (marker, tool) in [("/decap", "iptables"), ("/decap6", "ip6tables")]
            where FileManager.default.fileExists(atPath: stateDirectory + marker) {
                let chain = RealServerSetup.decapChain
                while runCapturingOutput([tool, "-w", "-t", "mangle", "-D", "INPUT", "-j", chain])?.status == 0 {}
                _ = runCapturingOutput([tool, "-w", "-t", "mangle", "-F", chain])
                _ = runCapturingOutput([tool, "-w", "-t", "mangle", "-X", chain])
                done.append("removed the tunnel queue rule (\(tool) mangle \(chain))")
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
        guard let (status, output) = runCapturingOutput(["ip", vip.isIPv4 ? "-4" : "-6", "-o", "addr", "show", "dev", "lo"]),
              status == 0 else {
            throw Failure(description: "cannot run `ip addr show dev lo` (is iproute2 installed?)")
        }
        return output.contains(" \(vip)\(vip.isIPv4 ? "/32" : "/128") ")
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
