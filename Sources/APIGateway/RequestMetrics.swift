import Metrics
import Synchronization

/// `batch.api.requests.total` by action and outcome and `batch.api.request.duration` by action, made once each (a
/// metric looked up per request costs a lock and a dictionary in the metrics backend).
final class RequestMetrics: Sendable {
    static let shared = RequestMetrics()
    private let counters = Mutex<[String: Counter]>([:])
    private let timers = Mutex<[String: Timer]>([:])

    func counter(action: String, outcome: String) -> Counter {
        counters.withLock { counters in
            let key = "\(action)/\(outcome)"
            if let counter = counters[key] { return counter }
            let counter = Counter(
                label: "batch.api.requests.total", dimensions: [("action", action), ("outcome", outcome)])
            counters[key] = counter
            return counter
        }
    }

    func timer(action: String) -> Timer {
        timers.withLock { timers in
            if let timer = timers[action] { return timer }
            let timer = Timer(label: "batch.api.request.duration", dimensions: [("action", action)])
            timers[action] = timer
            return timer
        }
    }
}
