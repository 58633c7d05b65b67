import Foundation

/// Exit codes a ``RetryRule`` matches: one code (`137`), a range (`1-3`) or any (`*`).
public struct ExitCodePattern: Sendable, Hashable {
    public let codes: ClosedRange<Int>

    public init?(_ pattern: String) {
        let text = pattern.trimmingCharacters(in: .whitespaces)
        if text == "*" {
            codes = Int.min...Int.max
            return
        }
        let bounds = text.split(separator: "-", maxSplits: 1, omittingEmptySubsequences: false).map {
            Int($0.trimmingCharacters(in: .whitespaces))
        }
        switch bounds.count {
        case 1:
            guard let code = bounds[0], (0...255).contains(code) else { return nil }
            codes = code...code
        case 2:
            guard let low = bounds[0], let high = bounds[1], 0 <= low, low <= high, high <= 255 else { return nil }
            codes = low...high
        default:
            return nil
        }
    }

    public func matches(_ code: Int) -> Bool { codes.contains(code) }
}

/// What happens to a failed attempt: retried while attempts remain, unless an exit-code rule says otherwise.
///
/// The rules are tried in order; the first whose pattern matches decides (`EXIT` fails now, `RETRY` retries while
/// `MaxRetryCount` allows). Without a match, `MaxRetryCount` alone decides. A failure without an exit code (the
/// program could not start, or timed out) matches only `*`. Retries wait with exponential back-off.
public struct RetryPolicy: Sendable, Hashable {
    /// A parsed ``RetryRule``.
    public struct Rule: Sendable, Hashable {
        public var pattern: ExitCodePattern
        /// `RETRY` (true) or `EXIT` (false).
        public var retry: Bool
    }

    public var maxRetryCount: Int
    public var rules: [Rule]
    /// The first retry waits this long; each further one twice as long, up to ``maximumBackoff``.
    public var initialBackoff: Duration
    public var maximumBackoff: Duration

    public init(
        maxRetryCount: Int, rules: [RetryRule] = [], initialBackoff: Duration = .seconds(1),
        maximumBackoff: Duration = .seconds(60)
    ) {
        self.maxRetryCount = maxRetryCount
        self.rules = rules.compactMap { rule in
            ExitCodePattern(rule.onExitCode).map { Rule(pattern: $0, retry: rule.action == "RETRY") }
        }
        self.initialBackoff = initialBackoff
        self.maximumBackoff = maximumBackoff
    }

    public init(task: TaskSpec) {
        self.init(maxRetryCount: task.maxRetryCount ?? 0, rules: task.retryRules ?? [])
    }

    public enum Decision: Sendable, Hashable {
        /// Run again after `backoff`.
        case retry(after: Duration)
        /// Fail for good, with why.
        case fail(reason: String)
    }

    /// Decides after the `failures`-th counted failure of an instance (1 for the first).
    public func decide(exitCode: Int?, failures: Int) -> Decision {
        for rule in rules {
            let matches = exitCode.map(rule.pattern.matches) ?? (rule.pattern.codes == Int.min...Int.max)
            guard matches else { continue }
            if !rule.retry {
                return .fail(reason: "exit code \(exitCode.map(String.init) ?? "none") is not retried (rule EXIT)")
            }
            break
        }
        guard failures <= maxRetryCount else {
            return .fail(
                reason: maxRetryCount == 0
                    ? "failed (MaxRetryCount is 0)"
                    : "failed after \(failures) attempts (MaxRetryCount \(maxRetryCount))")
        }
        return .retry(after: backoff(failures: failures))
    }

    /// `initialBackoff × 2^(failures − 1)`, at most `maximumBackoff`.
    public func backoff(failures: Int) -> Duration {
        let doublings = max(0, min(failures - 1, 30))
        let backoff = initialBackoff * (1 << doublings)
        return min(backoff, maximumBackoff)
    }

}
