@testable import QueueBalancer

/// Builds IPv4 or IPv6 packets (16-byte addresses) field by field with checksums computed from scratch (a
/// reference independent of `InternetChecksum`), for table-driven datapath tests.
struct PacketBuilder {
    var source: [UInt8] = [192, 0, 2, 2]
    var destination: [UInt8] = [203, 0, 113, 10]
    var transport: UInt8 = 6
    var sourcePort: UInt16 = 40000
    var destinationPort: UInt16 = 80
    var tcpFlags: UInt8 = 0x02
    var payload: [UInt8] = []
    var options: [UInt8] = []          // IPv4 options, a multiple of 4 bytes
    var fragmentField: UInt16 = 0x4000  // DF
    var udpChecksumOff = false
    var ttl: UInt8 = 64
    /// IPv6 extension headers in order: type (0, 43, 44, 60, ...) and body after the next-header and length
    /// bytes (padded to a multiple of 8 with the two; the fragment header's second byte is reserved, 0).
    var extensions: [(type: UInt8, body: [UInt8])] = []
    /// ICMP (transport 1) or ICMPv6 (58) message: type, code, the 4 bytes after the checksum, the quoted bytes.
    var icmp: (type: UInt8, code: UInt8, rest: [UInt8], quoted: [UInt8])?

    /// An IPv6 packet from 2001:db8:c::2 to the VIP 2001:db8:f::10.
    static func v6() -> PacketBuilder {
        var b = PacketBuilder()
        b.source = IPAddress("2001:db8:c::2")!.bytes
        b.destination = IPAddress("2001:db8:f::10")!.bytes
        return b
    }

    /// Naive RFC 1071 sum: add 16-bit big-endian words in 32 bits, fold, complement.
    static func referenceChecksum(_ bytes: [UInt8]) -> UInt16 {
        var sum: UInt32 = 0
        var i = 0
        while i < bytes.count {
            let hi = UInt32(bytes[i])
            let lo = i + 1 < bytes.count ? UInt32(bytes[i + 1]) : 0
            sum += hi << 8 | lo
            i += 2
        }
        while sum > 0xFFFF { sum = (sum & 0xFFFF) + (sum >> 16) }
        return ~UInt16(sum)
    }

    func transportBytes() -> [UInt8] {
        var l4: [UInt8]
        switch transport {
        case 6:
            l4 = be16(sourcePort) + be16(destinationPort) + [0, 0, 0, 1] + [0, 0, 0, 0]
            l4 += [0x50, tcpFlags] + be16(64240) + [0, 0] + [0, 0]
        case 17:
            l4 = be16(sourcePort) + be16(destinationPort) + be16(UInt16(8 + payload.count)) + [0, 0]
        case 1, 58 where icmp != nil:
            guard let m = icmp else { l4 = [8, 0, 0, 0, 0, 1, 0, 1]; break }
            l4 = [m.type, m.code, 0, 0] + m.rest + m.quoted
            let pseudo = transport == 58 ? source + destination + [0, 58] + be16(UInt16(l4.count)) : []
            let checksum = PacketBuilder.referenceChecksum(pseudo + l4)
            l4[2] = UInt8(checksum >> 8)
            l4[3] = UInt8(checksum & 0xFF)
            return l4
        default:
            l4 = [8, 0, 0, 0, 0, 1, 0, 1]
        }
        l4 += payload
        if transport == 6 || transport == 17 {
            let pseudo = source + destination + [0, transport] + be16(UInt16(l4.count))
            var checksum = PacketBuilder.referenceChecksum(pseudo + l4)
            if transport == 17 {
                if udpChecksumOff { checksum = 0 } else if checksum == 0 { checksum = 0xFFFF }
            }
            let at = transport == 6 ? 16 : 6
            l4[at] = UInt8(checksum >> 8)
            l4[at + 1] = UInt8(checksum & 0xFF)
        }
        return l4
    }

    func build() -> [UInt8] {
        let l4 = transportBytes()
        if source.count == 16 {
            var chain: [UInt8] = []
            for (i, ext) in extensions.enumerated() {
                let next = i + 1 < extensions.count ? extensions[i + 1].type : transport
                var header = [next, 0] + ext.body
                while header.count % 8 != 0 { header.append(0) }
                if ext.type != 44 { header[1] = UInt8(header.count / 8 - 1) }
                chain += header
            }
            let first = extensions.first?.type ?? transport
            return [0x60, 0, 0, 0] + be16(UInt16(chain.count + l4.count)) + [first, ttl] + source + destination + chain + l4
        }
        let headerLength = 20 + options.count
        var ip: [UInt8] = [UInt8(0x40 | headerLength / 4), 0] + be16(UInt16(headerLength + l4.count))
        ip += [0x12, 0x34] + be16(fragmentField) + [ttl, transport, 0, 0] + source + destination + options
        let checksum = PacketBuilder.referenceChecksum(ip)
        ip[10] = UInt8(checksum >> 8)
        ip[11] = UInt8(checksum & 0xFF)
        return ip + l4
    }
}

func be16(_ v: UInt16) -> [UInt8] { [UInt8(v >> 8), UInt8(v & 0xFF)] }

extension IPAddress {
    /// The address as its header carries it: 4 bytes for IPv4, 16 for IPv6.
    var bytes: [UInt8] {
        let all = (0..<8).map { UInt8(truncatingIfNeeded: high >> (56 - 8 * UInt64($0))) }
            + (0..<8).map { UInt8(truncatingIfNeeded: low >> (56 - 8 * UInt64($0))) }
        return isIPv4 ? Array(all[12...]) : all
    }
}

func ip(_ text: String) -> IPAddress { IPAddress(text)! }

func ipv4(_ text: String) -> UInt32 { IPAddress(text)!.ipv4! }

func endpoint(_ text: String, _ port: UInt16) -> Endpoint { Endpoint(address: IPAddress(text)!, port: port) }

/// A NAT config with one TCP and one UDP service on 203.0.113.10 over two real servers.
func natConfig(scheduler: SchedulerKind = .rr, weights: [UInt32] = [1, 1]) -> BalancerConfig {
    let reals = weights.enumerated().map { i, w in
        RealServer(address: IPAddress("198.51.100.\(11 + i)")!, port: 8080, weight: w)
    }
    let udpReals = reals.map { RealServer(address: $0.address, port: 5353, weight: $0.weight) }
    return BalancerConfig(queues: [0], services: [
        VirtualService(vip: IPAddress("203.0.113.10")!, port: 80, transport: .tcp, mode: .nat, scheduler: scheduler, reals: reals),
        VirtualService(vip: IPAddress("203.0.113.10")!, port: 53, transport: .udp, mode: .nat, scheduler: scheduler, reals: udpReals),
    ])
}

/// How a TUN verdict sends the packet (in the verdict, or through a raw socket: another family) and its outer
/// header's endpoints.
enum Tunnelled: Equatable {
    case verdict(source: IPAddress, destination: IPAddress)
    case rawSend(source: IPAddress, destination: IPAddress)
}

extension Verdict {
    /// A TUN verdict's way out and endpoints; nil for any other verdict.
    var tunnelled: Tunnelled? {
        switch self {
        case .acceptEncapsulated(let header): .verdict(source: header.source, destination: header.destination)
        case .sendEncapsulated(let header): .rawSend(source: header.source, destination: header.destination)
        default: nil
        }
    }

    /// The outer header of a TUN verdict.
    var tunnelHeader: TunnelHeader? {
        switch self {
        case .acceptEncapsulated(let header), .sendEncapsulated(let header): header
        default: nil
        }
    }
}

extension VerdictWriter {
    /// Appends the message the queue worker sends for a TUN verdict that carries `header`: the header, then
    /// the packet.
    func appendEncapsulated(queue: QueueNumber, packetID: UInt32, packet: [UInt8], header: TunnelHeader) -> Bool {
        header.withUnsafeBytes { prefix in
            packet.withUnsafeBytes { append(queue: queue, packetID: packetID, verdict: .accept, prefix: prefix,
                                            payload: UnsafeRawBufferPointer(rebasing: $0[0..<header.innerLength])) }
        }
    }
}

extension PacketHandler {
    /// Runs the handler over a copy of `packet`; returns the verdict and the bytes after the call.
    func run(_ packet: [UInt8], now: UInt64 = 1_000, counters: inout CounterBatch) -> (Verdict, [UInt8]) {
        var bytes = packet
        let verdict = bytes.withUnsafeMutableBytes { handle($0, now: now, counters: &counters) }
        return (verdict, bytes)
    }
}
