@testable import BatchCore

typealias SeededRandom = SeededRandomNumberGenerator

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
