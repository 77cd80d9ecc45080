// nfqlb-bench: drives the PacketHandler (parse -> track/schedule -> NAT rewrite) over synthetic traffic, without
// the kernel, and prints the cost per packet. Each round is one new TCP connection: client SYN, server SYN-ACK,
// client ACK, client data, plus one UDP datagram, each copied from a template into one preallocated buffer.
//
// Usage: nfqlb-bench [PACKETS=500000]
// Under `valgrind --tool=memcheck`, the heap summary of two runs with different PACKETS gives the allocations
// per packet (scripts/check-allocations.sh): the loop must allocate nothing.
import Foundation
import QueueBalancer

let packets = CommandLine.arguments.count > 1 ? Int(CommandLine.arguments[1]) ?? 500_000 : 500_000

func packet(source: [UInt8], sport: UInt16, destination: [UInt8], dport: UInt16, proto: UInt8, flags: UInt8) -> [UInt8] {
    let l4: [UInt8] = proto == 6
        ? [UInt8(sport >> 8), UInt8(sport & 0xFF), UInt8(dport >> 8), UInt8(dport & 0xFF), 0, 0, 0, 1, 0, 0, 0, 0, 0x50, flags, 0xFF, 0xFF, 0, 0, 0, 0]
        : [UInt8(sport >> 8), UInt8(sport & 0xFF), UInt8(dport >> 8), UInt8(dport & 0xFF), 0, 12, 0, 0, 1, 2, 3, 4]
    let total = 20 + l4.count
    return [0x45, 0, UInt8(total >> 8), UInt8(total & 0xFF), 0, 0, 0x40, 0, 64, proto, 0, 0] + source + destination + l4
}

let client: [UInt8] = [192, 0, 2, 2], vip: [UInt8] = [203, 0, 113, 10], rip: [UInt8] = [198, 51, 100, 11]
let templates: [[UInt8]] = [
    packet(source: client, sport: 1, destination: vip, dport: 80, proto: 6, flags: 0x02),
    packet(source: rip, sport: 8080, destination: client, dport: 1, proto: 6, flags: 0x12),
    packet(source: client, sport: 1, destination: vip, dport: 80, proto: 6, flags: 0x10),
    packet(source: client, sport: 1, destination: vip, dport: 80, proto: 6, flags: 0x18),
    packet(source: client, sport: 1, destination: vip, dport: 53, proto: 17, flags: 0),
]
// Offsets of the client port in each template (source for client packets, destination for the reply).
let clientPortOffset = [20, 22, 20, 20, 20]

let config = BalancerConfig(queues: [0], services: [
    VirtualService(vip: IPAddress("203.0.113.10")!, port: 80, transport: .tcp, mode: .nat, scheduler: .wlc,
                   reals: [RealServer(address: IPAddress("198.51.100.11")!, port: 8080, weight: 1)]),
    VirtualService(vip: IPAddress("203.0.113.10")!, port: 53, transport: .udp, mode: .nat, scheduler: .rr,
                   reals: [RealServer(address: IPAddress("198.51.100.11")!, port: 5353, weight: 1)]),
])
var trackerConfiguration = ConnectionTracker.Configuration(capacity: 1 << 20)
trackerConfiguration.loads = config.makeLoads()   // wlc reads the connection counts the tracker keeps
let handler = PacketHandler(config: config, tracker: ConnectionTracker(configuration: trackerConfiguration))
let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 2048, alignment: 8)
var counters = CounterBatch()
var verdicts = 0

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
        if handler.handle(slice, now: 1_000, counters: &counters) == .acceptRewritten { verdicts += 1 }
        handled += 1
    }
    round += 1
}
let elapsed = DispatchTime.now().uptimeNanoseconds - start
print("packets \(handled), rewritten \(verdicts), connections \(counters[.connectionsCreated]), dropped \(counters[.droppedNoConnection] + counters[.droppedMalformed])")
print("ns/packet \(String(format: "%.1f", Double(elapsed) / Double(max(handled, 1))))")
