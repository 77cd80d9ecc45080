import ArgumentParser
import Foundation
import Glibc
import Logging
import QueueBalancer

/// Prints `nfqlb: message` on standard error and returns the exit code to throw: every command's errors are
/// one line, and the status says what kind (2: the configuration, 1: anything else).
func failure(_ message: String, status: Int32 = 1) -> ExitCode {
    FileHandle.standardError.write(Data("nfqlb: \(message)\n".utf8))
    return ExitCode(status)
}

extension IPAddress: ExpressibleByArgument {
    public init?(argument: String) { self.init(argument) }
}

extension IPPrefix: ExpressibleByArgument {
    public init?(argument: String) { self.init(argument) }
}

extension Logger.Level: @retroactive ExpressibleByArgument {}

extension RealServerSetup.Mode: ExpressibleByArgument {}

/// Raised by SIGINT/SIGTERM; read by the runtime's loops.
let stopSignal = StopSignal()
/// Raised by SIGHUP; taken by the reload thread of `nfqlb run`.
let hangupSignal = StopSignal()

/// SIGINT and SIGTERM raise ``stopSignal``, SIGHUP ``hangupSignal``. A launcher may start us with signals
/// blocked (Foundation.Process on Linux passes Dispatch's mask on): unblock them before the worker threads
/// inherit the mask.
func installSignalHandlers() {
    _ = stopSignal   // initialise the globals before a handler can touch them (no swift_once in a signal handler)
    _ = hangupSignal
    var signals = sigset_t()
    sigemptyset(&signals)
    sigaddset(&signals, SIGINT)
    sigaddset(&signals, SIGTERM)
    sigaddset(&signals, SIGHUP)
    pthread_sigmask(SIG_UNBLOCK, &signals, nil)
    signal(SIGINT) { _ in stopSignal.raise() }
    signal(SIGTERM) { _ in stopSignal.raise() }
    signal(SIGHUP) { _ in hangupSignal.raise() }
    signal(SIGPIPE, SIG_IGN)
}
