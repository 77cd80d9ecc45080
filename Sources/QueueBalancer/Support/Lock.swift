#if TSAN
import Glibc
#else
import Synchronization
#endif

#if !TSAN
/// The lock nfqlb's shared state is kept behind: `Synchronization.Mutex` (a futex on Linux, no allocation,
/// stored inline). See docs/ARCHITECTURE.md, "Threads and locks".
///
/// ThreadSanitizer builds (`-DTSAN`, `scripts/test.sh`) swap in a pthread mutex instead: `Mutex` locks
/// through atomics inside the standard library, which TSan does not instrument, so every access under a
/// `Mutex` would be reported as a race. TSan intercepts `pthread_mutex_lock` and sees the real ordering.
typealias Lock<Value: ~Copyable> = Mutex<Value>
#else
/// ThreadSanitizer builds: the same interface as `Mutex` over a pthread mutex, which TSan sees.
struct Lock<Value: ~Copyable>: ~Copyable, @unchecked Sendable {
    private let mutex: UnsafeMutablePointer<pthread_mutex_t>
    private let storage: UnsafeMutablePointer<Value>

    init(_ value: consuming Value) {
        mutex = .allocate(capacity: 1)
        pthread_mutex_init(mutex, nil)
        storage = .allocate(capacity: 1)
        storage.initialize(to: value)
    }

    deinit {
        storage.deinitialize(count: 1)
        storage.deallocate()
        pthread_mutex_destroy(mutex)
        mutex.deallocate()
    }

    borrowing func withLock<Result: ~Copyable, E: Error>(_ body: (inout Value) throws(E) -> Result) throws(E) -> Result {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return try body(&storage.pointee)
    }
}
#endif
