import Glibc
import SystemPackage

/// Runs a command found on PATH with `posix_spawnp(3)` and returns its exit status and standard output; nil
/// when it cannot be started. Standard input is `input` (through an unlinked temporary file) or /dev/null;
/// standard error goes with the output when `errors` is true, else to /dev/null.
///
/// Not Foundation's `Process`: on Linux it needs a loopback socket pair for its run loop and prints
/// "Could not create wakeup socket pair" in a network namespace whose `lo` is down, which is exactly where
/// nfqlb may be started.
func runCapturingOutput(_ arguments: [String], input: String? = nil, errors: Bool = false) -> (status: Int32, output: String)? {
    guard let (readEnd, writeEnd) = try? FileDescriptor.pipe() else { return nil }
    defer { try? readEnd.close() }
    var inputFile: FileDescriptor?
    if let input {
        var template = Array("/tmp/nfqlb-input-XXXXXX".utf8CString)
        let fd = mkstemp(&template)
        guard fd >= 0 else { return nil }
        unlink(&template)
        let file = FileDescriptor(rawValue: fd)
        guard (try? file.writeAll(input.utf8)) != nil, (try? file.seek(offset: 0, from: .start)) != nil else {
            try? file.close()
            return nil
        }
        inputFile = file
    }
    defer { try? inputFile?.close() }
    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    defer { posix_spawn_file_actions_destroy(&actions) }
    if let inputFile {
        posix_spawn_file_actions_adddup2(&actions, inputFile.rawValue, 0)
        posix_spawn_file_actions_addclose(&actions, inputFile.rawValue)
    } else {
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
    }
    posix_spawn_file_actions_adddup2(&actions, writeEnd.rawValue, 1)
    if errors {
        posix_spawn_file_actions_adddup2(&actions, writeEnd.rawValue, 2)
    } else {
        posix_spawn_file_actions_addopen(&actions, 2, "/dev/null", O_WRONLY, 0)
    }
    posix_spawn_file_actions_addclose(&actions, readEnd.rawValue)
    posix_spawn_file_actions_addclose(&actions, writeEnd.rawValue)
    var argv: [UnsafeMutablePointer<CChar>?] = arguments.map { strdup($0) } + [nil]
    defer { argv.forEach { free($0) } }
    var pid = pid_t()
    let spawned = posix_spawnp(&pid, arguments[0], &actions, nil, &argv, environ)
    try? writeEnd.close()
    guard spawned == 0 else { return nil }
    var output: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 4096)
    // Until end of file, or an error other than EINTR (which read(into:) retries).
    while let n = try? chunk.withUnsafeMutableBytes({ try readEnd.read(into: $0) }), n > 0 {
        output += chunk[0..<n]
    }
    var status: Int32 = 0
    while waitpid(pid, &status, 0) < 0 && Errno.current == .interrupted {}
    // WIFEXITED / WEXITSTATUS are macros: exited normally when the low 7 bits are 0.
    let exitStatus: Int32 = status & 0x7F == 0 ? (status >> 8) & 0xFF : 128 + (status & 0x7F)
    return (exitStatus, String(decoding: output, as: UTF8.self))
}
