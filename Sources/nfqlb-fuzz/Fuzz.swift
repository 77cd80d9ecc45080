// Fuzz targets for the parts of nfqlb that read what others send it (docs/ARCHITECTURE.md, "Fuzzing"):
//   packet   one packet through the handler of a configuration with every mode, both families, TCP and UDP,
//            persistence and `ops`; the connection tracker is kept across inputs, so sequences of packets
//            build and tear down connections. The first byte chooses the queue's packet info (GSO,
//            checksum not ready), the rest is the packet.
//   netlink  the kernel's messages: a queued-packet message (NFQNL_MSG_PACKET) and a ctnetlink event, and an
//            event that parses is applied to the offload ledger.
//   config   any bytes as the YAML configuration: a config or `file:line: reason`, never a trap; a config that
//            loads is turned into its iptables rules and a handler.
//   control  lines for the control socket: each parsed as a request and, when it is one, answered by a control
//            plane over a balancer (live changes accumulate across inputs, so sequences of changes are made;
//            the plane starts afresh every 500 inputs). Every answer must be one line of JSON.
//   probe    what real servers answer health probes: the bytes as a DNS response to a query whose id is the
//            input's first two bytes (name, type and rcode chosen by the third), and as an HTTP answer judged
//            against status ranges, a body regex and a SHA-256.
//   sync     connection-sync messages between balancers: the bytes as they arrive (the tag must refuse them),
//            and the same bytes tagged with the key, so the record parser sees them; a message that decodes
//            encodes back to the same bytes.
//
// Two builds of the same file:
//   swift build --scratch-path .build-fuzz --product nfqlb-fuzz -Xswiftc -sanitize=fuzzer,address -Xswiftc -DFUZZING
//     libFuzzer's driver: NFQLB_FUZZ_TARGET=packet .build-fuzz/debug/nfqlb-fuzz -max_total_time=60 CORPUS_DIR
//   swift build --product nfqlb-fuzz
//     replays files: nfqlb-fuzz TARGET FILE... (the seed corpora in Fuzz/corpus/TARGET, and crash files)
// `scripts/fuzz.sh` does both.
import Foundation
import Logging
@testable import QueueBalancer

/// The fuzz targets by name; each takes one input and must return (any trap is a finding).
enum FuzzTarget: String, CaseIterable {
    case packet, netlink, config, control, probe, sync

    func run(_ input: UnsafeRawBufferPointer) {
        switch self {
        case .packet: PacketFuzzer.shared.run(input)
        case .netlink: NetlinkFuzzer.shared.run(input)
        case .config: ConfigFuzzer.run(input)
        case .control: ControlFuzzer.shared.run(input)
        case .probe: ProbeFuzzer.run(input)
        case .sync: SyncFuzzer.run(input)
        }
    }
}

/// One packet at a time through a handler that keeps its connections.
final class PacketFuzzer {
    /// Fuzzing is single-threaded: one instance, used from the fuzzer's thread only.
    nonisolated(unsafe) static let shared = PacketFuzzer()

    /// Every mode and both families; the TUN paths are given (no route lookup while fuzzing).
    static let yaml = """
    queues: [0]
    max-connections: 4096
    fullnat-ports: 50000-50999
    services:
      - { vip: 203.0.113.10, port: 80, protocol: tcp, mode: nat, scheduler: wlc, persistence: 60,
          reals: [ { address: 198.51.100.11, port: 8080 }, { address: 198.51.100.12, port: 8080, weight: 2 } ] }
      - { vip: 203.0.113.10, port: 81, protocol: tcp, mode: fullnat, scheduler: rr, local-addresses: [198.51.100.1],
          reals: [ { address: 198.51.100.11 }, { address: 198.51.100.13 } ] }
      - { vip: 203.0.113.10, port: 82, protocol: tcp, mode: dr, scheduler: sh, reals: [ { address: 198.51.100.14 } ] }
      - { vip: 203.0.113.10, port: 83, protocol: tcp, mode: tun, scheduler: mh,
          reals: [ { address: 198.51.100.15 }, { address: "2001:db8:5::15" } ] }
      - { vip: 203.0.113.10, port: 84, protocol: tcp, mode: nat, offload: conntrack, reals: [ { address: 198.51.100.16 } ] }
      - { vip: 203.0.113.10, port: 53, protocol: udp, mode: nat, reals: [ { address: 198.51.100.11 } ] }
      - { vip: 203.0.113.10, port: 54, protocol: udp, mode: nat, ops: true, reals: [ { address: 198.51.100.12 } ] }
      - { vip: "2001:db8:f::10", port: 80, protocol: tcp, mode: nat, reals: [ { address: "2001:db8:5::11", port: 8080 } ] }
      - { vip: "2001:db8:f::10", port: 81, protocol: tcp, mode: fullnat, local-addresses: ["2001:db8:5::1"],
          reals: [ { address: "2001:db8:5::12" } ] }
      - { vip: "2001:db8:f::10", port: 82, protocol: tcp, mode: dr, reals: [ { address: "2001:db8:5::14" } ] }
      - { vip: "2001:db8:f::10", port: 83, protocol: tcp, mode: tun, reals: [ { address: "2001:db8:5::16" }, { address: 198.51.100.17 } ] }
      - { vip: "2001:db8:f::10", port: 53, protocol: udp, mode: fullnat, local-addresses: ["2001:db8:5::1"],
          reals: [ { address: "2001:db8:5::11" } ] }
    """

    let handler: PacketHandler
    /// The kernel's buffer stand-in: the largest packet a queue delivers, and room for what a handler writes
    /// in place (an ICMP answer built over the packet).
    let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 70_000, alignment: 16)
    var now: UInt64 = 1_000
    let totals = DatapathCounters()

    init() {
        let config = try! ConfigLoader.parse(yaml: PacketFuzzer.yaml, file: "fuzz.yaml")
        let v4 = TunnelPath(source: IPAddress("198.51.100.1")!, mtu: 1500)
        let v6 = TunnelPath(source: IPAddress("2001:db8:5::1")!, mtu: 1500)
        var paths: [IPAddress: TunnelPath] = [:]
        for service in config.services where service.mode == .tun {
            for real in service.reals { paths[real.address] = real.address.isIPv4 ? v4 : v6 }
        }
        handler = PacketHandler(config: config, tracker: ConnectionTracker(config: config), tunnelPaths: paths, now: now)
    }

    func run(_ input: UnsafeRawBufferPointer) {
        guard let first = input.first else { return }
        let packet = input.dropFirst().prefix(65_535)
        let bytes = UnsafeMutableRawBufferPointer(rebasing: buffer[0..<packet.count])
        if !packet.isEmpty { bytes.copyMemory(from: UnsafeRawBufferPointer(rebasing: packet)) }
        // Time moves on by the low bits of the info byte: some inputs outlive connections, most do not.
        now &+= UInt64(first >> 2) * 1_000
        var counters = handler.counterBatch(worker: 0)
        handler.enterBatch(worker: 0)
        let verdict = handler.handle(bytes, info: PacketInfo(rawValue: UInt32(first & 3)), now: now, counters: &counters)
        handler.leaveBatch(worker: 0)
        // What the verdict hands back must lie inside the buffer it was decided on.
        switch verdict {
        case .acceptReplaced(let offset, let length), .sendReplaced(let offset, let length, _):
            precondition(offset >= 0 && length >= 0 && offset + length <= buffer.count, "verdict beyond the buffer")
        case .acceptEncapsulated(let header), .sendEncapsulated(let header):
            precondition(header.innerLength <= bytes.count, "tunnelled length beyond the packet")
        default: break
        }
        handler.housekeeping(now: now, counters: totals)
    }
}

/// Kernel messages, as the queue worker and the offload monitor receive them.
final class NetlinkFuzzer {
    nonisolated(unsafe) static let shared = NetlinkFuzzer()
    let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 70_000, alignment: 16)
    var ledger = OffloadLedger(registry: RealServerRegistry(capacity: 16))

    func run(_ input: UnsafeRawBufferPointer) {
        let bytes = UnsafeMutableRawBufferPointer(rebasing: buffer[0..<min(input.count, buffer.count)])
        if !bytes.isEmpty { bytes.copyMemory(from: UnsafeRawBufferPointer(rebasing: input.prefix(bytes.count))) }
        if let message = PacketMessage.parse(bytes) {
            precondition(message.payload.count <= bytes.count, "payload beyond the message")
        }
        if let entry = ConntrackEntry.parse(UnsafeRawBufferPointer(bytes)) {
            _ = ledger.apply(entry, owners: [:])
        }
    }
}

/// Any bytes as the configuration file.
enum ConfigFuzzer {
    static func run(_ input: UnsafeRawBufferPointer) {
        let text = String(decoding: input, as: UTF8.self)
        do {
            let config = try ConfigLoader.parse(yaml: text, file: "fuzz.yaml")
            _ = IptablesRules.restoreInput(for: config)
            _ = IptablesRules.restoreInput(for: config, family: .v6)
            _ = IptablesRules.routeCommands(for: config)
            // A handler too (its tables, forwarders, port allocators), within a size that keeps inputs fast.
            if config.maxConnections <= 65_536 {
                _ = PacketHandler(config: config, tracker: ConnectionTracker(config: config), now: 0)
            }
        } catch {
            precondition(!error.description.isEmpty)
        }
    }
}

/// Lines for the control socket, answered by a control plane whose changes accumulate.
final class ControlFuzzer {
    nonisolated(unsafe) static let shared = ControlFuzzer()
    static let yaml = """
    queues: [0]
    max-connections: 4096
    services:
      - { vip: 203.0.113.10, port: 80, protocol: tcp, mode: nat, scheduler: wlc,
          reals: [ { address: 198.51.100.11, port: 8080 }, { address: 198.51.100.12, port: 8080, weight: 2 } ] }
      - { vip: 203.0.113.10, port: 53, protocol: udp, mode: dr, reals: [ { address: 198.51.100.13 } ] }
    """
    var plane = ControlFuzzer.makePlane()
    var inputs = 0

    static func makePlane() -> ControlPlane {
        let logger = Logger(label: "fuzz") { _ in SwiftLogNoOpLogHandler() }
        let config = try! ConfigLoader.parse(yaml: yaml)
        return ControlPlane(balancer: Balancer(config: config, logger: logger), configPath: "/nonexistent/nfqlb.yaml",
                            rules: nil, logger: logger)
    }

    func run(_ input: UnsafeRawBufferPointer) {
        inputs += 1
        if inputs % 500 == 0 { plane = Self.makePlane() }
        for line in input.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: true) {
            let answer: ControlAnswer
            switch ControlRequest.parse(line) {
            case .success(let request): answer = plane.answer(request, uid: 0)
            case .failure(let refusal): answer = refusal
            }
            let text = answer.line
            precondition(text.hasSuffix("\n") && text.dropLast().firstIndex(of: "\n") == nil, "an answer of more than one line")
            precondition((try? JSONValue.parse(Array(text.utf8))) != nil, "an answer that is not JSON")
        }
        plane.tick()
    }
}

#if FUZZING
/// The target named by NFQLB_FUZZ_TARGET, read once.
nonisolated(unsafe) private let selected: FuzzTarget = {
    let name = ProcessInfo.processInfo.environment["NFQLB_FUZZ_TARGET"] ?? ""
    guard let target = FuzzTarget(rawValue: name) else {
        FileHandle.standardError.write(Data("set NFQLB_FUZZ_TARGET to one of: \(FuzzTarget.allCases.map(\.rawValue).joined(separator: " "))\n".utf8))
        exit(2)
    }
    return target
}()

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    selected.run(UnsafeRawBufferPointer(start: data, count: size))
    return 0
}

/// libFuzzer's driver (`int LLVMFuzzerRunDriver(int *argc, char ***argv, int (*cb)(const uint8_t *, size_t))`).
@_silgen_name("LLVMFuzzerRunDriver")
func runFuzzerDriver(_ argc: UnsafeMutablePointer<CInt>,
                     _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>>,
                     _ callback: @convention(c) (UnsafePointer<UInt8>?, Int) -> CInt) -> CInt

/// The program's entry point: SwiftPM links an executable target's `main` to `<target>_main`, so this takes
/// its place and hands over to libFuzzer's driver.
@_cdecl("nfqlb_fuzz_main")
public func fuzzMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>) -> CInt {
    _ = selected
    var count = argc
    var arguments = argv
    return runFuzzerDriver(&count, &arguments, fuzzOneInput)
}
#else
@main
struct Replay {
    static func main() {
        let arguments = CommandLine.arguments.dropFirst()
        guard let name = arguments.first, let target = FuzzTarget(rawValue: name) else {
            FileHandle.standardError.write(Data("usage: nfqlb-fuzz \(FuzzTarget.allCases.map(\.rawValue).joined(separator: "|")) FILE...\n".utf8))
            exit(2)
        }
        var count = 0
        for path in arguments.dropFirst() {
            guard let data = FileManager.default.contents(atPath: path) else {
                FileHandle.standardError.write(Data("nfqlb-fuzz: cannot read \(path)\n".utf8))
                exit(1)
            }
            data.withUnsafeBytes { target.run($0) }
            count += 1
        }
        print("nfqlb-fuzz \(name): \(count) inputs replayed")
    }
}
#endif

/// Health probe answers: a DNS response and an HTTP answer, judged; a verdict or "not ours", never a trap.
enum ProbeFuzzer {
    static let queries: [DNSQuery] = {
        var a = DNSQuery()
        a.name = "www.example"
        a.type = 1
        var nx = a
        nx.rcode = 3
        return [DNSQuery(), a, nx]
    }()

    static let http: HealthCheck.HTTPProbe = {
        var http = HealthCheck.HTTPProbe()
        http.expectStatus = [200...299, 302...302]
        http.bodyRegex = "^ok"
        http.bodySHA256 = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        return http
    }()

    static func run(_ input: UnsafeRawBufferPointer) {
        let bytes = Array(input)
        guard bytes.count >= 3 else { return }
        let id = UInt16(bytes[0]) << 8 | UInt16(bytes[1])
        let query = queries[Int(bytes[2]) % queries.count]
        if let verdict = query.judge(response: Array(bytes[3...]), id: id), verdict.success {
            // A success must have been a response to this query: its id, QR set, and the rcode asked for.
            precondition(bytes.count >= 15 && UInt16(bytes[3]) << 8 | UInt16(bytes[4]) == id && bytes[5] & 0x80 != 0)
            precondition(bytes[6] & 0x0F == (query.rcode ?? 0))
        }
        _ = HealthCheck.Probe.judge(http: http, answer: bytes)
    }
}

/// Sync messages: untagged bytes are refused by their tag; tagged ones reach the record parser.
enum SyncFuzzer {
    static let key = Array("nfqlb fuzz key".utf8)

    static func run(_ input: UnsafeRawBufferPointer) {
        let bytes = Array(input)
        if case .success = SyncMessage.decode(bytes, key: key) {
            precondition(bytes.count >= SyncMessage.tagSize, "an untagged input passed authentication")
        }
        let tagged = bytes + SyncMessage.tag(bytes[...], key: key)
        if case .success(let message) = SyncMessage.decode(tagged, key: key) {
            precondition(message.encoded(key: key) == tagged, "a decoded message does not encode back to its bytes")
        }
    }
}
