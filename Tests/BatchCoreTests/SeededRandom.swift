@testable import BatchCore

/// SplitMix64: a small, fast generator whose sequence a seed fixes, so a failing case can be replayed.
struct SeededRandom: RandomNumberGenerator {
    private var state: UInt64

    init(seed: UInt64) { state = seed }

    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

/// Random DAGs: edges only from a lower to a higher position in a random permutation, so there is no cycle.
enum RandomDAG {
    static func make(tasks count: Int, edges: Int, using random: inout SeededRandom) -> (
        names: [String], edges: [Dependence]
    ) {
        let names = (0..<count).map { "t\($0)" }
        let rank = Array(0..<count).shuffled(using: &random)  // rank[i]: position of task i in a hidden order
        var result: [Dependence] = []
        guard count > 1 else { return (names, []) }
        for _ in 0..<edges {
            let a = Int.random(in: 0..<count, using: &random)
            var b = Int.random(in: 0..<count, using: &random)
            if a == b { b = (b + 1) % count }
            let (from, to) = rank[a] < rank[b] ? (a, b) : (b, a)
            result.append(Dependence(startTask: names[from], endTask: names[to]))
        }
        return (names, result)
    }
}
