import Glibc
import SystemPackage

/// Replaces the file at `path` with `bytes` at once, so a reader sees the old file or the new one, never half:
/// the bytes go to a temporary file that `mkstemp` creates beside it under a random name (`O_CREAT|O_EXCL`:
/// never an existing file, never through a symlink planted in a shared directory), which gets `mode` and is
/// renamed over the path (`rename` replaces a symlink at the path itself, it does not follow it). Used for the
/// stats file and the state file.
func replaceFileAtomically(_ path: String, with bytes: some Collection<UInt8>, mode: mode_t) throws(Errno) {
    var template = Array((path + ".XXXXXX").utf8CString)
    let descriptor = template.withUnsafeMutableBufferPointer { mkstemp($0.baseAddress!) }
    guard descriptor >= 0 else { throw Errno(rawValue: errno) }
    let temporary = String(decoding: template.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    let file = FileDescriptor(rawValue: descriptor)
    do {
        try file.closeAfter {
            _ = try file.writeAll(bytes)
            guard fchmod(descriptor, mode) == 0 else { throw Errno(rawValue: errno) }
        }
        guard rename(temporary, path) == 0 else { throw Errno(rawValue: errno) }
    } catch {
        unlink(temporary)
        throw error as? Errno ?? .ioError
    }
}
