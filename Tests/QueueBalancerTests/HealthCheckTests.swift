import Foundation
import Glibc
import Testing
@testable import QueueBalancer

/// The `health` configuration: defaults spelled out, a real server's keys over its service's, errors with lines.
@Suite struct HealthConfigTests {
    static func config(_ service: String, reals: String = "[{ address: 198.51.100.11, port: 8080 }, { address: 198.51.100.12, port: 8080 }]") throws -> BalancerConfig {
        try ConfigLoader.parse(yaml: """
            queues: [0]
            services:
              - vip: 203.0.113.10
                port: 80
                protocol: tcp
                mode: nat
            \(service)
                reals: \(reals)
            """)
    }

    @Test func defaultsAreSpelledOut() throws {
        let config = try Self.config("    health: { tcp: {} }")
        let check = try #require(config.services[0].healthCheck(of: config.services[0].reals[0]))
        #expect(check == HealthCheck(probe: .tcp(send: nil, expect: nil)))
        #expect(check.description == "tcp, every 5s, timeout 2s, rise 2, fall 3, initial up, on-failure quiesce")
    }

    @Test func aRealServerOverridesItsServiceKeyByKey() throws {
        let config = try Self.config("""
                health: { http: { path: /healthz, host: www.example, expect-status: ["200-299", 302] }, interval: 2s, timeout: 1s, rise: 2, fall: 3, initial: down }
            """, reals: "[{ address: 198.51.100.11, port: 8080 }, { address: 198.51.100.12, port: 8080, health: { tcp: {}, fall: 5 } }]")
        let service = config.services[0]
        let first = try #require(service.healthCheck(of: service.reals[0]))
        let second = try #require(service.healthCheck(of: service.reals[1]))
        guard case .http(let http) = first.probe else { Issue.record("not http"); return }
        #expect(http.path == "/healthz" && http.host == "www.example" && http.expectStatus == [200...299, 302...302])
        #expect(first.interval == 2000 && first.timeout == 1000 && first.initial == .down && first.fall == 3)
        #expect(second.probe == .tcp(send: nil, expect: nil) && second.fall == 5 && second.interval == 2000 && second.initial == .down)
    }

    @Test func aServiceWithoutProbeNeedsOneOnEachRealServer() throws {
        let config = try Self.config("    health: { interval: 1s, timeout: 500ms }",
                                     reals: "[{ address: 198.51.100.11, health: { exec: [/bin/true] } }]")
        #expect(config.services[0].healthCheck(of: config.services[0].reals[0])?.interval == 1000)
        #expect(throws: ConfigError.self) { try Self.config("    health: { interval: 1s }") }
    }

    @Test(arguments: [
        ("    health: { tcp: {}, http: {} }", "names two probes"),
        ("    health: { tcp: {}, interval: 1s, timeout: 2s }", "timeout 2s is longer than the interval 1s"),
        ("    health: { tcp: {}, interval: 0s }", "interval '0s' is not a duration"),
        ("    health: { tcp: {}, rise: 0 }", "rise 0 is out of range 1..100"),
        ("    health: { http: { expect-status: [\"600\"] } }", "is not a status code or range"),
        ("    health: { http: { path: healthz } }", "must start with /"),
        ("    health: { exec: [true] }", "absolute path"),
        ("    health: { dns: { type: BOGUS } }", "is not a record type"),
        ("    health: { dns: { name: \"a..b\" } }", "is not a domain name"),
        ("    health: { dns: { rcode: 99 } }", "is not an rcode"),
        ("    health: { dns: { transport: sctp } }", "must be udp or tcp"),
        ("    health: { http: { sni: www.example } }", "unknown key 'sni'"),
        ("    health: { http: { body-sha256: abc } }", "64 hexadecimal digits"),
        ("    health: { https: { sni: 192.0.2.1 } }", "is not a host name"),
        ("    health: { https: { ca-file: /nonexistent/ca.pem } }", "cannot be read"),
        ("    health: { https: { verify-certificate: yes-please } }", "is not true or false"),
        ("    health: { udp: {} }", "needs a 'payload'"),
        ("    health: { tcp: {}, initial: maybe }", "is not one of up | down"),
        ("    health: { tcp: {} }\n    notify: [notify.sh]", "must be an absolute path"),
        ("    health: { tcp: {} }\n    sorry-server: { address: 198.51.100.11, port: 8080 }", "is also a real server"),
        ("    quorum: { hysteresis: 1 }", "quorum needs 'min-weight'"),
    ])
    func mistakesAreRefusedWithTheirReason(service: String, reason: String) {
        do {
            _ = try Self.config(service)
            Issue.record("accepted: \(service)")
        } catch let error as ConfigError {
            #expect(error.reason.contains(reason), "\(error)")
            #expect(error.line > 0)
        } catch {
            Issue.record("\(error)")
        }
    }

    @Test func httpsAndDNSProbesTakeTheirKeys() throws {
        let config = try Self.config("""
                health: { https: { path: /up, host: www.example:8443, body-sha256: BA7816BF8F01CFEA414140DE5DAE2223B00361A396177A9CB410FF61F20015AD, ca-file: /etc/hostname } }
            """, reals: "[{ address: 198.51.100.11 }, { address: 198.51.100.12, health: { dns: { name: www.example., type: aaaa, transport: tcp } } }, { address: 198.51.100.13, health: { https: { sni: api.example, verify-certificate: false } } }]")
        let service = config.services[0]
        let first = try #require(service.healthCheck(of: service.reals[0])).probe
        guard case .https(let http, let tls) = first else { Issue.record("\(first)"); return }
        #expect(http.bodySHA256 == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        #expect(tls.verifyCertificate && tls.caFile == "/etc/hostname" && tls.serverName(host: http.host) == "www.example")
        #expect(first.description == "https GET /up Host www.example:8443 status 200-299 body sha256 ba7816bf8f01…, certificate checked against /etc/hostname")
        let second = try #require(service.healthCheck(of: service.reals[1])).probe
        #expect(second.description == "dns www.example AAAA over tcp, an answer")
        let third = try #require(service.healthCheck(of: service.reals[2])).probe
        #expect(third.description == "https GET / status 200-299, SNI api.example, certificate not checked")
        let dns = try Self.config("    health: { dns: { rcode: NXDOMAIN } }")
        #expect(dns.services[0].healthCheck(of: dns.services[0].reals[0])?.probe.description == "dns . SOA rcode NXDOMAIN")
        #expect(try ConfigLoader.parse(yaml: ConfigDocument.yaml(ConfigDocument.document(config))) == config)
    }

    @Test func durationsTakeMillisecondsSecondsAndMinutes() {
        #expect(HealthCheck.parseDuration("1500ms") == 1500)
        #expect(HealthCheck.parseDuration("2s") == 2000)
        #expect(HealthCheck.parseDuration("1m") == 60_000)
        #expect(HealthCheck.parseDuration("3") == 3000)
        #expect(HealthCheck.parseDuration("2h") == nil && HealthCheck.parseDuration("-1s") == nil)
    }

    @Test func healthSettingsSurviveSave() throws {
        let config = try Self.config("""
                health: { http: { path: /h, body-regex: "^ok" }, interval: 1500ms }
                sorry-server: { address: 198.51.100.99 }
                quorum: { min-weight: 2, hysteresis: 1 }
                notify: [/usr/local/sbin/lb-notify]
            """, reals: "[{ address: 198.51.100.11, health: { tcp: { send: \"PING\\r\\n\", expect: \"+PONG\" } } }]")
        #expect(try ConfigLoader.parse(yaml: ConfigDocument.yaml(ConfigDocument.document(config))) == config)
        #expect(config.services[0].sorryServer == endpoint("198.51.100.99", 80))
    }
}

/// What the balancer serves given the down servers: quiesced, removed, the sorry server.
@Suite struct HealthServedTests {
    func config(onFailure: String = "quiesce", mode: String = "nat", sorry: Bool = false) throws -> BalancerConfig {
        try ConfigLoader.parse(yaml: """
            queues: [0]
            services:
              - vip: 203.0.113.10
                port: 80
                protocol: tcp
                mode: \(mode)
                health: { tcp: {}, on-failure: \(onFailure) }
            \(sorry ? "    sorry-server: { address: 198.51.100.99 }" : "")
                reals: [{ address: 198.51.100.11, weight: 2 }, { address: 198.51.100.12, weight: 3 }]
            """)
    }

    func key(_ config: BalancerConfig, _ i: Int) -> RealServerRegistry.Key {
        RealServerRegistry.Key(service: config.services[0], real: config.services[0].reals[i])
    }

    @Test func quiescedServersKeepTheirPlaceWithWeightZero() throws {
        let config = try config()
        let served = HealthChecker.served(config, down: [key(config, 0)])
        #expect(served.services[0].reals.map(\.weight) == [0, 3])
        #expect(HealthChecker.served(config, down: []) == config)
    }

    @Test func removedServersLeaveButNeverAllOfThem() throws {
        let config = try config(onFailure: "remove")
        #expect(HealthChecker.served(config, down: [key(config, 0)]).services[0].reals.map(\.address) == [ip("198.51.100.12")])
        // All down and no sorry server: they stay, quiesced, so the service keeps a real server.
        #expect(HealthChecker.served(config, down: [key(config, 0), key(config, 1)]).services[0].reals.map(\.weight) == [0, 0])
        // DR marks follow the order: quiesced, not removed.
        let dr = try self.config(onFailure: "remove", mode: "dr")
        #expect(HealthChecker.served(dr, down: [key(dr, 0)]).services[0].reals.map(\.weight) == [0, 3])
    }

    @Test func theSorryServerServesOnlyWhileNoRealServerIsUp() throws {
        let config = try config(sorry: true)
        #expect(HealthChecker.served(config, down: [key(config, 0)]).services[0].reals.count == 2)
        let allDown = HealthChecker.served(config, down: [key(config, 0), key(config, 1)]).services[0].reals
        #expect(allDown.map(\.endpoint) == [endpoint("198.51.100.11", 80), endpoint("198.51.100.12", 80), endpoint("198.51.100.99", 80)])
        #expect(allDown.map(\.weight) == [0, 0, 1])
    }
}

/// The probes against real sockets and programs on this machine (no root needed).
@Suite struct ProbeTests {
    /// A TCP listener on 127.0.0.1 that answers each connection with `answer` (or nothing), for the test's length.
    final class Listener: @unchecked Sendable {
        let fd: Int32
        let port: UInt16
        init(answer: String?, port wanted: UInt16 = 0) {
            let sock = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            var one: Int32 = 1
            setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
            var address = sockaddr_in()
            address.sin_family = sa_family_t(AF_INET)
            address.sin_port = wanted.bigEndian
            address.sin_addr.s_addr = UInt32(0x7F00_0001).bigEndian
            var copy = address
            _ = withUnsafePointer(to: &copy) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(sock, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
            listen(sock, 8)
            var length = socklen_t(MemoryLayout<sockaddr_in>.size)
            _ = withUnsafeMutablePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(sock, $0, &length) } }
            fd = sock
            port = UInt16(bigEndian: address.sin_port)
            Thread {
                while true {
                    let client = accept(sock, nil, nil)
                    guard client >= 0 else { return }
                    if let answer {
                        var request = [UInt8](repeating: 0, count: 1024)
                        _ = recv(client, &request, request.count, 0)
                        _ = answer.withCString { send(client, $0, strlen($0), Int32(MSG_NOSIGNAL)) }  // a probe may have closed already: no SIGPIPE
                    }
                    close(client)
                }
            }.start()
        }
        deinit { shutdown(fd, Int32(SHUT_RDWR)); close(fd) }
        var endpoint: Endpoint { Endpoint(address: IPAddress("127.0.0.1")!, port: port) }
    }

    @Test func tcpConnectsOrFails() {
        let listener = Listener(answer: "+PONG\r\n")
        #expect(HealthCheck.Probe.tcp(send: nil, expect: nil).run(target: listener.endpoint, source: nil, timeout: 1000).success)
        let expect = HealthCheck.Probe.tcp(send: Array("PING\r\n".utf8), expect: Array("+PONG".utf8))
        #expect(expect.run(target: listener.endpoint, source: nil, timeout: 1000).success)
        let wrong = HealthCheck.Probe.tcp(send: Array("PING\r\n".utf8), expect: Array("+OK".utf8))
        #expect(!wrong.run(target: listener.endpoint, source: nil, timeout: 1000).success)
        let closed = Endpoint(address: IPAddress("127.0.0.1")!, port: 1)
        let refused = HealthCheck.Probe.tcp(send: nil, expect: nil).run(target: closed, source: nil, timeout: 1000)
        #expect(!refused.success && refused.reason == "connect: Connection refused")
    }

    @Test func httpChecksStatusAndBody() {
        let listener = Listener(answer: "HTTP/1.0 503 Service Unavailable\r\n\r\ndraining\n")
        var http = HealthCheck.HTTPProbe()
        let result = HealthCheck.Probe.http(http).run(target: listener.endpoint, source: nil, timeout: 1000)
        #expect(!result.success && result.reason == "HTTP status 503")
        http.expectStatus = [500...599]
        http.bodyRegex = "^drain"
        #expect(HealthCheck.Probe.http(http).run(target: listener.endpoint, source: nil, timeout: 1000).success)
    }

    @Test(arguments: [
        ("HTTP/1.1 200 OK\r\n\r\nok", [200...299], nil as String?, true),
        ("HTTP/1.1 302 Found\r\n\r\n", [200...299], nil, false),
        ("HTTP/1.1 302 Found\r\n\r\n", [200...299, 302...302], nil, true),
        ("HTTP/1.1 200 OK\r\n\r\nstatus: degraded", [200...299], "^status: ok", false),
        ("HTTP/1.1 200 OK\r\n\r\nstatus: ok", [200...299], "^status: ok", true),
        ("SSH-2.0-OpenSSH\r\n", [200...299], nil, false),
        ("", [200...299], nil, false),
    ])
    func httpAnswersAreJudged(answer: String, status: [ClosedRange<Int>], regex: String?, success: Bool) {
        var http = HealthCheck.HTTPProbe()
        http.expectStatus = status
        http.bodyRegex = regex
        #expect(HealthCheck.Probe.judge(http: http, answer: Array(answer.utf8)).success == success)
    }

    @Test func udpToAClosedPortFailsWithPortUnreachable() {
        let closed = Endpoint(address: IPAddress("127.0.0.1")!, port: 9)
        let result = HealthCheck.Probe.udp(payload: Array("ping".utf8), expect: nil).run(target: closed, source: nil, timeout: 500)
        #expect(!result.success && result.reason == "ICMP port unreachable")
    }

    @Test func execUsesTheExitStatusAndTheTimeout() {
        #expect(HealthCheck.Probe.exec(arguments: ["/bin/true"]).run(target: endpoint("127.0.0.1", 1), source: nil, timeout: 2000).success)
        let failed = HealthCheck.Probe.exec(arguments: ["/bin/false"]).run(target: endpoint("127.0.0.1", 1), source: nil, timeout: 2000)
        #expect(!failed.success && failed.reason == "/bin/false exited with 1")
        let slow = HealthCheck.Probe.exec(arguments: ["/bin/sleep", "5"]).run(target: endpoint("127.0.0.1", 1), source: nil, timeout: 200)
        #expect(!slow.success && slow.reason.contains("did not finish within the timeout"))
    }

    /// nfqlb ignores SIGPIPE and a probe thread may block signals: the command must see neither.
    @Test func commandsStartWithDefaultSignals() {
        let previous = signal(SIGPIPE, SIG_IGN)
        defer { signal(SIGPIPE, previous) }
        var blocked = sigset_t(), saved = sigset_t()
        sigemptyset(&blocked)
        sigaddset(&blocked, SIGTERM)
        pthread_sigmask(SIG_BLOCK, &blocked, &saved)
        defer { pthread_sigmask(SIG_SETMASK, &saved, nil) }
        let clean = HealthCheck.Probe.exec(arguments: ["/bin/sh", "-c",
            "grep -Eq '^SigBlk:[[:space:]]+0+$' /proc/self/status && [ $(( 0x$(awk '/^SigIgn/ { print $2 }' /proc/self/status) & 0x1000 )) -eq 0 ]"])
        #expect(clean.run(target: endpoint("127.0.0.1", 1), source: nil, timeout: 2000) == .ok("exit 0"))
        let terminated = HealthCheck.Probe.exec(arguments: ["/bin/sh", "-c", "kill -TERM $$; exit 0"])
        #expect(terminated.run(target: endpoint("127.0.0.1", 1), source: nil, timeout: 2000) == .failed("/bin/sh killed by signal 15"))
    }
}

/// The checker's threads against a real listener: a server that stops answering goes down once, comes back up.
@Suite struct HealthCheckerTests {
    @Test func aListenerThatClosesGoesDownThenUp() throws {
        var listener: ProbeTests.Listener? = ProbeTests.Listener(answer: nil)
        let port = listener!.port
        let config = try ConfigLoader.parse(yaml: """
            queues: [0]
            services:
              - { vip: 203.0.113.10, port: 80, protocol: tcp, mode: nat,
                  health: { tcp: {}, interval: 100ms, timeout: 100ms, rise: 1, fall: 2 },
                  reals: [{ address: 127.0.0.1, port: \(port) }] }
            """)
        let checker = HealthChecker()
        let transitions = Lock<[HealthState.Status]>([])
        checker.onTransition { _, status, _ in transitions.withLock { $0.append(status) } }
        checker.update(config, now: monotonicMilliseconds())
        let stop = StopSignal()
        Thread { checker.run(stop: stop) }.start()
        defer { stop.raise() }
        func wait(for count: Int) -> Bool {
            for _ in 0..<100 where transitions.withLock({ $0.count }) < count { Thread.sleep(forTimeInterval: 0.05) }
            return transitions.withLock { $0.count } >= count
        }
        Thread.sleep(forTimeInterval: 0.4)
        #expect(transitions.withLock { $0 }.isEmpty && checker.down.isEmpty)
        listener = nil   // closed: connections refused
        #expect(wait(for: 1))
        #expect(checker.down.count == 1)
        // Back on the same port.
        let again = ProbeTests.Listener(answer: nil, port: port)
        #expect(wait(for: 2))
        #expect(transitions.withLock { $0 } == [.down, .up] && checker.down.isEmpty)
        _ = again
    }
}

/// A reload keeps the health of real servers whose address and check did not change.
@Suite struct HealthReloadTests {
    static func config(fall: Int, extra: String = "") throws -> BalancerConfig {
        try ConfigLoader.parse(yaml: """
            queues: [0]
            services:
              - { vip: 203.0.113.10, port: 80, protocol: tcp, mode: nat,
                  health: { tcp: {}, interval: 1s, rise: 2, fall: \(fall), initial: up },
                  reals: [{ address: 198.51.100.11 }, { address: 198.51.100.12 }\(extra)] }
            """)
    }

    @Test func unchangedServersKeepTheirStateNewOnesStartAsInitial() throws {
        let first = try Self.config(fall: 1)
        let checker = HealthChecker()
        checker.update(first, now: 0)
        let key = RealServerRegistry.Key(service: first.services[0], real: first.services[0].reals[0])
        let check = try #require(first.services[0].healthCheck(of: first.services[0].reals[0]))
        checker.record(key, .failed("connect: Connection refused"), check: check)
        #expect(checker.down == [key])
        // The same check with one more server: .11 stays down, .13 starts up.
        let second = try Self.config(fall: 1, extra: ", { address: 198.51.100.13 }")
        checker.update(second, now: 1000)
        #expect(checker.down == [key])
        #expect(checker.statuses.count == 3 && checker.statuses[key]?.reason == "connect: Connection refused")
        // A changed check starts afresh.
        checker.update(try Self.config(fall: 3), now: 2000)
        #expect(checker.down.isEmpty)
    }
}
