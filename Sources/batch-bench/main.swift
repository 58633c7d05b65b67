import Foundation
import Logging
import Messaging

// Measures the messaging layer against the real broker: confirmed persistent publishes per second (a window of
// confirms in flight, and one confirm at a time for comparison) and acked consumes per second.
//
//   batch-bench [--messages N] [--size BYTES]      (BATCH_AMQP_URL picks the broker)

func option(_ name: String, default fallback: Int) -> Int {
    let arguments = CommandLine.arguments
    guard let index = arguments.firstIndex(of: name), index + 1 < arguments.count, let value = Int(arguments[index + 1])
    else { return fallback }
    return value
}
let messages = option("--messages", default: 50_000)
let size = option("--size", default: 256)

var logger = Logger(label: "bench")
logger.logLevel = .warning
guard let given = ProcessInfo.processInfo.environment["BATCH_AMQP_URL"] else {
    FileHandle.standardError.write(
        Data("batch-bench: BATCH_AMQP_URL is not set (scripts/servers env prints it)\n".utf8))
    exit(1)
}
let url = try AMQPURL(given)
let queue = "bench.\(UUID().uuidString.prefix(8).lowercased())"
let topology = Topology(queues: [Topology.Queue(queue, deadLetterExchange: nil)])
let body = [UInt8](repeating: UInt8(ascii: "x"), count: size)

@Sendable func message(_ index: Int) -> OutgoingMessage {
    OutgoingMessage(exchange: "", routingKey: queue, body: body, messageID: String(index))
}

func rate(_ count: Int, _ elapsed: Duration) -> String {
    let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
    return String(format: "%.0f msgs/s (%d in %.2f s)", Double(count) / seconds, count, seconds)
}

let publisher = AMQPClient(
    configuration: .init(url: url, connectionName: "bench-publisher"), topology: topology, logger: logger)
let consumer = AMQPClient(
    configuration: .init(url: url, connectionName: "bench-consumer"), topology: topology, logger: logger)
publisher.start()
consumer.start()
try await publisher.declare(topology)

// One confirm at a time.
let serialCount = min(2000, messages)
var start = ContinuousClock.now
for index in 0..<serialCount { try await publisher.publish(message(index)) }
print("publish, one confirm at a time:   \(rate(serialCount, ContinuousClock.now - start))")

// Many in flight: 8 publishers of 500-message batches keep the confirm window full.
start = ContinuousClock.now
let failures = await withTaskGroup(of: Int.self) { group in
    let chunk = 500
    let publishers = 8
    for worker in 0..<publishers {
        group.addTask {
            var failed = 0
            var offset = serialCount + worker * chunk
            while offset < serialCount + messages {
                let batch = (offset..<min(offset + chunk, serialCount + messages)).map(message)
                failed += await publisher.publish(batch).filter { $0 != nil }.count
                offset += publishers * chunk
            }
            return failed
        }
    }
    var failed = 0
    for await count in group { failed += count }
    return failed
}
print("publish, confirm window 1000:     \(rate(messages, ContinuousClock.now - start)) failures \(failures)")

// Consume everything, acking each message.
let total = serialCount + messages
start = ContinuousClock.now
var received = 0
for await delivery in consumer.consume(queue: queue, prefetch: 1000) {
    delivery.ack()
    received += 1
    if received == total { break }
}
print("consume, manual ack, prefetch 1000: \(rate(received, ContinuousClock.now - start))")

await consumer.shutdown()
await publisher.shutdown()
