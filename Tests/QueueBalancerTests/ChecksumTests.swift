import Testing
@testable import QueueBalancer

@Suite struct ChecksumTests {
    @Test func fullChecksumMatchesReference() {
        var generator = SystemRandomNumberGenerator()
        for length in [0, 1, 2, 19, 20, 21, 64, 1499, 1500] {
            let bytes = (0..<length).map { _ in UInt8.random(in: 0...255, using: &generator) }
            let computed = bytes.withUnsafeBytes { InternetChecksum.compute($0) }
            #expect(computed == PacketBuilder.referenceChecksum(bytes), "length \(length)")
        }
    }

    /// The eight-bytes-at-a-time sum against the reference, with every tail length and with the carries of all-ones
    /// data, up to the longest packet a queue delivers.
    @Test func wideSumMatchesReferenceWithCarries() {
        for length in Array(0...40) + [65531] {
            for bytes in [[UInt8](repeating: 0xFF, count: length), (0..<length).map { _ in UInt8.random(in: 0...255) }] {
                #expect(bytes.withUnsafeBytes { InternetChecksum.compute($0) } == PacketBuilder.referenceChecksum(bytes),
                        "length \(length)")
            }
        }
    }

    /// RFC 1624: an incremental update must equal a checksum recomputed from scratch over the new bytes.
    @Test func incrementalUpdateEqualsRecomputation() {
        for _ in 0..<500 {
            var words = (0..<10).map { _ in UInt16.random(in: 0...0xFFFF) }
            let bytes = { (w: [UInt16]) in w.flatMap(be16) }
            let before = PacketBuilder.referenceChecksum(bytes(words))
            var delta = ChecksumDelta()
            for index in Set((0..<3).map { _ in Int.random(in: 0..<10) }) {
                let new = UInt16.random(in: 0...0xFFFF)
                delta.replace(words[index], with: new)
                words[index] = new
            }
            let expected = PacketBuilder.referenceChecksum(bytes(words))
            // 0x0000 and 0xFFFF are the same one's-complement value; a valid sum over data never yields 0xFFFF.
            let got = delta.applied(to: before)
            #expect(got == expected || (got == 0xFFFF && expected == 0) || (got == 0 && expected == 0xFFFF))
        }
    }

    @Test func udpZeroChecksumStaysZeroAndComputedZeroBecomesFFFF() {
        var delta = ChecksumDelta()
        delta.replace(UInt32(0x0A00_0001), with: UInt32(0x0A00_0002))
        #expect(delta.appliedToUDP(0) == 0)
        // A checksum that the update drives to 0 is sent as 0xFFFF (RFC 768).
        var toZero = ChecksumDelta()
        toZero.replace(UInt16(0x0000), with: UInt16(0xFFFE))
        #expect(toZero.applied(to: 0xFFFE) == 0x0000)
        #expect(toZero.appliedToUDP(0xFFFE) == 0xFFFF)
    }
}
