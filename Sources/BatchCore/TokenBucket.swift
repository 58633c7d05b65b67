/// A token bucket: on average `rate` admissions a second, up to `burst` at once. Pure: the caller passes the time
/// (seconds on any monotonic clock).
public struct TokenBucket: Sendable, Hashable {
    public let rate: Double
    public let burst: Double
    private var tokens: Double
    private var last: Double

    /// A full bucket at time `now`.
    public init(rate: Double, burst: Double, now: Double) {
        self.rate = rate
        self.burst = max(1, burst)
        self.tokens = max(1, burst)
        self.last = now
    }

    /// Takes one token at time `now`; false when the bucket is empty (the caller is over its rate).
    public mutating func take(now: Double) -> Bool {
        if now > last {
            tokens = min(burst, tokens + (now - last) * rate)
            last = now
        }
        guard tokens >= 1 else { return false }
        tokens -= 1
        return true
    }
}
