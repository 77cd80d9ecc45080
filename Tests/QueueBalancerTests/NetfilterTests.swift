import Foundation
import CNFQueue
import Testing
@testable import QueueBalancer

/// The netlink messages nfqlb parses and builds, and the iptables rules it generates.
@Suite struct NetfilterTests {
    /// A kernel NFQNL_MSG_PACKET message: nlmsghdr, nfgenmsg, NFQA_PACKET_HDR, NFQA_MARK, NFQA_SKB_INFO (when
    /// `info` is given), NFQA_PAYLOAD.
    func packetMessage(id: UInt32, payload: [UInt8], info: UInt32? = nil) -> [UInt8] {
        func le32(_ v: UInt32) -> [UInt8] { withUnsafeBytes(of: v.littleEndian, Array.init) }
        func le16(_ v: UInt16) -> [UInt8] { withUnsafeBytes(of: v.littleEndian, Array.init) }
        func be32(_ v: UInt32) -> [UInt8] { withUnsafeBytes(of: v.bigEndian, Array.init) }
        var attributes = le16(11) + le16(1) + be32(id) + [0x08, 0x00, 2, 0]   // PACKET_HDR (7 bytes + pad)
        attributes += le16(8) + le16(3) + be32(7)                              // MARK
        if let info { attributes += le16(8) + le16(14) + be32(info) }          // SKB_INFO
        let padded = (4 + payload.count + 3) & ~3
        attributes += le16(UInt16(4 + payload.count)) + le16(10) + payload + Array(repeating: 0, count: padded - 4 - payload.count)
        let length = 20 + attributes.count
        return le32(UInt32(length)) + le16(3 << 8) + le16(0) + le32(0) + le32(0) + [2, 0, 0, 0] + attributes
    }

    @Test func parsesPacketMessage() {
        let payload = PacketBuilder().build()
        var message = packetMessage(id: 0x0102_0304, payload: payload)
        message.withUnsafeMutableBytes { buffer in
            let parsed = PacketMessage.parse(buffer)
            #expect(parsed?.packetID == 0x0102_0304)
            #expect(parsed.map { Array($0.payload) } == payload)
        }
    }

    @Test func readsWhatTheKernelSaysAboutTheBuffer() {
        var message = packetMessage(id: 5, payload: [0x45, 0, 0, 20], info: 3)
        message.withUnsafeMutableBytes { buffer in
            #expect(PacketMessage.parse(buffer)?.info == [.checksumNotReady, .gso])
        }
        var plain = packetMessage(id: 5, payload: [0x45, 0, 0, 20])
        plain.withUnsafeMutableBytes { #expect(PacketMessage.parse($0)?.info == []) }
    }

    @Test func refusesTruncatedOrForeignMessages() {
        var message = packetMessage(id: 1, payload: [1, 2, 3])
        for cut in [0, 10, 19, 21, message.count - 1] {
            var prefix = Array(message.prefix(cut))
            prefix.withUnsafeMutableBytes { #expect(PacketMessage.parse($0) == nil, "cut at \(cut)") }
        }
        message[4] = 2   // NLMSG_ERROR
        message.withUnsafeMutableBytes { #expect(PacketMessage.parse($0) == nil) }
    }

    @Test func buildsVerdictMessagesThatFitTheLimit() {
        let writer = VerdictWriter(limit: 100)
        #expect(writer.append(queue: QueueNumber(rawValue: 5), packetID: 9, verdict: .accept))
        #expect(writer.used == 32)
        let bytes = Array(UnsafeRawBufferPointer(start: writer.bytes, count: writer.used))
        #expect(bytes[0..<4] == [32, 0, 0, 0][...])            // nlmsg_len
        #expect(bytes[4..<6] == [1, 3][...])                   // NFNL_SUBSYS_QUEUE << 8 | NFQNL_MSG_VERDICT
        #expect(bytes[18..<20] == [0, 5][...])                 // res_id = queue, big-endian
        #expect(bytes[20..<24] == [12, 0, 2, 0][...])          // NFQA_VERDICT_HDR
        #expect(bytes[24..<32] == [0, 0, 0, 1, 0, 0, 0, 9][...])
        let payload: [UInt8] = [1, 2, 3, 4, 5]
        let fits = payload.withUnsafeBytes { writer.append(queue: QueueNumber(rawValue: 5), packetID: 10, verdict: .accept, payload: $0) }
        #expect(fits)   // 32 + 32 + 12 = 76 <= 100
        let tooBig = payload.withUnsafeBytes { writer.append(queue: QueueNumber(rawValue: 5), packetID: 11, verdict: .accept, payload: $0) }
        #expect(!tooBig)
        #expect(writer.count == 2 && writer.used == 76)
    }

    @Test func rulesQueueBothDirectionsInRawPrerouting() throws {
        let config = natConfig()
        let rules = IptablesRules.restoreInput(for: config)
        #expect(rules.contains("*raw\n:NFQLB-PREROUTING - [0:0]\n"))
        #expect(rules.contains("-A NFQLB-PREROUTING -d 203.0.113.10/32 -p tcp -m tcp --dport 80 -m comment --comment \"nfqlb nat 203.0.113.10:80/tcp: client to VIP\" -j CT --notrack"))
        #expect(rules.contains("-A NFQLB-PREROUTING -s 198.51.100.12/32 -p udp -m udp --sport 5353 -m comment --comment \"nfqlb nat 203.0.113.10:53/udp: reply from 198.51.100.12:5353\" -j NFQUEUE --queue-num 0"))
        #expect(rules.hasSuffix("-I PREROUTING 1 -j NFQLB-PREROUTING\nCOMMIT\n"))
        #expect(!rules.contains("queue-bypass"), "never fail open on a rewriting mode")
        var multi = config
        multi.queues = [2, 3, 4]
        #expect(IptablesRules.restoreInput(for: multi).contains("-j NFQUEUE --queue-balance 2:4"))
    }

    @Test func kernelQueueStatsAreRead() throws {
        let path = "/tmp/nfqlb-test-nfq-\(UInt32.random(in: 0...UInt32.max))"
        try "    0   4653     3 2 65531     5     7       47  1\n    1   4654     0 2 65531     1     1       9  1\n    9   1     0 2 65531     100     100       9  1\n"
            .write(toFile: path, atomically: true, encoding: .utf8)
        defer { unlink(path) }
        let stats = KernelQueueStats.read(queues: [0, 1], path: path)
        #expect(stats.queueDropped == 6 && stats.userDropped == 8 && stats.waiting == 3)
    }
}

/// The netlink layout nfqlb writes by hand (``NetlinkLayout``) against the kernel's and libnetfilter_queue's
/// headers: the numbers live in one place, and this says they are the right ones.
@Suite struct NetlinkLayoutTests {
    @Test func layoutMatchesTheHeaders() {
        #expect(NetlinkLayout.headerLength == Int(NFQLB_NLMSG_HDRLEN))
        #expect(NetlinkLayout.nfgenLength == Int(NFQLB_NFGENMSG_LEN))
        #expect(NetlinkLayout.packetMessageType == UInt16(NFQLB_MSG_PACKET_TYPE))
        #expect(NetlinkLayout.verdictMessageType == UInt16(NFQLB_MSG_VERDICT_TYPE))
        #expect(NetlinkLayout.attributePacketHeader == UInt16(NFQA_PACKET_HDR.rawValue))
        #expect(NetlinkLayout.attributeVerdictHeader == UInt16(NFQA_VERDICT_HDR.rawValue))
        #expect(NetlinkLayout.attributeMark == UInt16(NFQA_MARK.rawValue))
        #expect(NetlinkLayout.attributePayload == UInt16(NFQA_PAYLOAD.rawValue))
        #expect(NetlinkLayout.attributeSKBInfo == UInt16(NFQA_SKB_INFO.rawValue))
        #expect(PacketInfo.checksumNotReady.rawValue == UInt32(NFQA_SKB_CSUMNOTREADY))
        #expect(PacketInfo.gso.rawValue == UInt32(NFQA_SKB_GSO))
        #expect(NetlinkLayout.requestFlag == UInt16(NLM_F_REQUEST))
    }
}
