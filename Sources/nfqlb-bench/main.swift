// nfqlb-bench: drives the PacketHandler (parse -> track/schedule -> NAT rewrite) over synthetic traffic, without
// the kernel, and prints the cost per packet. Each round is one new TCP connection: client SYN, server SYN-ACK,
// client ACK, client data, plus one UDP datagram, each copied from a template into one preallocated buffer.
//
// Usage: nfqlb-bench [PACKETS=500000] [plain|gso]
//          gso: as a queue with NFQA_CFG_F_GSO delivers them: checksums unfinished, and the data packet a
//          16 KB GSO super-packet (the other packets' checksums are completed by the handler)
//        nfqlb-bench maglev      Maglev table balance and disruption for N = 10 and 100 (README, scheduler table)
// With an LD_PRELOAD malloc counter, two runs with different PACKETS give the allocations per packet
// (scripts/check-allocations.sh): the loop must allocate nothing.
import Foundation
import QueueBalancer

if CommandLine.arguments.dropFirst().first == "maglev" {
    maglevReport()
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
var counters = CounterBatch()
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
