import CNFQueue
import Testing
@testable import QueueBalancer

/// ctnetlink messages as nfqlb reads and writes them: the numbers against the kernel's headers, a delete
/// request byte for byte, and events parsed from messages built as the kernel builds them.
@Suite struct ConntrackMessagesTests {
    @Test func layoutMatchesTheKernelHeaders() {
        #expect(Int32(ConntrackLayout.messageType(ConntrackLayout.messageNew)) == NFQLB_CT_MSG_NEW_TYPE)
        #expect(Int32(ConntrackLayout.messageType(ConntrackLayout.messageDelete)) == NFQLB_CT_MSG_DELETE_TYPE)
        #expect(Int32(ConntrackLayout.messageType(ConntrackLayout.messageGet)) == NFQLB_CT_MSG_GET_TYPE)
        #expect([ConntrackLayout.groupNew, ConntrackLayout.groupUpdate, ConntrackLayout.groupDestroy]
                == [NFNLGRP_CONNTRACK_NEW.rawValue, NFNLGRP_CONNTRACK_UPDATE.rawValue, NFNLGRP_CONNTRACK_DESTROY.rawValue])
        let attributes: [(UInt16, UInt32)] = [
            (ConntrackLayout.tupleOriginal, CTA_TUPLE_ORIG.rawValue), (ConntrackLayout.tupleReply, CTA_TUPLE_REPLY.rawValue),
            (ConntrackLayout.protoInfo, CTA_PROTOINFO.rawValue), (ConntrackLayout.mark, CTA_MARK.rawValue),
            (ConntrackLayout.countersOriginal, CTA_COUNTERS_ORIG.rawValue), (ConntrackLayout.countersReply, CTA_COUNTERS_REPLY.rawValue),
            (ConntrackLayout.id, CTA_ID.rawValue), (ConntrackLayout.timeout, CTA_TIMEOUT.rawValue),
            (ConntrackLayout.tupleIP, CTA_TUPLE_IP.rawValue), (ConntrackLayout.tupleProto, CTA_TUPLE_PROTO.rawValue),
            (ConntrackLayout.ipv4Source, CTA_IP_V4_SRC.rawValue), (ConntrackLayout.ipv4Destination, CTA_IP_V4_DST.rawValue),
            (ConntrackLayout.ipv6Source, CTA_IP_V6_SRC.rawValue), (ConntrackLayout.ipv6Destination, CTA_IP_V6_DST.rawValue),
            (ConntrackLayout.protoNumber, CTA_PROTO_NUM.rawValue), (ConntrackLayout.protoSourcePort, CTA_PROTO_SRC_PORT.rawValue),
            (ConntrackLayout.protoDestinationPort, CTA_PROTO_DST_PORT.rawValue),
            (ConntrackLayout.protoInfoTCP, CTA_PROTOINFO_TCP.rawValue), (ConntrackLayout.tcpState, CTA_PROTOINFO_TCP_STATE.rawValue),
            (ConntrackLayout.tcpFlagsOriginal, CTA_PROTOINFO_TCP_FLAGS_ORIGINAL.rawValue),
            (ConntrackLayout.tcpFlagsReply, CTA_PROTOINFO_TCP_FLAGS_REPLY.rawValue),
            (ConntrackLayout.counterPackets, CTA_COUNTERS_PACKETS.rawValue), (ConntrackLayout.counterBytes, CTA_COUNTERS_BYTES.rawValue),
        ]
        for (ours, kernel) in attributes { #expect(UInt32(ours) == kernel) }
        #expect(UInt32(ConntrackLayout.tcpEstablished) == TCP_CONNTRACK_ESTABLISHED.rawValue)
        #expect(UInt32(ConntrackLayout.tcpSynReceived) == TCP_CONNTRACK_SYN_RECV.rawValue)
        #expect(Int32(ConntrackLayout.tcpBeLiberal) == NFQLB_CT_TCP_FLAG_BE_LIBERAL)
        #expect(Int32(ConntrackLayout.flagDump) == NFQLB_NLM_F_DUMP && Int32(ConntrackLayout.flagCreate) == NFQLB_NLM_F_CREATE
                && Int32(ConntrackLayout.flagExclusive) == NFQLB_NLM_F_EXCL && Int32(ConntrackLayout.nested) == NFQLB_NLA_F_NESTED)
        #expect(Int32(ConntrackLayout.done) == NLMSG_DONE && Int32(ConntrackLayout.error) == NLMSG_ERROR)
    }

    static let flow = FlowKey(source: Endpoint(address: ip("192.0.2.5"), port: 40000),
                              destination: Endpoint(address: ip("203.0.113.10"), port: 80), transport: .tcp)

    /// The request `conntrack -D -s 192.0.2.5 -d 203.0.113.10 -p tcp --sport 40000 --dport 80` sends.
    @Test func deleteRequestBytes() {
        let request = ConntrackRequest.delete(Self.flow, sequence: 7)
        let expected: [UInt8] = [
            72, 0, 0, 0, 0x02, 0x01, 0x05, 0x00, 7, 0, 0, 0, 0, 0, 0, 0,     // nlmsghdr: CT_DELETE, REQUEST|ACK
            2, 0, 0, 0,                                                     // nfgenmsg: AF_INET
            52, 0, 0x01, 0x80,                                              // CTA_TUPLE_ORIG, nested
            20, 0, 0x01, 0x80,                                              //   CTA_TUPLE_IP, nested
            8, 0, 1, 0, 192, 0, 2, 5,                                       //     CTA_IP_V4_SRC
            8, 0, 2, 0, 203, 0, 113, 10,                                    //     CTA_IP_V4_DST
            28, 0, 0x02, 0x80,                                              //   CTA_TUPLE_PROTO, nested
            5, 0, 1, 0, 6, 0, 0, 0,                                         //     CTA_PROTO_NUM tcp (padded)
            6, 0, 2, 0, 0x9C, 0x40, 0, 0,                                   //     CTA_PROTO_SRC_PORT 40000
            6, 0, 3, 0, 0, 80, 0, 0,                                        //     CTA_PROTO_DST_PORT 80
        ]
        #expect(request.bytes == expected)
        let v6 = ConntrackRequest.delete(FlowKey(source: Endpoint(address: ip("2001:db8::5"), port: 1),
                                                 destination: Endpoint(address: ip("2001:db8::10"), port: 2), transport: .udp), sequence: 1)
        #expect(v6.bytes.count == 16 + 4 + 4 + (4 + 20 + 20) + 28 && v6.bytes[16] == 10, "AF_INET6, two 16-byte addresses")
    }

    /// An event as the kernel sends it: header, nfgenmsg, then the attributes in the kernel's order.
    static func event(_ kind: ConntrackEntry.Kind, original: FlowKey = flow, reply: FlowKey, mark: UInt32, state: UInt8?,
                      counters: (UInt64, UInt64, UInt64, UInt64)? = nil) -> [UInt8] {
        let type = kind == .destroy ? ConntrackLayout.messageDelete : ConntrackLayout.messageNew
        let flags = kind == .new ? ConntrackLayout.flagCreate | ConntrackLayout.flagExclusive : 0
        return ConntrackRequest { message in
            message.begin(type, flags: flags, family: 2, sequence: 0)
            message.tuple(ConntrackLayout.tupleOriginal, original)
            message.tuple(ConntrackLayout.tupleReply, reply)
            message.attribute(3, bigEndian32: 0x0E)                          // CTA_STATUS: skipped
            if let state {
                message.nest(ConntrackLayout.protoInfo) { info in
                    info.nest(ConntrackLayout.protoInfoTCP) { tcp in tcp.attribute(ConntrackLayout.tcpState, byte: state) }
                }
            }
            if let counters {
                message.nest(ConntrackLayout.countersOriginal) { c in
                    c.attribute(ConntrackLayout.counterPackets, bigEndian64: counters.0)
                    c.attribute(ConntrackLayout.counterBytes, bigEndian64: counters.1)
                }
                message.nest(ConntrackLayout.countersReply) { c in
                    c.attribute(ConntrackLayout.counterPackets, bigEndian64: counters.2)
                    c.attribute(ConntrackLayout.counterBytes, bigEndian64: counters.3)
                }
            }
            message.attribute(ConntrackLayout.mark, bigEndian32: mark)
            message.attribute(ConntrackLayout.id, bigEndian32: 0xABCD)
            message.end()
        }.bytes
    }

    /// DR's connection for a SYN: delete (no acknowledgement) then create, SYN_RECV, the reply tuple reversed.
    @Test func halfOpenConnectionRequest() throws {
        let request = ConntrackRequest { writer in
            writer.delete(Self.flow, sequence: 1, flags: 0)
            writer.createHalfOpen(Self.flow, mark: 0x1002, timeout: 60, sequence: 2)
        }
        #expect(Array(request.bytes[4..<8]) == [0x02, 0x01, 0x01, 0x00], "CT_DELETE, REQUEST only")
        let created = Array(request.bytes[72...])
        #expect(Array(created[4..<8]) == [0x00, 0x01, 0x01, 0x06], "CT_NEW, REQUEST|CREATE|EXCL")
        let entry = try #require(created.withUnsafeBytes(ConntrackEntry.parse))
        #expect(entry.kind == .new && entry.original == Self.flow && entry.mark == 0x1002)
        #expect(entry.reply == FlowKey(source: Self.flow.destination, destination: Self.flow.source, transport: .tcp))
        #expect(entry.tcpState == ConntrackLayout.tcpSynReceived && !entry.isActive)
        #expect(created.count <= ConntrackMessageWriter.largestMessage)
        let v6 = ConntrackRequest { writer in
            writer.createHalfOpen(FlowKey(source: Endpoint(address: ip("2001:db8::5"), port: 1),
                                          destination: Endpoint(address: ip("2001:db8::10"), port: 2), transport: .tcp),
                                  mark: 1, timeout: 60, sequence: 2)
        }
        #expect(v6.bytes.count <= ConntrackMessageWriter.largestMessage)
    }

    static let natReply = FlowKey(source: Endpoint(address: ip("198.51.100.11"), port: 8080),
                                  destination: Endpoint(address: ip("192.0.2.5"), port: 40000), transport: .tcp)

    @Test func eventsAreParsed() throws {
        let new = try #require(Self.event(.new, reply: Self.natReply, mark: 0x1001, state: 1).withUnsafeBytes(ConntrackEntry.parse))
        #expect(new == ConntrackEntry(kind: .new, original: Self.flow, reply: Self.natReply, mark: 0x1001, id: 0xABCD, tcpState: 1))
        #expect(!new.isActive)
        let update = try #require(Self.event(.update, reply: Self.natReply, mark: 0x1001, state: 3).withUnsafeBytes(ConntrackEntry.parse))
        #expect(update.kind == .update && update.isActive)
        let destroy = try #require(Self.event(.destroy, reply: Self.natReply, mark: 0x1001, state: nil,
                                              counters: (10, 5000, 8, 700)).withUnsafeBytes(ConntrackEntry.parse))
        #expect(destroy.kind == .destroy && destroy.tcpState == nil)
        #expect(destroy.originalPackets == 10 && destroy.originalBytes == 5000 && destroy.replyPackets == 8 && destroy.replyBytes == 700)
    }

    @Test func malformedMessagesAreNotEntries() {
        var good = Self.event(.new, reply: Self.natReply, mark: 1, state: 1)
        for cut in [0, 10, 20, 30, good.count - 1] {
            var short = Array(good[..<cut])
            if cut >= 4 { short.withUnsafeMutableBytes { $0.storeBytes(of: UInt32(cut), as: UInt32.self) } }
            #expect(short.withUnsafeBytes(ConntrackEntry.parse) == nil, "cut at \(cut)")
        }
        good[4] = 0x05                                                         // another message type
        #expect(good.withUnsafeBytes(ConntrackEntry.parse) == nil)
        let noReply = ConntrackRequest { message in
            message.begin(ConntrackLayout.messageNew, flags: 0, sequence: 0)
            message.tuple(ConntrackLayout.tupleOriginal, Self.flow)
            message.end()
        }
        #expect(noReply.bytes.withUnsafeBytes(ConntrackEntry.parse) == nil, "an entry needs both tuples")
        var badLength = Self.event(.new, reply: Self.natReply, mark: 1, state: 1)
        badLength[20] = 0xFF                                                    // first attribute runs past the end
        #expect(badLength.withUnsafeBytes(ConntrackEntry.parse) == nil)
    }
}
