import Foundation
import MessageContracts
import TestSupport
import Testing

@testable import Messaging

/// AMQP over TLS to the local broker's TLS port (`scripts/servers`: a self-signed certificate for localhost,
/// `BATCH_AMQPS_URL` with it as `cacertfile`).
@Suite("AMQPS: the broker over TLS, its certificate checked", .timeLimit(.minutes(2)))
struct AMQPSTests {
    @Test("amqps URLs: port 5671 by default, cacertfile kept, no other parameter, no password in the description")
    func parsing() throws {
        let url = try AMQPURL("amqps://node:secret@rabbitmq/?cacertfile=/run/secrets/ca.pem")
        #expect(url.tls && url.port == 5671 && url.caCertificateFile == "/run/secrets/ca.pem")
        #expect(url.description == "amqps://node@rabbitmq:5671/")
        #expect(try AMQPURL(url.string) == url)
        #expect(try AMQPURL("amqp://node:secret@rabbitmq/").tls == false)
        let odd = AMQPURL(host: "broker", user: "batch-node-env-1", password: "a/b+c=", vhost: "jobs/1")
        #expect(try AMQPURL(odd.string) == odd)
        #expect(try AMQPURL("amqps://node:secret@rabbitmq:5000/jobs").caCertificateFile == nil)
        for refused in [
            "amqps://u:p@rabbitmq/?verify=verify_none", "amqp://u:p@rabbitmq/?cacertfile=/ca.pem",
            "amqps://u:p@rabbitmq/?cacertfile=",
        ] {
            #expect(throws: MessagingError.self, "\(refused)") { try AMQPURL(refused) }
        }
    }

    @Test("a client over TLS publishes with confirms and consumes, as over TCP")
    func roundTrip() async throws {
        let url = try TestServers.rabbitMQOverTLS()
        let queue = TestQueue()
        let client = AMQPClient(
            configuration: .init(url: url, connectionName: TestServers.uniqueName("tls.client"), heartbeat: 5),
            topology: queue.topology, logger: .test("tls"))
        client.start()
        let texts = (0..<50).map { "over TLS \($0)" }
        let results = await client.publish(texts.map { queue.message($0) })
        var received: [String] = []
        for await delivery in client.consume(queue: queue.name, prefetch: 10) {
            received.append(String(decoding: delivery.body, as: UTF8.self))
            delivery.ack()
            if received.count == texts.count { break }
        }
        await client.shutdown()
        #expect(results.allSatisfy { $0 == nil })
        #expect(received == texts)
        try await queue.cleanUp()
    }

    @Test("a broker whose certificate chains to another CA, or names another host, is refused")
    func refusals() throws {
        let url = try TestServers.rabbitMQOverTLS()
        try ConnectionDriver.probe(url)

        // The PostgreSQL server's self-signed certificate: a CA, but not the broker's.
        var foreign = url
        foreign.caCertificateFile = try #require(ProcessInfo.processInfo.environment["BATCH_POSTGRES_CA"])
        let untrusted = #expect(throws: MessagingError.self) { try ConnectionDriver.probe(foreign) }
        #expect(untrusted?.code == .connectionFailed)
        #expect(untrusted?.message.contains("amqps://") == true)
        #expect(
            untrusted?.message.contains("peer cert verification failed") == true, "\(String(describing: untrusted))")

        // The right CA, but a name the certificate does not hold: it is for localhost, and this is its address.
        var renamed = url
        renamed.host = "127.0.0.1"
        let misnamed = #expect(throws: MessagingError.self) { try ConnectionDriver.probe(renamed) }
        #expect(misnamed?.code == .connectionFailed)
        #expect(misnamed?.message.contains("hostname verification failed") == true, "\(String(describing: misnamed))")
    }
}
