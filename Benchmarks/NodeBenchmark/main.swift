import BatchCore
import Foundation
import Logging
import Messaging

// Simulates a large compute environment for the provisioner: `--nodes` nodes (default 2,000) of `--env-id` send
// heartbeats at the executors' cadence (every `--interval` seconds, default 3), spread evenly over each interval,
// for `--seconds` seconds (default 60). The provisioner records them; scripts/bench measures its CPU and memory
// meanwhile and checks the nodes it tracks.
//
//   node-bench --env-id env-ab12cd34 [--nodes 2000] [--interval 3] [--seconds 60]
//
// BATCH_AMQP_URL: the broker; BATCH_NODE_KEY: the environment's node key (`batchctl admin node-key`), which every
// heartbeat proves.

func option(_ name: String) -> String? {
    let arguments = CommandLine.arguments
    guard let index = arguments.firstIndex(of: name), index + 1 < arguments.count else { return nil }
    return arguments[index + 1]
}

guard let envID = option("--env-id").flatMap(EnvID.init(validating:)) else {
    FileHandle.standardError.write(Data("node-bench: --env-id must be an environment id such as env-ab12cd34\n".utf8))
    exit(2)
}
guard let nodeKey = try? NodeKey(base64: ProcessInfo.processInfo.environment["BATCH_NODE_KEY"] ?? "") else {
    FileHandle.standardError.write(
        Data("node-bench: BATCH_NODE_KEY must be the environment's node key (batchctl admin node-key)\n".utf8))
    exit(2)
}
let count = Int(option("--nodes") ?? "") ?? 2000
let interval = Double(option("--interval") ?? "") ?? 3
let seconds = Double(option("--seconds") ?? "") ?? 60

var logger = Logger(label: "node-bench")
logger.logLevel = .warning
let url = try AMQPURL(ProcessInfo.processInfo.environment["BATCH_AMQP_URL"] ?? "amqp://guest:guest@127.0.0.1:5672/")
let amqp = AMQPClient(configuration: .init(url: url, connectionName: "node-bench"), logger: logger)
amqp.start()
try await amqp.declare(.base)

let nodes = (0..<count).map { NodeID(rawValue: String(format: "node-b%07d", $0)) }
let proofs = nodes.map { nodeKey.proof(node: $0) }
let start = ContinuousClock.now
let end = start + .milliseconds(Int(seconds * 1000))
let tick = Duration.milliseconds(100)
let perTick = Double(count) * 0.1 / interval
var sent = 0
var failed = 0
var owed = 0.0
var next = 0
while ContinuousClock.now < end {
    let deadline = ContinuousClock.now + tick
    owed += perTick
    var batch: [OutgoingMessage] = []
    while owed >= 1 {
        let node = nodes[next % count]
        let proof = proofs[next % count]
        next += 1
        owed -= 1
        batch.append(
            try OutgoingMessage(
                exchange: Topology.eventsExchange, routingKey: Topology.Event.nodeHeartbeat,
                payload: NodeHeartbeat(
                    nodeID: node, envID: envID, slots: 4, freeSlots: 4, host: "sim-\(node.rawValue)", pid: 1,
                    at: Date(), proof: proof),
                persistent: false))
    }
    failed += await amqp.publish(batch).filter { $0 != nil }.count
    sent += batch.count
    try await Task.sleep(until: deadline)
}
let elapsed = ContinuousClock.now - start
let elapsedSeconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
print(
    String(
        format: "%d simulated nodes, a heartbeat every %.0f s each: %d heartbeats in %.1f s (%.0f/s), %d failed",
        count, interval, sent, elapsedSeconds, Double(sent) / elapsedSeconds, failed))
await amqp.shutdown()
