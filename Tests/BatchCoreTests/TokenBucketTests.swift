import BatchCore
import Testing

@Suite("TokenBucket: a per-user request rate")
struct TokenBucketTests {
    /// How many of `times` the bucket admits, in order.
    static func admitted(_ bucket: inout TokenBucket, at times: [Double]) -> Int {
        times.filter { bucket.take(now: $0) }.count
    }

    @Test("a full bucket admits its burst at once, then nothing until time refills it")
    func burstThenRefill() {
        var bucket = TokenBucket(rate: 10, burst: 5, now: 0)
        let atOnce = Self.admitted(&bucket, at: Array(repeating: 0, count: 6))
        #expect(atOnce == 5)
        // A tenth of a second at 10 a second is one more.
        let later = Self.admitted(&bucket, at: [0.1, 0.1])
        #expect(later == 1)
    }

    @Test("a long pause refills no more than the burst")
    func refillIsCapped() {
        var bucket = TokenBucket(rate: 100, burst: 3, now: 0)
        _ = Self.admitted(&bucket, at: [0, 0, 0])
        let admitted = Self.admitted(&bucket, at: Array(repeating: 1_000, count: 10))
        #expect(admitted == 3)
    }

    @Test("over a long run, admissions follow the rate plus the burst")
    func sustainedRate() {
        var bucket = TokenBucket(rate: 50, burst: 20, now: 0)
        // 1,000 requests a second for 10 s.
        let admitted = Self.admitted(&bucket, at: (0..<10_000).map { Double($0) / 1_000 })
        #expect(admitted >= 500 && admitted <= 521)
    }

    @Test("a clock that steps back takes nothing away and adds nothing")
    func clockBackwards() {
        var bucket = TokenBucket(rate: 1, burst: 1, now: 10)
        let admitted = [10.0, 5, 11].map { time in bucket.take(now: time) }
        #expect(admitted == [true, false, true])
    }
}
