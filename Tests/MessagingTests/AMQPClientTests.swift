import Foundation
import Logging
import TestSupport
import Testing

@testable import Messaging

/// A queue of its own for one test, on the default exchange, dead-lettering into a fanout exchange of its own.
struct TestQueue {
    let name = TestServers.uniqueName("test.q")
    var deadLetterExchange: String { "\(name).dlx" }
    var deadLetterQueue: String { "\(name).dead" }

    var topology: Topology {
        Topology(
            exchanges: [Topology.Exchange(deadLetterExchange, .fanout)],
            queues: [
                Topology.Queue(name, deadLetterExchange: deadLetterExchange),
                Topology.Queue(deadLetterQueue, deadLetterExchange: nil),
            ],
            bindings: [Topology.Binding(queue: deadLetterQueue, exchange: deadLetterExchange, routingKey: "")]
        )
    }

    func message(_ text: String, mandatory: Bool = false) -> OutgoingMessage {
        OutgoingMessage(
            exchange: "", routingKey: name, body: Array(text.utf8), messageID: UUID().uuidString, type: "test",
            mandatory: mandatory)
    }

    func cleanUp() async throws {
        try await RabbitManagement.deleteQueues([name, deadLetterQueue])
    }
}

/// Runs `body` with a started client and always shuts it down after (a live client keeps the test process alive).
func withClient<R>(
    _ name: String = TestServers.uniqueName("test.client"), topology: Topology,
    _ body: (AMQPClient) async throws -> R
) async throws -> R {
    let client = AMQPClient(
        configuration: .init(url: try TestServers.rabbitMQ(), connectionName: name, heartbeat: 5),
        topology: topology, logger: .test(name))
    client.start()
    do {
        let result = try await body(client)
        await client.shutdown()
        return result
    } catch {
        await client.shutdown()
        throw error
    }
}

/// Ready messages in a queue, read by a fresh client once every other client of the test has shut down.
func readyCount(_ queue: String) async throws -> Int {
    try await withClient(topology: Topology()) { try await $0.readyMessageCount(queue: queue) }
}

@Suite("AMQPClient against a real RabbitMQ", .timeLimit(.minutes(2)))
struct AMQPClientTests {
    @Test("publish with confirms, then consume and ack every message")
    func roundTrip() async throws {
        let queue = TestQueue()
        let texts = (0..<500).map { "message \($0)" }
        let received = try await withClient(topology: queue.topology) { client in
            let results = await client.publish(texts.map { queue.message($0) })
            #expect(results.allSatisfy { $0 == nil })
            var received: [String] = []
            for await delivery in client.consume(queue: queue.name, prefetch: 100) {
                received.append(String(decoding: delivery.body, as: UTF8.self))
                #expect(delivery.type == "test")
                #expect(!delivery.redelivered)
                delivery.ack()
                if received.count == texts.count { break }
            }
            return received
        }
        #expect(received == texts)  // one publisher, one queue: order is kept
        #expect(try await readyCount(queue.name) == 0)
        try await queue.cleanUp()
    }

    @Test("unacked deliveries come back after the consumer's connection is killed, and the consumer resumes")
    func unackedDeliveriesComeBack() async throws {
        let queue = TestQueue()
        let ids = (0..<10).map { "m\($0)" }
        try await withClient(topology: queue.topology) { publisher in
            #expect(await publisher.publish(ids.map { queue.message($0) }).allSatisfy { $0 == nil })
        }
        let consumerName = TestServers.uniqueName("test.consumer")
        var firstRound: Set<String> = []
        var secondRound: Set<String> = []
        let connections = try await withClient(consumerName, topology: queue.topology) { consumer in
            for await delivery in consumer.consume(queue: queue.name, prefetch: 20) {
                let text = String(decoding: delivery.body, as: UTF8.self)
                if firstRound.count < ids.count {
                    // Hold every message unacked, then have the broker kill this connection.
                    #expect(!delivery.redelivered)
                    firstRound.insert(text)
                    if firstRound.count == ids.count {
                        let closed = try await RabbitManagement.closeConnections(named: consumerName)
                        #expect(closed == 1)
                    }
                } else {
                    #expect(delivery.redelivered)
                    secondRound.insert(text)
                    delivery.ack()
                    if secondRound.count == ids.count { break }
                }
            }
            return consumer.connectionCount
        }
        #expect(firstRound == Set(ids))
        #expect(secondRound == Set(ids))
        #expect(connections == 2)
        #expect(try await readyCount(queue.name) == 0)
        try await queue.cleanUp()
    }

    @Test("a rejected message lands in the dead-letter queue")
    func rejectedMessageIsDeadLettered() async throws {
        let queue = TestQueue()
        let poison = queue.message("{not json")
        try await withClient(topology: queue.topology) { client in
            try await client.publish(poison)
            for await delivery in client.consume(queue: queue.name, prefetch: 1) {
                delivery.reject()
                break
            }
            var deadLettered = false
            for await dead in client.consume(queue: queue.deadLetterQueue, prefetch: 1) {
                #expect(dead.messageID == poison.messageID)
                #expect(dead.body == poison.body)
                dead.ack()
                deadLettered = true
                break
            }
            #expect(deadLettered)
        }
        #expect(try await readyCount(queue.name) == 0)
        try await queue.cleanUp()
    }

    @Test("a mandatory message no queue takes fails as unroutable; others still go through")
    func unroutableMandatoryMessage() async throws {
        let queue = TestQueue()
        var lost = queue.message("nowhere", mandatory: true)
        lost.routingKey = TestServers.uniqueName("no.such.queue")
        let results = try await withClient(topology: queue.topology) { client in
            await client.publish([queue.message("a", mandatory: true), lost, queue.message("b")])
        }
        #expect(results[0] == nil)
        #expect(results[1]?.code == .unroutable)
        #expect(results[2] == nil)
        try await queue.cleanUp()
    }

    @Test("after shutdown, publishing fails with a shutdown error")
    func publishAfterShutdown() async throws {
        let client = try await withClient(topology: .base) { $0 }
        await #expect(throws: MessagingError.self) {
            try await client.publish(TestQueue().message("late"))
        }
    }
}
