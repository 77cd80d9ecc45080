import COpenSSL
import Glibc

/// A TLS client session over a probe's connected, non-blocking socket, every step bounded by the probe's
/// deadline: the `https` probe's transport. All of nfqlb's OpenSSL calls for TLS are in this file
/// (docs/ARCHITECTURE.md, "Health checks").
///
/// Invariants: one session per probe, used by one thread; the `SSL_CTX` it comes from is shared (``TLSContexts``)
/// and never changed after it is made, which OpenSSL allows across threads. OpenSSL's error queue is per thread,
/// and each step clears it first, so a reason always belongs to this probe.
final class TLSConnection {
    private let ssl: OpaquePointer
    private let socket: ProbeSocket

    private init(ssl: OpaquePointer, socket: ProbeSocket) {
        self.ssl = ssl
        self.socket = socket
    }

    deinit { SSL_free(ssl) }

    /// Handshakes over `socket` (connected to `target`) before `deadline`: the session, or why not.
    static func handshake(over socket: ProbeSocket, target: Endpoint, settings: HealthCheck.TLSSettings, host: String?,
                          deadline: UInt64) -> Result<TLSConnection, ProbeFailure> {
        guard let context = TLSContexts.shared.context(verify: settings.verifyCertificate, caFile: settings.caFile) else {
            return .failure(ProbeFailure("TLS setup: \(lastErrorText())"))
        }
        guard let ssl = SSL_new(context) else { return .failure(ProbeFailure("TLS setup: \(lastErrorText())")) }
        let connection = TLSConnection(ssl: ssl, socket: socket)
        SSL_set_fd(ssl, socket.fd)
        if let name = settings.serverName(host: host) { _ = nfqlb_ssl_set_server_name(ssl, name) }
        if settings.verifyCertificate {
            // The name the certificate must carry: `sni`, else `host`, else the real server's address.
            let identity = settings.sni ?? host ?? "\(target.address)"
            if IPAddress(identity) != nil {
                X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), identity)
            } else {
                SSL_set1_host(ssl, identity)
            }
        }
        while true {
            ERR_clear_error()
            let done = SSL_connect(ssl)
            if done == 1 { return .success(connection) }
            let error = SSL_get_error(ssl, done)
            if let events = connection.pollEvents(for: error) {
                guard socket.wait(for: events, deadline: deadline) else { return .failure(ProbeFailure("TLS handshake: no answer within the timeout")) }
                continue
            }
            let verified = SSL_get_verify_result(ssl)
            if settings.verifyCertificate && verified != Int(X509_V_OK) {
                return .failure(ProbeFailure("TLS certificate: \(String(cString: X509_verify_cert_error_string(verified)))"))
            }
            return .failure(ProbeFailure("TLS handshake: \(connection.reason(error, errno: errno))"))
        }
    }

    /// Writes all of `bytes` before `deadline`.
    func send(_ bytes: [UInt8], deadline: UInt64) -> ProbeFailure? {
        var sent = 0
        while sent < bytes.count {
            ERR_clear_error()
            let n = bytes[sent...].withUnsafeBytes { SSL_write(ssl, $0.baseAddress, Int32($0.count)) }
            if n > 0 { sent += Int(n); continue }
            let error = SSL_get_error(ssl, n)
            guard let events = pollEvents(for: error) else { return ProbeFailure("TLS send: \(reason(error, errno: errno))") }
            guard socket.wait(for: events, deadline: deadline) else { return ProbeFailure("TLS send: no progress within the timeout") }
        }
        return nil
    }

    /// Reads until the server closes (with or without close_notify), `limit` bytes, an error, or the deadline.
    func receiveUntilClose(limit: Int, deadline: UInt64) -> [UInt8] {
        var data: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 16_384)
        while data.count < limit {
            ERR_clear_error()
            let n = chunk.withUnsafeMutableBytes { SSL_read(ssl, $0.baseAddress, Int32($0.count)) }
            if n > 0 { data += chunk[0..<Int(n)]; continue }
            let error = SSL_get_error(ssl, n)
            guard let events = pollEvents(for: error), socket.wait(for: events, deadline: deadline) else { break }
        }
        return data
    }

    /// The socket readiness to wait for before retrying after `error`; nil when retrying cannot help.
    private func pollEvents(for error: Int32) -> Int16? {
        switch error {
        case SSL_ERROR_WANT_READ: Int16(POLLIN)
        case SSL_ERROR_WANT_WRITE: Int16(POLLOUT)
        default: nil
        }
    }

    private func reason(_ error: Int32, errno code: Int32) -> String {
        switch error {
        case SSL_ERROR_ZERO_RETURN: "closed by the server"
        case SSL_ERROR_SYSCALL where ERR_peek_error() == 0: code == 0 ? "connection closed" : String(cString: strerror(code))
        default: Self.lastErrorText()
        }
    }

    /// OpenSSL's text for the oldest error in this thread's queue.
    static func lastErrorText() -> String {
        let code = ERR_get_error()
        guard code != 0 else { return "unknown TLS error" }
        var buffer = [CChar](repeating: 0, count: 256)
        ERR_error_string_n(code, &buffer, buffer.count)
        return String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}

/// The client contexts of `https` probes, one per verification setting, made once and shared by every probe
/// (loading the system's CA certificates costs milliseconds; a probe must not pay it each time).
final class TLSContexts: Sendable {
    static let shared = TLSContexts()

    private struct Key: Hashable {
        var verify: Bool
        var caFile: String?
    }

    /// `SSL_CTX` pointers by setting; never freed (a handful for the process's life).
    private let contexts = Lock<[Key: UInt]>([:])

    /// The context for these settings, made on first use; nil when OpenSSL refuses it (an unreadable `ca-file`).
    func context(verify: Bool, caFile: String?) -> OpaquePointer? {
        contexts.withLock { contexts -> OpaquePointer? in
            let key = Key(verify: verify, caFile: caFile)
            if let made = contexts[key] { return OpaquePointer(bitPattern: made) }
            ERR_clear_error()
            guard let context = SSL_CTX_new(TLS_client_method()) else { return nil }
            nfqlb_ssl_ctx_ignore_unexpected_eof(context)
            if verify {
                SSL_CTX_set_verify(context, SSL_VERIFY_PEER, nil)
                let loaded = caFile.map { SSL_CTX_load_verify_locations(context, $0, nil) } ?? SSL_CTX_set_default_verify_paths(context)
                guard loaded == 1 else {
                    SSL_CTX_free(context)
                    return nil
                }
            } else {
                SSL_CTX_set_verify(context, SSL_VERIFY_NONE, nil)
            }
            contexts[key] = UInt(bitPattern: context)
            return context
        }
    }
}

/// SHA-256 through libcrypto, for `body-sha256`, table digests and the sync's tracker seed.
enum Digest {
    /// The 32 bytes of the SHA-256 of `bytes`.
    static func sha256<Bytes: Collection<UInt8>>(_ bytes: Bytes) -> [UInt8] {
        var digest = [UInt8](repeating: 0, count: Int(EVP_MAX_MD_SIZE))
        var length: UInt32 = 0
        let copy = Array(bytes)
        _ = copy.withUnsafeBytes { EVP_Digest($0.baseAddress, $0.count, &digest, &length, EVP_sha256(), nil) }
        return Array(digest.prefix(Int(length)))
    }

    /// The lowercase hexadecimal SHA-256 of `bytes`.
    static func sha256Hex<Bytes: Collection<UInt8>>(_ bytes: Bytes) -> String {
        let hex = Array("0123456789abcdef".utf8)
        var text: [UInt8] = []
        for byte in sha256(bytes) {
            text.append(hex[Int(byte >> 4)])
            text.append(hex[Int(byte & 0xF)])
        }
        return String(decoding: text, as: UTF8.self)
    }
}
