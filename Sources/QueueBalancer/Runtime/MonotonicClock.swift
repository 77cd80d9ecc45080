import Glibc

/// Milliseconds of CLOCK_MONOTONIC_COARSE: the tracker's clock, read once per batch.
public func monotonicMilliseconds() -> UInt64 {
    var now = timespec()
    clock_gettime(CLOCK_MONOTONIC_COARSE, &now)
    return UInt64(now.tv_sec) * 1000 + UInt64(now.tv_nsec) / 1_000_000
}
