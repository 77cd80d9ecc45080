import Foundation
import Glibc
import Testing
@testable import QueueBalancer

/// The `dns` probe: the query on the wire, the verdict on each kind of response, and a real exchange over UDP and
/// TCP with a responder on loopback.
@Suite struct DNSProbeTests {
    /// A response to `query` (its id and question), with `rcode` and `answers` A records whose names point back
    /// at the question (compression).
    static func response(to query: [UInt8], rcode: UInt8 = 0, answers: Int = 1) -> [UInt8] {
        var bytes = Array(query.prefix(12))
        bytes[2] = 0x81  // QR, RD
        bytes[3] = 0x80 | rcode  // RA
        bytes[6] = 0
        bytes[7] = UInt8(answers)
        bytes += query[12...]
        for i in 0..<answers {
            bytes += [0xC0, 12, 0, 1, 0, 1, 0, 0, 0x0E, 0x10, 0, 4, 192, 0, 2, UInt8(10 + i)]
        }
        return bytes
    }

    @Test func theQueryIsARecursiveQuestionOfClassIN() {
        var query = DNSQuery()
        query.name = "www.example"
        query.type = 28
        #expect(query.message(id: 0xBEEF) == [0xBE, 0xEF, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0,
                                              3, 119, 119, 119, 7, 101, 120, 97, 109, 112, 108, 101, 0, 0, 28, 0, 1])
        // keepalived's defaults: the root's SOA.
        #expect(DNSQuery().message(id: 1).suffix(5) == [0, 0, 6, 0, 1])
        #expect(DNSQuery().description == "dns . SOA, an answer")
    }

    @Test func responsesAreJudged() throws {
        var query = DNSQuery()
        query.name = "www.example"
        query.type = 1
        let message = query.message(id: 7)
        #expect(query.judge(response: Self.response(to: message, answers: 2), id: 7) == .ok("DNS NOERROR, 2 answers"))
        #expect(query.judge(response: Self.response(to: message, answers: 0), id: 7) == .failed("DNS answer empty (NOERROR, no A records)"))
        #expect(query.judge(response: Self.response(to: message, rcode: 3, answers: 0), id: 7) == .failed("DNS rcode NXDOMAIN"))
        #expect(query.judge(response: Self.response(to: message, rcode: 2, answers: 0), id: 7) == .failed("DNS rcode SERVFAIL"))
        // Another id, or our own query echoed (QR clear): not the answer, keep waiting.
        #expect(query.judge(response: Self.response(to: message), id: 8) == nil)
        #expect(query.judge(response: message, id: 7) == nil)
        // Another question (a late answer to an earlier probe of another name): not ours.
        var other = query
        other.name = "mail.example"
        #expect(query.judge(response: Self.response(to: other.message(id: 7)), id: 7) == nil)
        // A given rcode: any response with it passes, answers or not.
        var nx = query
        nx.rcode = 3
        #expect(nx.judge(response: Self.response(to: message, rcode: 3, answers: 0), id: 7) == .ok("DNS rcode NXDOMAIN"))
        #expect(nx.judge(response: Self.response(to: message), id: 7) == .failed("DNS rcode NOERROR, expected NXDOMAIN"))
        // Names compare without case (0x20 randomisation by resolvers).
        let upper = Self.response(to: message).enumerated().map { $0.offset >= 13 && $0.offset < 16 ? $0.element - 32 : $0.element }
        #expect(query.judge(response: upper, id: 7)?.success == true)
    }

    @Test func malformedResponsesFailWithoutReadingPastTheEnd() {
        var query = DNSQuery()
        query.name = "www.example"
        query.type = 1
        let good = Self.response(to: query.message(id: 7))
        #expect(query.judge(response: [0, 7, 0x81], id: 7) == .failed("DNS response too short (3 bytes)"))
        // Cut anywhere inside the records: malformed, never a crash.
        for length in 12..<good.count {
            let verdict = query.judge(response: Array(good.prefix(length)), id: 7)
            #expect(verdict?.success == false, "cut at \(length): \(String(describing: verdict))")
        }
        // A compression pointer to itself (a loop) or forward.
        var loop = good
        loop[29] = 0xC0
        loop[30] = 29
        #expect(query.judge(response: loop, id: 7) == .failed("DNS response malformed (answer records)"))
        var forward = good
        forward[30] = 200
        #expect(query.judge(response: forward, id: 7) == .failed("DNS response malformed (answer records)"))
    }

    @Test(arguments: [("www.example", "www.example"), ("www.example.", "www.example"), (".", ""),
                      ("a..b", nil), ("", nil), (String(repeating: "a", count: 64), nil),
                      (Array(repeating: String(repeating: "a", count: 63), count: 4).joined(separator: "."), nil)])
    func namesKeepToDNSLimits(text: String, name: String?) {
        #expect(DNSQuery.parseName(text) == name)
    }

    @Test func typesAndRcodesByNameOrNumber() {
        #expect(DNSQuery.parseType("aaaa") == 28 && DNSQuery.parseType("TYPE65") == 65 && DNSQuery.parseType("99") == 99)
        #expect(DNSQuery.parseType("BOGUS") == nil && DNSQuery.parseType("0") == nil)
        #expect(DNSQuery.parseRcode("nxdomain") == 3 && DNSQuery.parseRcode("5") == 5 && DNSQuery.parseRcode("16") == nil)
    }

    /// A DNS server on 127.0.0.1 (UDP and TCP on the same port) answering every query with `answers` A records,
    /// first sending a stale answer (another id) over UDP, as a late reply to an earlier probe would be.
    final class Responder: @unchecked Sendable {
        let udp: Int32
        let tcp: Int32
        let port: UInt16

        init(rcode: UInt8 = 0, answers: Int = 1) {
            let udp = socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0)
            let tcp = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            (self.udp, self.tcp) = (udp, tcp)
            var address = sockaddr_in()
            address.sin_family = sa_family_t(AF_INET)
            address.sin_addr.s_addr = UInt32(0x7F00_0001).bigEndian
            var length = socklen_t(MemoryLayout<sockaddr_in>.size)
            _ = withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(udp, $0, length) } }
            _ = withUnsafeMutablePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(udp, $0, &length) } }
            _ = withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(tcp, $0, length) } }
            listen(tcp, 4)
            port = UInt16(bigEndian: address.sin_port)
            Thread {
                var buffer = [UInt8](repeating: 0, count: 512)
                var peer = sockaddr_storage()
                while true {
                    var peerLength = socklen_t(MemoryLayout<sockaddr_storage>.size)
                    let n = withUnsafeMutablePointer(to: &peer) { p in
                        p.withMemoryRebound(to: sockaddr.self, capacity: 1) { recvfrom(udp, &buffer, buffer.count, 0, $0, &peerLength) }
                    }
                    guard n > 0 else { return }
                    var stale = DNSProbeTests.response(to: Array(buffer[0..<n]), rcode: rcode, answers: answers)
                    stale[1] &+= 1
                    for reply in [stale, DNSProbeTests.response(to: Array(buffer[0..<n]), rcode: rcode, answers: answers)] {
                        _ = withUnsafePointer(to: &peer) { p in
                            p.withMemoryRebound(to: sockaddr.self, capacity: 1) { sendto(udp, reply, reply.count, 0, $0, peerLength) }
                        }
                    }
                }
            }.start()
            Thread {
                while true {
                    let client = accept(tcp, nil, nil)
                    guard client >= 0 else { return }
                    var buffer = [UInt8](repeating: 0, count: 514)
                    let n = recv(client, &buffer, buffer.count, 0)
                    if n > 2 {
                        let reply = DNSProbeTests.response(to: Array(buffer[2..<n]), rcode: rcode, answers: answers)
                        let framed = [UInt8(reply.count >> 8), UInt8(reply.count & 0xFF)] + reply
                        _ = send(client, framed, framed.count, Int32(MSG_NOSIGNAL))
                    }
                    close(client)
                }
            }.start()
        }

        deinit {
            shutdown(udp, Int32(SHUT_RDWR))
            shutdown(tcp, Int32(SHUT_RDWR))
            close(udp)
            close(tcp)
        }

        var endpoint: Endpoint { Endpoint(address: IPAddress("127.0.0.1")!, port: port) }
    }

    @Test func aRealExchangeOverUDPAndTCP() {
        let responder = Responder()
        var query = DNSQuery()
        query.name = "www.example"
        query.type = 1
        let udp = HealthCheck.Probe.dns(query).run(target: responder.endpoint, source: nil, timeout: 1000)
        #expect(udp == .ok("DNS NOERROR, 1 answer"))
        query.overTCP = true
        #expect(HealthCheck.Probe.dns(query).run(target: responder.endpoint, source: nil, timeout: 1000) == .ok("DNS NOERROR, 1 answer"))
        let refusing = Responder(rcode: 5, answers: 0)
        query.overTCP = false
        #expect(HealthCheck.Probe.dns(query).run(target: refusing.endpoint, source: nil, timeout: 1000) == .failed("DNS rcode REFUSED"))
        // Nobody on the port: ICMP port unreachable.
        let closed = Endpoint(address: IPAddress("127.0.0.1")!, port: 9)
        #expect(HealthCheck.Probe.dns(query).run(target: closed, source: nil, timeout: 500) == .failed("ICMP port unreachable"))
    }
}

/// `body-sha256` and the `https` probe against a real TLS server (`openssl s_server`) with a certificate made for
/// the test.
@Suite struct HTTPSProbeTests {
    @Test func sha256IsLibcryptos() {
        #expect(Digest.sha256Hex(Array("abc".utf8)) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        #expect(Digest.sha256Hex([UInt8]()) == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
    }

    @Test func theBodyDigestIsChecked() {
        var http = HealthCheck.HTTPProbe()
        http.bodySHA256 = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        #expect(HealthCheck.Probe.judge(http: http, answer: Array("HTTP/1.0 200 OK\r\nServer: x\r\n\r\nabc".utf8)).success)
        let changed = HealthCheck.Probe.judge(http: http, answer: Array("HTTP/1.0 200 OK\r\n\r\nabd".utf8))
        #expect(!changed.success && changed.reason.hasPrefix("HTTP status 200, body sha256 a52d159f262b… is not ba7816bf8f01…"))
    }

    @Test(arguments: [(nil as String?, nil as String?, nil as String?), ("www.example", nil, "www.example"),
                      ("www.example:8443", nil, "www.example"), ("192.0.2.1", nil, nil), ("www.example", "api.example", "api.example")])
    func theServerNameComesFromSNIElseTheHostName(host: String?, sni: String?, sent: String?) {
        var tls = HealthCheck.TLSSettings()
        tls.sni = sni
        #expect(tls.serverName(host: host) == sent)
    }

    /// `openssl s_server -www` on 127.0.0.1 with a self-signed certificate for www.example.
    final class TLSServer {
        let directory: URL
        let process = Process()
        let port: UInt16
        let certificate: String

        init() throws {
            let directory = FileManager.default.temporaryDirectory.appendingPathComponent("nfqlb-tls-\(getpid())-\(UInt32.random(in: 0...UInt32.max))")
            self.directory = directory
            let certificate = directory.appendingPathComponent("cert.pem").path
            self.certificate = certificate
            try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
            let made = Process()
            made.executableURL = URL(fileURLWithPath: "/usr/bin/openssl")
            made.arguments = ["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1",
                              "-subj", "/CN=www.example", "-addext", "subjectAltName=DNS:www.example",
                              "-keyout", directory.appendingPathComponent("key.pem").path, "-out", certificate]
            made.standardError = FileHandle.nullDevice
            try made.run()
            made.waitUntilExit()
            // A free port: bound by the kernel, released, then taken by s_server.
            let probe = ProbeTests.Listener(answer: nil)
            port = probe.port
            _ = consume probe
            process.executableURL = URL(fileURLWithPath: "/usr/bin/openssl")
            process.arguments = ["s_server", "-accept", "127.0.0.1:\(port)", "-cert", certificate,
                                 "-key", directory.appendingPathComponent("key.pem").path, "-www", "-quiet"]
            process.standardOutput = FileHandle.nullDevice
            process.standardError = FileHandle.nullDevice
            try process.run()
            for _ in 0..<100 {
                if HealthCheck.Probe.tcp(send: nil, expect: nil).run(target: endpoint, source: nil, timeout: 200).success { return }
                usleep(20_000)
            }
        }

        deinit {
            // SIGKILL: Foundation's Process starts it with the launching thread's signal mask, SIGTERM may be blocked.
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
            try? FileManager.default.removeItem(at: directory)
        }

        var endpoint: Endpoint { Endpoint(address: IPAddress("127.0.0.1")!, port: port) }
    }

    @Test func theHTTPSProbeHandshakesSendsSNIAndChecksTheCertificateWhenAsked() throws {
        let server = try TLSServer()
        var http = HealthCheck.HTTPProbe()
        http.host = "www.example"
        var tls = HealthCheck.TLSSettings()
        let unchecked = HealthCheck.Probe.https(http, tls).run(target: server.endpoint, source: nil, timeout: 2000)
        #expect(unchecked == .ok("HTTP status 200"))
        // Checked against its own certificate as the CA: the name matches.
        tls.verifyCertificate = true
        tls.caFile = server.certificate
        #expect(HealthCheck.Probe.https(http, tls).run(target: server.endpoint, source: nil, timeout: 2000) == .ok("HTTP status 200"))
        // Another name.
        tls.sni = "api.example"
        let mismatch = HealthCheck.Probe.https(http, tls).run(target: server.endpoint, source: nil, timeout: 2000)
        #expect(!mismatch.success && mismatch.reason.hasPrefix("TLS certificate: hostname mismatch"), "\(mismatch.reason)")
        // The system's CAs do not know a self-signed certificate.
        tls.sni = nil
        tls.caFile = nil
        let untrusted = HealthCheck.Probe.https(http, tls).run(target: server.endpoint, source: nil, timeout: 2000)
        #expect(!untrusted.success && untrusted.reason.hasPrefix("TLS certificate: self-signed certificate"), "\(untrusted.reason)")
        // A server that does not speak TLS.
        let plain = ProbeTests.Listener(answer: "HTTP/1.0 200 OK\r\n\r\n")
        let notTLS = HealthCheck.Probe.https(http, HealthCheck.TLSSettings()).run(target: plain.endpoint, source: nil, timeout: 1000)
        #expect(!notTLS.success && notTLS.reason.hasPrefix("TLS handshake: "), "\(notTLS.reason)")
    }
}
