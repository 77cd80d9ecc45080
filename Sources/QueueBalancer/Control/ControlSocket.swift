import CNFQueue
import Foundation
import Glibc
import Logging

/// Why the control socket could not be set up or reached.
public struct ControlSocketError: Error, CustomStringConvertible {
    public var description: String
    public init(description: String) { self.description = description }
}

/// The Unix stream socket address of `path` (a filesystem path: never an abstract name).
private func withAddress<R>(_ path: String, _ body: (UnsafePointer<sockaddr>, socklen_t) -> R) throws(ControlSocketError) -> R {
    var address = sockaddr_un()
    address.sun_family = sa_family_t(AF_UNIX)
    let bytes = Array(path.utf8)
    guard !bytes.isEmpty, bytes.first != 0, bytes.count < MemoryLayout.size(ofValue: address.sun_path) else {
        throw ControlSocketError(description: "control socket path '\(path)' is empty or longer than 107 bytes")
    }
    withUnsafeMutableBytes(of: &address.sun_path) { raw in
        raw.copyBytes(from: bytes)
        raw[bytes.count] = 0
    }
    return withUnsafePointer(to: &address) { pointer in
        pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { body($0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
    }
}

private func errnoText() -> String { String(cString: strerror(errno)) }

/// The listening side of the control socket, run by `nfqlb run` on a thread of its own: accepts up to
/// ``maximumClients`` connections, reads one request per line, answers each through the ``ControlPlane``, and
/// runs the plane's ``ControlPlane/tick()`` every second.
///
/// Safety (README "Control socket"): the socket file is created mode 0600 in a directory of mode 0755; every
/// caller's uid is read with SO_PEERCRED and anyone but root (or nfqlb's own user) gets a `denied` answer and is
/// disconnected. A line longer than ``ControlRequest/maximumLength`` gets `too-long`, a connection without a
/// complete request for ``idleTimeout`` gets `timeout`, both then closed; a client that does not read its
/// answers is dropped after 2 s. None of it touches the packet path: the plane's changes are published to the
/// workers without their waiting.
public final class ControlServer: @unchecked Sendable {
    public let path: String
    private let plane: ControlPlane
    private let logger: Logger
    private let listener: Int32
    public let idleTimeout: UInt64
    public static let maximumClients = 16
    /// Raised when ``run(stop:)`` has closed everything and removed the socket file.
    public let finished = StopSignal()

    private struct Client {
        var fd: Int32
        var uid: UInt32
        var buffer: [UInt8] = []
        var lastActivity: UInt64
    }

    /// Binds the socket at `path`. A stale socket file (nobody listening) is replaced; a live one is refused.
    /// The read-only socket's group, when this is one (``init(path:plane:logger:idleTimeoutMilliseconds:readOnlyGroup:)``).
    public let readOnlyGroup: gid_t?

    /// Commands a read-only socket answers.
    public static let readOnlyCommands: Set<String> = ["list", "connections", "save", "cluster.status"]

    /// - Parameter readOnlyGroup: makes this the read-only socket: mode 0660 with this group, any caller that can
    ///   open it (the file mode decides), and only ``readOnlyCommands``.
    public init(path: String, plane: ControlPlane, logger: Logger, idleTimeoutMilliseconds: UInt64 = 10_000,
                readOnlyGroup: gid_t? = nil) throws(ControlSocketError) {
        self.path = path
        self.readOnlyGroup = readOnlyGroup
        self.plane = plane
        self.logger = logger
        idleTimeout = idleTimeoutMilliseconds
        if let slash = path.lastIndex(of: "/"), slash != path.startIndex {
            var directory = ""
            for part in path[..<slash].split(separator: "/") {
                directory += "/" + part
                mkdir(directory, 0o755)
            }
        }
        var info = stat()
        if lstat(path, &info) == 0 {
            guard info.st_mode & S_IFMT == S_IFSOCK else {
                throw ControlSocketError(description: "\(path) exists and is not a socket: choose another --control-socket")
            }
            if (try? ControlClient(path: path, timeoutMilliseconds: 500)) != nil {
                throw ControlSocketError(description: "another nfqlb answers on \(path): stop it, or give this one another --control-socket")
            }
            unlink(path)
        }
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
        guard fd >= 0 else { throw ControlSocketError(description: "socket(AF_UNIX): \(errnoText())") }
        // The file is created 0600 from the start: no moment where others could connect.
        let previous = umask(0o177)
        let bound = try withAddress(path) { bind(fd, $0, $1) }
        umask(previous)
        let mode: mode_t = readOnlyGroup == nil ? 0o600 : 0o660
        guard bound == 0, readOnlyGroup.map({ chown(path, 0, $0) == 0 }) ?? true, chmod(path, mode) == 0, listen(fd, 16) == 0 else {
            let reason = errnoText()
            close(fd)
            throw ControlSocketError(description: "cannot listen on \(path): \(reason)")
        }
        listener = fd
    }

    /// Serves until `stop` is raised, then closes every connection and removes the socket file.
    public func run(stop: StopSignal) {
        var clients: [Client] = []
        var nextTick = monotonicMilliseconds() + 1000
        logger.info(readOnlyGroup == nil ? "control socket listening" : "read-only control socket listening",
                    metadata: ["path": "\(path)"])
        while !stop.isRaised {
            var fds = [pollfd(fd: listener, events: Int16(POLLIN), revents: 0)]
            fds += clients.map { pollfd(fd: $0.fd, events: Int16(POLLIN), revents: 0) }
            _ = poll(&fds, nfds_t(fds.count), 200)
            let now = monotonicMilliseconds()
            if fds[0].revents & Int16(POLLIN) != 0 { accept(into: &clients, now: now) }
            var index = clients.count - 1
            while index >= 0 {
                let revents = fds.count > index + 1 ? fds[index + 1].revents : 0
                if !serve(&clients[index], readable: revents != 0, now: now) {
                    close(clients[index].fd)
                    clients.remove(at: index)
                }
                index -= 1
            }
            // The plane's second (the read-only socket leaves it to the control socket).
            if now >= nextTick && readOnlyGroup == nil {
                nextTick = now + 1000
                plane.tick()
            }
        }
        clients.forEach { close($0.fd) }
        close(listener)
        unlink(path)
        finished.raise()
    }

    private func accept(into clients: inout [Client], now: UInt64) {
        while true {
            let fd = nfqlb_accept4(listener, Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue))
            guard fd >= 0 else { return }
            var uid: UInt32 = 0
            let known = nfqlb_peer_uid(fd, &uid) == 0
            guard known, readOnlyGroup != nil || uid == 0 || uid == geteuid() else {
                let caller = known ? "\(uid)" : "unknown"
                _ = send(fd, ControlAnswer.failure(id: .null, code: .denied,
                                                   message: "only root may use the control socket (caller uid \(caller))").line)
                logger.warning("control socket: caller refused", metadata: ["uid": "\(caller)"])
                close(fd)
                continue
            }
            guard clients.count < Self.maximumClients else {
                _ = send(fd, ControlAnswer.failure(id: .null, code: .refused, message: "too many control connections at once").line)
                close(fd)
                continue
            }
            clients.append(Client(fd: fd, uid: uid, lastActivity: now))
        }
    }

    /// Reads what arrived and answers every complete line. False when the connection is to be closed.
    private func serve(_ client: inout Client, readable: Bool, now: UInt64) -> Bool {
        if readable {
            var chunk = [UInt8](repeating: 0, count: 16384)
            let n = chunk.withUnsafeMutableBytes { recv(client.fd, $0.baseAddress, $0.count, 0) }
            if n == 0 { return false }
            if n < 0 { return errno == EAGAIN || errno == EINTR }
            client.buffer += chunk[0..<n]
        }
        while let newline = client.buffer.firstIndex(of: UInt8(ascii: "\n")) {
            var line = client.buffer[..<newline]
            if line.last == UInt8(ascii: "\r") { line = line.dropLast() }
            client.buffer.removeSubrange(...newline)
            client.lastActivity = now
            if line.allSatisfy({ $0 == 32 || $0 == 9 }) { continue }
            let answer: ControlAnswer
            switch ControlRequest.parse(line) {
            case .success(let request) where readOnlyGroup != nil && !Self.readOnlyCommands.contains(request.cmd):
                answer = .failure(id: request.id, code: .denied,
                                  message: "this socket is read-only (\(Self.readOnlyCommands.sorted().joined(separator: ", "))): use the control socket, as root")
            case .success(let request): answer = plane.answer(request, uid: client.uid)
            case .failure(let refusal): answer = refusal
            }
            guard send(client.fd, answer.line) else { return false }
            if answer.errorCode == ControlErrorCode.tooLong.rawValue { return false }
        }
        if client.buffer.count > ControlRequest.maximumLength {
            _ = send(client.fd, ControlAnswer.failure(id: .null, code: .tooLong,
                                                      message: "request longer than \(ControlRequest.maximumLength) bytes").line)
            return false
        }
        if now - client.lastActivity > idleTimeout {
            _ = send(client.fd, ControlAnswer.failure(id: .null, code: .timeout,
                                                      message: "no complete request within \(idleTimeout / 1000) s").line)
            return false
        }
        return true
    }

    /// Writes all of `text`, waiting at most 2 s for a client that does not read.
    private func send(_ fd: Int32, _ text: String) -> Bool {
        let bytes = Array(text.utf8)
        var sent = 0
        let deadline = monotonicMilliseconds() + 2000
        while sent < bytes.count {
            let n = bytes[sent...].withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            if n > 0 { sent += n; continue }
            guard n < 0, errno == EAGAIN || errno == EINTR else { return false }
            let now = monotonicMilliseconds()
            guard now < deadline else { return false }
            var out = pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)
            _ = poll(&out, 1, Int32(deadline - now))
        }
        return true
    }
}

/// The client side: `nfqlb list`, `nfqlb real edit` and the other verbs send one request and read its answer.
public final class ControlClient {
    private let fd: Int32
    private let timeout: Int32
    private var buffer: [UInt8] = []
    private var nextID = 1

    public init(path: String, timeoutMilliseconds: Int32 = 30_000) throws(ControlSocketError) {
        timeout = timeoutMilliseconds
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw ControlSocketError(description: "socket(AF_UNIX): \(errnoText())") }
        let connected = try withAddress(path) { connect(fd, $0, $1) }
        guard connected == 0 else {
            let reason = errnoText()
            close(fd)
            throw ControlSocketError(description: "cannot reach nfqlb at \(path): \(reason) (is `nfqlb run` running, with this --control-socket?)")
        }
        self.fd = fd
    }

    deinit { close(fd) }

    /// Sends `cmd` with `args` and waits for the answer.
    public func call(_ cmd: String, _ args: [String: JSONValue] = [:]) throws(ControlSocketError) -> ControlAnswer {
        let request = ControlRequest(id: JSONValue(nextID), cmd: cmd, args: args)
        nextID += 1
        let line: [UInt8]
        do {
            try write(request.line)
            line = try readLine()
        } catch {
            // A server that refuses the caller answers first and closes: its answer is waiting to be read.
            guard let answer = try? readLine() else { throw error }
            line = answer
        }
        guard let value = try? JSONValue.parse(line) else {
            throw ControlSocketError(description: "nfqlb answered something that is not JSON: \(String(decoding: line, as: UTF8.self))")
        }
        return ControlAnswer(value: value)
    }

    /// Sends raw bytes (tests: malformed requests).
    public func write(_ text: String) throws(ControlSocketError) {
        let bytes = Array(text.utf8)
        var sent = 0
        while sent < bytes.count {
            let n = bytes[sent...].withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            guard n > 0 else {
                if n < 0 && errno == EINTR { continue }
                throw ControlSocketError(description: "the control socket closed while sending: \(errnoText())")
            }
            sent += n
        }
    }

    /// The next answer line (without its newline).
    public func readLine() throws(ControlSocketError) -> [UInt8] {
        while true {
            if let newline = buffer.firstIndex(of: UInt8(ascii: "\n")) {
                let line = Array(buffer[..<newline])
                buffer.removeSubrange(...newline)
                return line
            }
            var input = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            guard poll(&input, 1, timeout) > 0 else {
                throw ControlSocketError(description: "nfqlb did not answer within \(timeout / 1000) s")
            }
            var chunk = [UInt8](repeating: 0, count: 65536)
            let n = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { throw ControlSocketError(description: "nfqlb closed the control connection") }
            buffer += chunk[0..<n]
        }
    }
}

extension ControlServer {
    /// `/run/nfqlb/nfqlb.sock` in the host's network namespace; in any other one (PID 1's differs, or, where
    /// PID 1's cannot be read, one named by `ip netns add`), the directory `scripts/iptables-setup.sh` keeps for
    /// that namespace, `/run/nfqlb/netns-INODE/nfqlb.sock`, so that balancers in lab namespaces never share a
    /// socket and `nfqlb list` run in a namespace finds its own.
    public static var defaultPath: String {
        func inode(_ path: String) -> UInt64? {
            var info = stat()
            return stat(path, &info) == 0 ? UInt64(info.st_ino) : nil
        }
        guard let mine = inode("/proc/self/ns/net") else { return "/run/nfqlb/nfqlb.sock" }
        let other: Bool
        if let host = inode("/proc/1/ns/net") {
            other = mine != host
        } else {
            let named = (try? FileManager.default.contentsOfDirectory(atPath: "/run/netns")) ?? []
            other = named.contains { inode("/run/netns/\($0)") == mine }
        }
        return other ? "/run/nfqlb/netns-\(mine)/nfqlb.sock" : "/run/nfqlb/nfqlb.sock"
    }
}
