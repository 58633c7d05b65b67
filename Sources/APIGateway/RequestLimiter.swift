import BatchCore
import Synchronization

/// Each user's request rate, as a token bucket per user (``TokenBucket``): a user over it gets
/// `RequestLimitExceeded` and nothing is done, so a flood from one user neither crowds out the others nor piles up
/// work the scheduler cannot keep pace with. Per gateway process.
final class RequestLimiter: Sendable {
    let rate: Int
    let burst: Int
    private let buckets = Mutex<[UserID: TokenBucket]>([:])
    private let origin = ContinuousClock.now

    init(rate: Int, burst: Int) {
        self.rate = rate
        self.burst = burst
    }

    /// Takes one request of `user`'s allowance; false when the user is over the rate.
    func admit(_ user: UserID) -> Bool {
        let elapsed = ContinuousClock.now - origin
        let now = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) * 1e-18
        return buckets.withLock { buckets in
            var bucket = buckets[user] ?? TokenBucket(rate: Double(rate), burst: Double(burst), now: now)
            let admitted = bucket.take(now: now)
            buckets[user] = bucket
            return admitted
        }
    }
}
