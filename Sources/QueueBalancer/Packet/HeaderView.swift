/// A header read in place at the start of a buffer: a non-owning view over the kernel's buffer, so reading a
/// field is one load. ``IPv4Header``, ``IPv6Header``, ``TCPHeader`` and ``UDPHeader`` are the views; their
/// `Offset` namespaces give the field offsets to the code that writes headers.
///
/// Invariant: ``bytes`` holds at least ``minimumLength`` bytes (``init(_:)`` checks it). What lies beyond
/// (options, extension headers, payload) is the caller's to bound, with the lengths the header states.
protocol HeaderView {
    /// The fixed part of the header.
    static var minimumLength: Int { get }
    var bytes: UnsafeRawBufferPointer { get }
    /// A view of `bytes`, which the caller checked holds ``minimumLength`` bytes (a view's memberwise init).
    init(bytes: UnsafeRawBufferPointer)
}

extension HeaderView {
    /// The header at the start of `bytes`; nil when the fixed part is not all there.
    init?(_ bytes: UnsafeRawBufferPointer) {
        guard bytes.count >= Self.minimumLength else { return nil }
        self.init(bytes: bytes)
    }
}
