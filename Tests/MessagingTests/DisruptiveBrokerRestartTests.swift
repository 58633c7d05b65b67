import Foundation
import TestSupport
import Testing

@testable import Messaging

/// Restarts the broker: runs alone, after every other test (`scripts/test` filters on "Disruptive").
@Suite("Disruptive: broker restart", .serialized, .timeLimit(.minutes(3)))
struct DisruptiveBrokerRestartTests {
    @Test("after the broker restarts, a publisher and a consumer resume on their own")
    func publisherAndConsumerResume() async throws {
        let queue = TestQueue()
        try await withClient(TestServers.uniqueName("test.restart.publisher"), topology: queue.topology) { publisher in
            try await withClient(TestServers.uniqueName("test.restart.consumer"), topology: queue.topology) {
                consumer in
                let before = (0..<50).map { "before \($0)" }
                let after = (0..<50).map { "after \($0)" }
                #expect(await publisher.publish(before.map { queue.message($0) }).allSatisfy { $0 == nil })

                var received: [String] = []
                for await delivery in consumer.consume(queue: queue.name, prefetch: 100) {
                    let text = String(decoding: delivery.body, as: UTF8.self)
                    received.append(text)
                    delivery.ack()
                    if received.count == before.count {
                        try await restartBroker()
                        // Published while both clients reconnect: each publish waits for its confirm.
                        let results = await publisher.publish(after.map { queue.message($0) })
                        #expect(results.allSatisfy { $0 == nil })
                    }
                    if Set(received).isSuperset(of: after) { break }
                }
                #expect(Set(received) == Set(before + after))
                #expect(publisher.connectionCount == 2)
                #expect(consumer.connectionCount == 2)
            }
        }
        #expect(try await readyCount(queue.name) == 0)
        try await queue.cleanUp()
    }

    func restartBroker() async throws {
        let script = TestServers.repositoryRoot.appendingPathComponent("scripts/servers").path
        guard await TestServers.runProgram(script, ["restart-rabbitmq"]) == 0 else {
            throw TestServers.Missing(description: "scripts/servers restart-rabbitmq failed")
        }
    }
}
