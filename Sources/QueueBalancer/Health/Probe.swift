import CNFQueue
import Foundation
import Glibc

/// One run of a probe against a real server, blocking for at most the check's timeout: the outcome and, for a
/// failure, why (logged once with the transition it causes). Runs on the health checker's threads, never on a
/// queue worker. See ``HealthCheck/Probe`` for what each kind checks.
public struct ProbeResult: Sendable, Equatable {
    public var success: Bool
    public var reason: String

    public static func ok(_ reason: String = "ok") -> ProbeResult { ProbeResult(success: true, reason: reason) }
    public static func failed(_ reason: String) -> ProbeResult { ProbeResult(success: false, reason: reason) }
}

extension HealthCheck.Probe {
    /// Probes `target` from `source` (the address the datapath uses; nil: the route's), within `timeout` ms.
    public func run(target: Endpoint, source: IPAddress?, timeout: UInt64) -> ProbeResult {
        let deadline = monotonicMilliseconds() + timeout
        switch self {
        case .tcp(let send, let expect):
            return ProbeSocket.withConnection(to: target, from: source, type: SOCK_STREAM, deadline: deadline) { socket in
                guard let send else { return .ok("connected") }
                guard socket.send(send, deadline: deadline) else { return .failed("send failed: \(socket.lastError)") }
                guard let expect else { return .ok("connected, sent") }
                let answer = socket.receive(atLeast: expect.count, deadline: deadline)
                return answer.starts(with: expect) ? .ok("expected answer") : .failed("unexpected answer (\(answer.count) bytes)")
            }
        case .http(let http):
            return ProbeSocket.withConnection(to: target, from: source, type: SOCK_STREAM, deadline: deadline) { socket in
                guard socket.send(Self.request(http, target: target), deadline: deadline) else { return .failed("send failed: \(socket.lastError)") }
                return Self.judge(http: http, answer: socket.receiveUntilClose(limit: 1 << 20, deadline: deadline))
            }
        case .https(let http, let tls):
            return ProbeSocket.withConnection(to: target, from: source, type: SOCK_STREAM, deadline: deadline) { socket in
                switch TLSConnection.handshake(over: socket, target: target, settings: tls, host: http.host, deadline: deadline) {
                case .failure(let failure):
                    return .failed(failure.reason)
                case .success(let session):
                    if let failure = session.send(Self.request(http, target: target), deadline: deadline) { return .failed(failure.reason) }
                    return Self.judge(http: http, answer: session.receiveUntilClose(limit: 1 << 20, deadline: deadline))
                }
            }
        case .dns(let query):
            return Self.resolve(query, target: target, source: source, deadline: deadline, timeout: timeout)
        case .udp(let payload, let expect):
            return ProbeSocket.withConnection(to: target, from: source, type: SOCK_DGRAM, deadline: deadline) { socket in
                guard socket.send(payload, deadline: deadline) else { return .failed("send failed: \(socket.lastError)") }
                let answer = socket.receive(atLeast: 1, deadline: deadline)
                if socket.refused { return .failed("ICMP port unreachable") }
                guard let expect else {
                    return socket.lastErrno == 0 || socket.lastErrno == EAGAIN ? .ok(answer.isEmpty ? "no ICMP error" : "answered")
                        : .failed("receive failed: \(socket.lastError)")
                }
                if answer.isEmpty { return .failed("no answer within \(HealthCheck.duration(timeout))") }
                return answer.starts(with: expect) ? .ok("expected answer") : .failed("unexpected answer (\(answer.count) bytes)")
            }
        case .exec(let arguments):
            return ProbeCommand.run(arguments, deadline: deadline)
        }
    }

    /// `GET path` as HTTP/1.0 with `Connection: close`: the answer ends when the server closes.
    static func request(_ http: HealthCheck.HTTPProbe, target: Endpoint) -> [UInt8] {
        let host = http.host ?? "\(target)"
        return Array("GET \(http.path) HTTP/1.0\r\nHost: \(host)\r\nUser-Agent: nfqlb-health\r\nConnection: close\r\n\r\n".utf8)
    }

    /// Sends `query` with a random id and waits for its response (over UDP, answers to earlier probes are skipped;
    /// ICMP port unreachable is a failure).
    static func resolve(_ query: DNSQuery, target: Endpoint, source: IPAddress?, deadline: UInt64, timeout: UInt64) -> ProbeResult {
        let id = UInt16.random(in: 0...UInt16.max)
        let message = query.message(id: id)
        if query.overTCP {
            return ProbeSocket.withConnection(to: target, from: source, type: SOCK_STREAM, deadline: deadline) { socket in
                guard socket.send([UInt8(message.count >> 8), UInt8(message.count & 0xFF)] + message, deadline: deadline) else {
                    return .failed("send failed: \(socket.lastError)")
                }
                let prefix = socket.receive(atLeast: 2, deadline: deadline)
                guard prefix.count >= 2 else { return .failed("no DNS answer within \(HealthCheck.duration(timeout))") }
                let length = Int(prefix[0]) << 8 | Int(prefix[1])
                let answer = Array((prefix + socket.receive(atLeast: length + 2 - prefix.count, deadline: deadline)).dropFirst(2).prefix(length))
                guard answer.count == length else { return .failed("DNS answer cut short (\(answer.count) of \(length) bytes)") }
                return query.judge(response: answer, id: id) ?? .failed("DNS answer to another query")
            }
        }
        return ProbeSocket.withConnection(to: target, from: source, type: SOCK_DGRAM, deadline: deadline) { socket in
            guard socket.send(message, deadline: deadline) else { return .failed("send failed: \(socket.lastError)") }
            while true {
                guard let datagram = socket.receiveDatagram(deadline: deadline) else {
                    return socket.refused ? .failed("ICMP port unreachable") : .failed("no DNS answer within \(HealthCheck.duration(timeout))")
                }
                if let verdict = query.judge(response: datagram, id: id) { return verdict }
            }
        }
    }

    /// The verdict on an HTTP answer: its status line's code within the ranges, the body matching the regex and
    /// the digest.
    static func judge(http: HealthCheck.HTTPProbe, answer: [UInt8]) -> ProbeResult {
        guard !answer.isEmpty else { return .failed("no HTTP answer") }
        let text = String(decoding: answer, as: UTF8.self)
        let statusLine = text.prefix { $0 != "\r" && $0 != "\n" }
        let words = statusLine.split(separator: " ")
        guard words.count >= 2, words[0].hasPrefix("HTTP/"), let status = Int(words[1]) else {
            return .failed("not an HTTP answer: '\(statusLine.prefix(40))'")
        }
        guard http.expectStatus.contains(where: { $0.contains(status) }) else { return .failed("HTTP status \(status)") }
        if let expected = http.bodySHA256 {
            let separator: [UInt8] = [13, 10, 13, 10]
            let start = (0...max(0, answer.count - 4)).first { answer[$0..<min($0 + 4, answer.count)].elementsEqual(separator) }.map { $0 + 4 } ?? answer.count
            let digest = Digest.sha256Hex(answer[start...])
            guard digest == expected else {
                return .failed("HTTP status \(status), body sha256 \(digest.prefix(12))… is not \(expected.prefix(12))…")
            }
        }
        if let pattern = http.bodyRegex {
            let body = text.range(of: "\r\n\r\n").map { String(text[$0.upperBound...]) } ?? ""
            guard let regex = try? NSRegularExpression(pattern: pattern),
                  regex.firstMatch(in: body, range: NSRange(body.startIndex..., in: body)) != nil else {
                return .failed("HTTP status \(status), body does not match /\(pattern)/")
            }
        }
        return .ok("HTTP status \(status)")
    }
}

/// Why a probe step failed: the reason a failed ``ProbeResult`` carries.
struct ProbeFailure: Error {
    var reason: String
    init(_ reason: String) { self.reason = reason }
}

/// A non-blocking socket with a deadline: the probes' one use of the socket API.
final class ProbeSocket {
    let fd: Int32
    private(set) var lastErrno: Int32 = 0
    var lastError: String { String(cString: strerror(lastErrno)) }
    /// The peer answered with ICMP port unreachable (ECONNREFUSED on a connected socket).
    var refused: Bool { lastErrno == ECONNREFUSED }

    private init(fd: Int32) { self.fd = fd }
    deinit { close(fd) }

    /// Opens a socket of `type` to `target` (from `source` when given), connected before `deadline`, and runs
    /// `body` on it; a connection that fails or times out is the probe's failure.
    static func withConnection(to target: Endpoint, from source: IPAddress?, type: __socket_type, deadline: UInt64,
                               _ body: (ProbeSocket) -> ProbeResult) -> ProbeResult {
        let family = target.address.isIPv4 ? AF_INET : AF_INET6
        let fd = socket(family, Int32(type.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return .failed("socket: \(String(cString: strerror(errno)))") }
        let socket = ProbeSocket(fd: fd)
        if let source {
            let bound = SocketAddress(Endpoint(address: source, port: 0)).withSockaddr { bind(fd, $0, $1) }
            guard bound == 0 else { return .failed("bind to \(source): \(String(cString: strerror(errno)))") }
        }
        let connected = SocketAddress(target).withSockaddr { connect(fd, $0, $1) }
        if connected != 0 {
            guard errno == EINPROGRESS else { return .failed("connect: \(String(cString: strerror(errno)))") }
            guard socket.wait(for: Int16(POLLOUT), deadline: deadline) else { return .failed("connect: no answer within the timeout") }
            var error: Int32 = 0
            var length = socklen_t(MemoryLayout<Int32>.size)
            getsockopt(fd, SOL_SOCKET, SO_ERROR, &error, &length)
            guard error == 0 else { return .failed("connect: \(String(cString: strerror(error)))") }
        }
        return body(socket)
    }

    func wait(for events: Int16, deadline: UInt64) -> Bool {
        while true {
            let now = monotonicMilliseconds()
            guard now < deadline else { return false }
            var p = pollfd(fd: fd, events: events, revents: 0)
            let n = poll(&p, 1, Int32(min(deadline - now, 60_000)))
            if n > 0 { return true }
            if n < 0 && errno == EINTR { continue }
            return false
        }
    }

    func send(_ bytes: [UInt8], deadline: UInt64) -> Bool {
        var sent = 0
        while sent < bytes.count {
            let n = bytes[sent...].withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            if n > 0 { sent += n; continue }
            lastErrno = errno
            guard n < 0, errno == EAGAIN || errno == EINTR, wait(for: Int16(POLLOUT), deadline: deadline) else { return false }
        }
        return true
    }

    /// Reads until `count` bytes arrived, the peer closed, an error, or the deadline.
    func receive(atLeast count: Int, deadline: UInt64) -> [UInt8] {
        var data: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 4096)
        while data.count < count {
            let n = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n > 0 { data += chunk[0..<n]; continue }
            if n == 0 { break }
            lastErrno = errno
            guard errno == EAGAIN || errno == EINTR, wait(for: Int16(POLLIN), deadline: deadline) else { break }
            lastErrno = 0
        }
        if data.count < count && lastErrno == 0 { lastErrno = EAGAIN }
        return data
    }

    func receiveUntilClose(limit: Int, deadline: UInt64) -> [UInt8] { receive(atLeast: limit, deadline: deadline) }

    /// One datagram (up to 64 KiB), or nil at an error (``refused`` tells ICMP port unreachable) or the deadline.
    func receiveDatagram(deadline: UInt64) -> [UInt8]? {
        var datagram = [UInt8](repeating: 0, count: 65_536)
        while true {
            let n = datagram.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n >= 0 { return Array(datagram[0..<n]) }
            lastErrno = errno
            guard errno == EAGAIN || errno == EINTR, wait(for: Int16(POLLIN), deadline: deadline) else { return nil }
        }
    }
}

/// A socket address for an endpoint, IPv4 or IPv6.
struct SocketAddress {
    var storage = sockaddr_storage()
    var length: socklen_t

    init(_ endpoint: Endpoint) {
        if let v4 = endpoint.address.ipv4 {
            var a = sockaddr_in()
            a.sin_family = sa_family_t(AF_INET)
            a.sin_port = endpoint.port.bigEndian
            a.sin_addr.s_addr = v4.bigEndian
            length = socklen_t(MemoryLayout<sockaddr_in>.size)
            withUnsafeMutableBytes(of: &storage) { $0.storeBytes(of: a, as: sockaddr_in.self) }
        } else {
            var a = sockaddr_in6()
            a.sin6_family = sa_family_t(AF_INET6)
            a.sin6_port = endpoint.port.bigEndian
            let address = endpoint.address
            let bytes = (0..<8).map { UInt8(truncatingIfNeeded: address.high >> (56 - 8 * UInt64($0))) }
                + (0..<8).map { UInt8(truncatingIfNeeded: address.low >> (56 - 8 * UInt64($0))) }
            withUnsafeMutableBytes(of: &a.sin6_addr) { $0.copyBytes(from: bytes) }
            length = socklen_t(MemoryLayout<sockaddr_in6>.size)
            withUnsafeMutableBytes(of: &storage) { $0.storeBytes(of: a, as: sockaddr_in6.self) }
        }
    }

    func withSockaddr<R>(_ body: (UnsafePointer<sockaddr>, socklen_t) -> R) -> R {
        var copy = storage
        return withUnsafePointer(to: &copy) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { body($0, length) } }
    }
}

/// `exec` probes and `notify` programs: a command without a shell, its status, killed at the deadline.
enum ProbeCommand {
    static func run(_ arguments: [String], deadline: UInt64) -> ProbeResult {
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 2, "/dev/null", O_WRONLY, 0)
        var argv: [UnsafeMutablePointer<CChar>?] = arguments.map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        // The command starts with no signal blocked and the default action for those nfqlb ignores or handles
        // (a probe thread may have signals blocked, and SIG_IGN would pass through exec): a SIGTERM ends it.
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var none = sigset_t()
        sigemptyset(&none)
        posix_spawnattr_setsigmask(&attributes, &none)
        var reset = sigset_t()
        sigemptyset(&reset)
        for signal in [SIGPIPE, SIGTERM, SIGINT, SIGHUP] { sigaddset(&reset, signal) }
        posix_spawnattr_setsigdefault(&attributes, &reset)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))
        var pid = pid_t()
        let spawned = posix_spawn(&pid, arguments[0], &actions, &attributes, &argv, environ)
        guard spawned == 0 else { return .failed("cannot run \(arguments[0]): \(String(cString: strerror(spawned)))") }
        var status: Int32 = 0
        while true {
            let done = waitpid(pid, &status, WNOHANG)
            if done == pid { break }
            if done < 0 && errno != EINTR { return .failed("waitpid: \(String(cString: strerror(errno)))") }
            if monotonicMilliseconds() >= deadline {
                kill(pid, SIGKILL)
                while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
                return .failed("\(arguments[0]) did not finish within the timeout (killed)")
            }
            usleep(10_000)
        }
        if status & 0x7F != 0 { return .failed("\(arguments[0]) killed by signal \(status & 0x7F)") }
        let code = (status >> 8) & 0xFF
        return code == 0 ? .ok("exit 0") : .failed("\(arguments[0]) exited with \(code)")
    }
}
