// nfqlb-bench: drives the PacketHandler (parse -> track/schedule -> NAT rewrite) over synthetic traffic, without
// the kernel, and prints the cost per packet. Each round is one new TCP connection: client SYN, server SYN-ACK,
// client ACK, client data, plus one UDP datagram, each copied from a template into one preallocated buffer.
//
// Usage: nfqlb-bench [PACKETS=500000] [plain|gso]
//          gso: as a queue with NFQA_CFG_F_GSO delivers them: checksums unfinished, and the data packet a
//          16 KB GSO super-packet (the other packets' checksums are completed by the handler)
//        nfqlb-bench maglev      Maglev table balance and disruption for N = 10 and 100 (README, scheduler table)
//        nfqlb-bench memory [N]  the connection table's bytes per tracked connection with N (default 10^6)
//                                connections made by SYNs through the handler, and the process's resident growth
// With an LD_PRELOAD malloc counter, two runs with different PACKETS give the allocations per packet
// (scripts/check-allocations.sh): the loop must allocate nothing.
import Foundation
import QueueBalancer

if CommandLine.arguments.dropFirst().first == "maglev" {
    maglevReport()
    exit(0)
}
if CommandLine.arguments.dropFirst().first == "memory" {
    memoryReport(connections: CommandLine.arguments.count > 2 ? Int(CommandLine.arguments[2]) ?? 1_000_000 : 1_000_000)
    exit(0)
}

let packets = CommandLine.arguments.count > 1 ? Int(CommandLine.arguments[1]) ?? 500_000 : 500_000
let gso = CommandLine.arguments.count > 2 && CommandLine.arguments[2] == "gso"

func packet(source: [UInt8], sport: UInt16, destination: [UInt8], dport: UInt16, proto: UInt8, flags: UInt8,
            payload: Int = 0) -> [UInt8] {
    let l4: [UInt8] = proto == 6
        ? [UInt8(sport >> 8), UInt8(sport & 0xFF), UInt8(dport >> 8), UInt8(dport & 0xFF), 0, 0, 0, 1, 0, 0, 0, 0, 0x50, flags, 0xFF, 0xFF, 0, 0, 0, 0]
            + [UInt8](repeating: 0x5A, count: payload)
        : [UInt8(sport >> 8), UInt8(sport & 0xFF), UInt8(dport >> 8), UInt8(dport & 0xFF), 0, 12, 0, 0, 1, 2, 3, 4]
    let total = 20 + l4.count
    return [0x45, 0, UInt8(total >> 8), UInt8(total & 0xFF), 0, 0, 0x40, 0, 64, proto, 0, 0] + source + destination + l4
}

let client: [UInt8] = [192, 0, 2, 2], vip: [UInt8] = [203, 0, 113, 10], rip: [UInt8] = [198, 51, 100, 11]
let templates: [[UInt8]] = [
    packet(source: client, sport: 1, destination: vip, dport: 80, proto: 6, flags: 0x02),
    packet(source: rip, sport: 8080, destination: client, dport: 1, proto: 6, flags: 0x12),
    packet(source: client, sport: 1, destination: vip, dport: 80, proto: 6, flags: 0x10),
    packet(source: client, sport: 1, destination: vip, dport: 80, proto: 6, flags: 0x18, payload: gso ? 16_000 : 0),
    packet(source: client, sport: 1, destination: vip, dport: 53, proto: 17, flags: 0),
]
// Offsets of the client port in each template (source for client packets, destination for the reply).
let clientPortOffset = [20, 22, 20, 20, 20]

var web = VirtualService(vip: IPAddress("203.0.113.10")!, port: 80, transport: .tcp, mode: .nat, scheduler: .wlc,
                         reals: [RealServer(address: IPAddress("198.51.100.11")!, port: 8080, weight: 1)])
web.persistence = 300   // templates on the path too: looked up per new connection, refreshed per packet
var config = BalancerConfig(queues: [0], services: [
    web,
    VirtualService(vip: IPAddress("203.0.113.10")!, port: 53, transport: .udp, mode: .nat, scheduler: .rr,
                   reals: [RealServer(address: IPAddress("198.51.100.11")!, port: 5353, weight: 1)]),
])
config.maxConnections = 1 << 20
// wlc reads the connection counts the tracker keeps in its registry.
let handler = PacketHandler(config: config, tracker: ConnectionTracker(config: config))
let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 65536, alignment: 8)
// What the kernel says about each template's buffer: nothing on a queue without GSO.
let infos: [PacketInfo] = templates.indices.map { index in
    guard gso else { return [] }
    return index == 3 ? [.gso, .checksumNotReady] : [.checksumNotReady]
}
// With the worker's per-real-server counters, as a queue worker counts.
var counters = handler.counterBatch(worker: 0)
var verdicts = 0

// Under scripts/check-allocations.sh the LD_PRELOADed malloc counter marks the loop, so that only what the
// packet path allocates is compared (not start-up, nor the formatting of the results, whose allocations vary
// with the digits printed).
typealias AllocationMark = @convention(c) () -> Void
let allocationMark = dlsym(nil, "nfqlb_malloc_count_mark").map { unsafeBitCast($0, to: AllocationMark.self) }
allocationMark?()
let start = DispatchTime.now().uptimeNanoseconds
var handled = 0
var round = 0
while handled < packets {
    // A new client endpoint per round: address byte 3 and the port walk through 2^24 combinations.
    let port = UInt16(truncatingIfNeeded: 1024 + round % 60_000)
    let host = UInt8(truncatingIfNeeded: 2 + round / 60_000)
    for (index, template) in templates.enumerated() where handled < packets {
        template.withUnsafeBytes { buffer.copyMemory(from: $0) }
        let slice = UnsafeMutableRawBufferPointer(rebasing: buffer[0..<template.count])
        slice.storeBytes(of: port.bigEndian, toByteOffset: clientPortOffset[index], as: UInt16.self)
        slice[index == 1 ? 19 : 15] = host
        if handler.handle(slice, info: infos[index], now: 1_000, counters: &counters) == .acceptRewritten { verdicts += 1 }
        handled += 1
    }
    round += 1
}
let elapsed = DispatchTime.now().uptimeNanoseconds - start
allocationMark?()
print("packets \(handled), rewritten \(verdicts), connections \(counters[.connectionsCreated]), dropped \(counters[.droppedNoConnection] + counters[.droppedMalformed])")
print("ns/packet \(String(format: "%.1f", Double(elapsed) / Double(max(handled, 1))))")

/// Maglev (mh) as the Maglev paper measures it: balance (entries of the most and least loaded backend) and
/// disruption (share of table entries that change backend when one of N backends is removed or added; the
/// ideal is the removed or added backend's own share, 1/N or 1/(N+1)).
func maglevReport() {
    print("Maglev table, M = 65537, equal weights")
    print("N    max/min entries  max/mean  remove one: moved (ideal)   add one: moved (ideal)")
    for n in [10, 100] {
        let names = (0..<(n + 1)).map { Endpoint(address: IPAddress(ipv4: 0xC633_6400 | UInt32($0 + 1)), port: 80) }
        let weights = [UInt32](repeating: 1, count: n)
        let base = MaglevScheduler.populate(weights: weights, names: Array(names[0..<n]), size: 65537)
        var counts = [Int](repeating: 0, count: n)
        for entry in base { counts[Int(entry)] += 1 }
        // Remove backend 0: keep the others' names, so their permutations do not change.
        let removed = MaglevScheduler.populate(weights: [UInt32](repeating: 1, count: n - 1),
                                               names: Array(names[1..<n]), size: 65537)
        let movedOnRemove = zip(base, removed).filter { old, new in names[Int(old)] != names[Int(new) + 1] }.count
        let added = MaglevScheduler.populate(weights: [UInt32](repeating: 1, count: n + 1), names: names, size: 65537)
        let movedOnAdd = zip(base, added).filter { old, new in old != new }.count
        let mean = 65537.0 / Double(n)
        func pct(_ x: Int) -> String { String(format: "%.2f%%", 100 * Double(x) / 65537) }
        print(String(format: "%-4d %6d/%-6d       %.3f     %@ (%.2f%%)            %@ (%.2f%%)",
                     n, counts.max()!, counts.min()!, Double(counts.max()!) / mean,
                     pct(movedOnRemove), 100.0 / Double(n), pct(movedOnAdd), 100.0 / Double(n + 1)))
    }
}

/// The resident set of this process, in bytes (/proc/self/statm, second field, in pages).
func residentBytes() -> Int {
    guard let text = try? String(contentsOfFile: "/proc/self/statm", encoding: .utf8),
          let pages = text.split(separator: " ").dropFirst().first.flatMap({ Int($0) }) else { return 0 }
    return pages * Int(sysconf(Int32(_SC_PAGESIZE)))
}

/// Fills a table sized for `connections` with that many TCP connections (one SYN each, through the handler,
/// NAT to one real server) and reports the table's bytes per connection and the resident growth.
func memoryReport(connections: Int) {
    var config = BalancerConfig(queues: [0], services: [
        VirtualService(vip: IPAddress("203.0.113.10")!, port: 80, transport: .tcp, mode: .nat, scheduler: .rr,
                       reals: [RealServer(address: IPAddress("198.51.100.11")!, port: 8080, weight: 1)]),
    ])
    config.maxConnections = connections
    let before = residentBytes()
    let tracker = ConnectionTracker(config: config)
    let handler = PacketHandler(config: config, tracker: tracker)
    let allocated = residentBytes()
    // (main.swift's globals are not set yet when this runs: its own addresses.)
    let syn = packet(source: [192, 0, 2, 2], sport: 1, destination: [203, 0, 113, 10], dport: 80, proto: 6, flags: 0x02)
    let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: syn.count, alignment: 8)
    var counters = CounterBatch()
    for n in 0..<connections {
        syn.withUnsafeBytes { buffer.copyMemory(from: $0) }
        // Client 192.0.A.B:port, 60,000 ports per address.
        buffer.storeBytes(of: UInt16(1024 + n % 60_000).bigEndian, toByteOffset: 20, as: UInt16.self)
        buffer[14] = UInt8(truncatingIfNeeded: n / 60_000 / 256)
        buffer[15] = UInt8(truncatingIfNeeded: n / 60_000 % 256)
        _ = handler.handle(buffer, info: [], now: 1_000, counters: &counters)
    }
    let filled = residentBytes()
    let table = tracker.tableBytes
    print("connections \(tracker.count) of \(connections) (dropped: table full \(counters[.droppedTableFull]), conflicts \(counters[.droppedConflict]))")
    print(String(format: "table: %d bytes for %d connections, %.1f bytes per connection", table.bytes, table.capacity,
                 Double(table.bytes) / Double(max(table.capacity, 1))))
    print(String(format: "resident: +%.1f MiB at allocation, +%.1f MiB filled: %.1f bytes per tracked connection",
                 Double(allocated - before) / 1_048_576, Double(filled - before) / 1_048_576,
                 Double(filled - before) / Double(max(tracker.count, 1))))
}
