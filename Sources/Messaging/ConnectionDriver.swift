import CRabbitMQ
import Foundation
import Logging

#if canImport(Glibc)
    import Glibc
#endif

/// The thread that owns one rabbitmq-c connection: it sends publishes and settlements handed over by
/// ``AMQPClient``, reads confirms and deliveries, services heartbeats and reconnects after a failure.
///
/// Everything here runs on that one thread; other threads only reach it through `AMQPClient.send(_:)`.
/// Channel 1 carries declarations and confirmed publishes; each consumer has a channel of its own (2, 3, …).
final class ConnectionDriver: @unchecked Sendable {
    private struct Consumer {
        let registration: ConsumerRegistration
        var channel: UInt16?
    }

    private static let controlChannel: UInt16 = 1

    private let client: AMQPClient
    private let configuration: AMQPClient.Configuration
    private var logger: Logger
    private var connection: amqp_connection_state_t?
    /// Grows by one per connection; a settlement for an older generation is dropped.
    private var generation = 0
    private var topology: Topology
    /// Declarations and inspections asked for while disconnected, carried out once connected.
    private var deferred: [AMQPClient.Command] = []

    private var nextTag: UInt64 = 1
    private var lowestUnconfirmed: UInt64 = 1
    private var unconfirmed: [UInt64: PendingPublish] = [:]
    private var waiting: [PendingPublish] = []
    private var waitingHead = 0
    private var returnedMessageIDs: Set<String> = []

    private var consumers: [Int: Consumer] = [:]
    private var consumerByChannel: [UInt16: Int] = [:]

    init(client: AMQPClient) {
        self.client = client
        self.configuration = client.configuration
        self.logger = client.logger
        self.logger[metadataKey: "amqp.connection"] = "\(configuration.connectionName)"
        self.topology = client.shared.withLock { $0.topology }
    }

    // MARK: Main loop

    func run() {
        var backoff = configuration.reconnectBackoff.first
        while !isStopping {
            if connection == nil {
                applyCommands()
                do {
                    try connect()
                    backoff = configuration.reconnectBackoff.first
                    logger.info("AMQP connection open", metadata: ["amqp.url": "\(configuration.url)"])
                } catch {
                    disconnect()
                    logger.warning(
                        "AMQP connection failed, retrying",
                        metadata: ["error": "\(error)", "retry.in": "\(backoff)"])
                    sleep(for: backoff)
                    backoff = min(backoff * 2, configuration.reconnectBackoff.max)
                }
                continue
            }
            do {
                applyCommands()
                try sendWaiting()
                try pump(mayWait: true)
            } catch {
                logger.warning("AMQP connection lost, reconnecting", metadata: ["error": "\(error)"])
                disconnect()
            }
        }
        finish()
    }

    private var isStopping: Bool { client.shared.withLock { $0.stopping } }

    /// Waits for `duration` or until shutdown is requested.
    private func sleep(for duration: Duration) {
        let millis = Int32(
            clamping: duration.components.seconds * 1000 + duration.components.attoseconds / 1_000_000_000_000_000)
        var fds = [pollfd(fd: client.wakeup.readFD, events: Int16(POLLIN), revents: 0)]
        _ = poll(&fds, 1, millis)
        client.wakeup.drain()
    }

    // MARK: Commands

    private func takeCommands() -> [AMQPClient.Command] {
        client.shared.withLock { state in
            defer { state.commands.removeAll(keepingCapacity: true) }
            return state.commands
        }
    }

    private func applyCommands() {
        for command in takeCommands() { apply(command) }
    }

    private func apply(_ command: AMQPClient.Command) {
        switch command {
        case .publish(let pending):
            waiting.append(contentsOf: pending)
        case .settle(let settlement):
            settle(settlement)
        case .consume(let registration):
            consumers[registration.id] = Consumer(registration: registration, channel: nil)
            if connection != nil { attempt { try self.openConsumer(registration.id) } }
        case .cancel(let id):
            cancelConsumer(id)
        case .inspect(let queue, let continuation):
            guard let connection else {
                deferred.append(command)
                return
            }
            let ok = withBytes(queue) { name in
                amqp_queue_declare(connection, Self.controlChannel, name, 1, 0, 0, 0, amqp_empty_table)
            }
            do {
                try Self.check(amqp_get_rpc_reply(connection), "inspecting queue \(queue)", .declarationFailed)
                continuation.resume(returning: Int(ok?.pointee.message_count ?? 0))
            } catch {
                continuation.resume(throwing: error)
                disconnect()
            }
        case .declare(let extra, let continuation):
            if connection == nil {
                deferred.append(command)
            } else {
                do {
                    try declare(extra)
                    topology = topology.merging(extra)
                    continuation.resume()
                } catch {
                    continuation.resume(throwing: error)
                    disconnect()
                }
            }
        }
    }

    /// Runs `body`; a failure drops the connection, which is then re-established with everything re-declared.
    private func attempt(_ body: () throws -> Void) {
        do { try body() } catch {
            logger.warning("AMQP operation failed, reconnecting", metadata: ["error": "\(error)"])
            disconnect()
        }
    }

    private func settle(_ settlement: AMQPClient.Settlement) {
        guard let connection, settlement.generation == generation, consumerByChannel[settlement.channel] != nil else {
            return  // the connection that delivered it is gone: the broker requeued the message
        }
        let status: Int32
        switch settlement.kind {
        case .ack: status = amqp_basic_ack(connection, settlement.channel, settlement.deliveryTag, 0)
        case .nack(let requeue):
            status = amqp_basic_nack(connection, settlement.channel, settlement.deliveryTag, 0, requeue ? 1 : 0)
        case .reject: status = amqp_basic_reject(connection, settlement.channel, settlement.deliveryTag, 0)
        }
        if status != AMQP_STATUS_OK.rawValue {
            logger.warning("AMQP settle failed, reconnecting", metadata: ["error": "\(Self.describe(status: status))"])
            disconnect()
        }
    }

    // MARK: Publishing

    private func sendWaiting() throws {
        while waitingHead < waiting.count, unconfirmed.count < configuration.confirmWindow {
            let pending = waiting[waitingHead]
            waitingHead += 1
            try publishNow(pending)
        }
        if waitingHead == waiting.count {
            waiting.removeAll(keepingCapacity: true)
            waitingHead = 0
        }
    }

    private func publishNow(_ pending: PendingPublish) throws {
        guard let connection else { throw MessagingError(.connectionFailed, "not connected") }
        let tag = nextTag
        nextTag += 1
        unconfirmed[tag] = pending  // from here on, a connection loss republishes it
        let message = pending.message
        var properties = amqp_basic_properties_t()
        properties._flags =
            amqp_flags_t(AMQP_BASIC_CONTENT_TYPE_FLAG | AMQP_BASIC_DELIVERY_MODE_FLAG)
            | amqp_flags_t(AMQP_BASIC_MESSAGE_ID_FLAG | AMQP_BASIC_TIMESTAMP_FLAG)
        properties.delivery_mode = message.persistent ? 2 : 1
        properties.timestamp = UInt64(Date().timeIntervalSince1970)
        if message.type != nil { properties._flags |= amqp_flags_t(AMQP_BASIC_TYPE_FLAG) }
        if message.correlationID != nil { properties._flags |= amqp_flags_t(AMQP_BASIC_CORRELATION_ID_FLAG) }

        let status: Int32 = withBytes(message.exchange) { exchange in
            withBytes(message.routingKey) { routingKey in
                withBytes("application/json") { contentType in
                    withBytes(message.messageID) { messageID in
                        withBytes(message.type ?? "") { type in
                            withBytes(message.correlationID ?? "") { correlationID in
                                message.body.withUnsafeBytes { body in
                                    properties.content_type = contentType
                                    properties.message_id = messageID
                                    properties.type = type
                                    properties.correlation_id = correlationID
                                    let bodyBytes = amqp_bytes_t(
                                        len: body.count, bytes: UnsafeMutableRawPointer(mutating: body.baseAddress))
                                    return amqp_basic_publish(
                                        connection, Self.controlChannel, exchange, routingKey,
                                        message.mandatory ? 1 : 0, 0, &properties, bodyBytes)
                                }
                            }
                        }
                    }
                }
            }
        }
        guard status == AMQP_STATUS_OK.rawValue else {
            throw MessagingError(.connectionFailed, "publish failed: \(Self.describe(status: status))")
        }
    }

    private func confirm(tag: UInt64, multiple: Bool, error: MessagingError?) {
        if multiple {
            var current = lowestUnconfirmed
            while current <= tag {
                if let pending = unconfirmed.removeValue(forKey: current) { resolve(pending, error) }
                current += 1
            }
        } else if let pending = unconfirmed.removeValue(forKey: tag) {
            resolve(pending, error)
        }
        while lowestUnconfirmed < nextTag, unconfirmed[lowestUnconfirmed] == nil { lowestUnconfirmed += 1 }
    }

    private func resolve(_ pending: PendingPublish, _ error: MessagingError?) {
        if error == nil, pending.message.mandatory, returnedMessageIDs.remove(pending.message.messageID) != nil {
            pending.complete(
                MessagingError(
                    .unroutable,
                    "no queue is bound to \(pending.message.exchange) with key \(pending.message.routingKey)"))
        } else {
            pending.complete(error)
        }
    }

    // MARK: Reading frames

    /// Handles every frame that has arrived; when none has and `mayWait`, first sleeps in `poll(2)` until the
    /// socket is readable, a command arrives, or it is time to service heartbeats.
    private func pump(mayWait: Bool) throws {
        guard let connection else { return }
        if amqp_frames_enqueued(connection) == 0, amqp_data_in_buffer(connection) == 0 {
            let sleep =
                mayWait
                && client.shared.withLock { state -> Bool in
                    guard state.commands.isEmpty, !state.stopping else { return false }
                    state.driverSleeping = true
                    return true
                }
            let canSend = waitingHead < waiting.count && unconfirmed.count < configuration.confirmWindow
            let timeout: Int32 = sleep && !canSend ? Int32(min(configuration.heartbeat * 500, 1000)) : 0
            var fds = [
                pollfd(fd: amqp_get_sockfd(connection), events: Int16(POLLIN), revents: 0),
                pollfd(fd: client.wakeup.readFD, events: Int16(POLLIN), revents: 0),
            ]
            _ = poll(&fds, 2, timeout)
            if sleep { client.shared.withLock { $0.driverSleeping = false } }
            if fds[1].revents != 0 { client.wakeup.drain() }
        }
        var frame = amqp_frame_t()
        var immediately = timeval(tv_sec: 0, tv_usec: 0)
        for _ in 0..<4096 {
            let status = amqp_simple_wait_frame_noblock(connection, &frame, &immediately)
            if status == AMQP_STATUS_TIMEOUT.rawValue { break }
            guard status == AMQP_STATUS_OK.rawValue else {
                throw MessagingError(.connectionFailed, Self.describe(status: status))
            }
            try handle(frame, on: connection)
            amqp_maybe_release_buffers(connection)
        }
    }

    private func handle(_ frame: amqp_frame_t, on connection: amqp_connection_state_t) throws {
        guard frame.frame_type == AMQP_FRAME_METHOD else { return }
        let method = frame.payload.method
        switch method.id {
        case AMQP_BASIC_ACK_METHOD:
            let ack = method.decoded.assumingMemoryBound(to: amqp_basic_ack_t.self).pointee
            confirm(tag: ack.delivery_tag, multiple: ack.multiple != 0, error: nil)
        case AMQP_BASIC_NACK_METHOD:
            let nack = method.decoded.assumingMemoryBound(to: amqp_basic_nack_t.self).pointee
            confirm(
                tag: nack.delivery_tag, multiple: nack.multiple != 0,
                error: MessagingError(.nacked, "the broker refused the message"))
        case AMQP_BASIC_RETURN_METHOD:
            let message = try readMessage(on: frame.channel, connection)
            if let id = message.messageID { returnedMessageIDs.insert(id) }
        case AMQP_BASIC_DELIVER_METHOD:
            let deliver = method.decoded.assumingMemoryBound(to: amqp_basic_deliver_t.self).pointee
            let exchange = Self.string(deliver.exchange)
            let routingKey = Self.string(deliver.routing_key)
            let message = try readMessage(on: frame.channel, connection)
            guard let id = consumerByChannel[frame.channel], let consumer = consumers[id] else {
                return  // its consumer was cancelled; closing the channel requeued it
            }
            let delivery = Delivery(
                body: message.body, exchange: exchange, routingKey: routingKey, messageID: message.messageID,
                type: message.type, correlationID: message.correlationID, redelivered: deliver.redelivered != 0,
                deliveryTag: deliver.delivery_tag, channel: frame.channel, generation: generation, client: client)
            consumer.registration.continuation.yield(delivery)
        case AMQP_CHANNEL_CLOSE_METHOD:
            let close = method.decoded.assumingMemoryBound(to: amqp_channel_close_t.self).pointee
            var ok = amqp_channel_close_ok_t(dummy: 0)
            _ = amqp_send_method(connection, frame.channel, AMQP_CHANNEL_CLOSE_OK_METHOD, &ok)
            throw MessagingError(
                .connectionFailed,
                "broker closed channel \(frame.channel): \(close.reply_code) \(Self.string(close.reply_text))")
        case AMQP_CONNECTION_CLOSE_METHOD:
            let close = method.decoded.assumingMemoryBound(to: amqp_connection_close_t.self).pointee
            var ok = amqp_connection_close_ok_t(dummy: 0)
            _ = amqp_send_method(connection, 0, AMQP_CONNECTION_CLOSE_OK_METHOD, &ok)
            throw MessagingError(
                .connectionFailed, "broker closed the connection: \(close.reply_code) \(Self.string(close.reply_text))")
        case AMQP_BASIC_CANCEL_METHOD:
            throw MessagingError(.connectionFailed, "broker cancelled the consumer on channel \(frame.channel)")
        default:
            break
        }
    }

    private struct ReceivedMessage {
        var body: [UInt8]
        var messageID: String?
        var type: String?
        var correlationID: String?
    }

    private func readMessage(on channel: UInt16, _ connection: amqp_connection_state_t) throws -> ReceivedMessage {
        var message = amqp_message_t()
        let reply = amqp_read_message(connection, channel, &message, 0)
        try Self.check(reply, "reading a message")
        defer { amqp_destroy_message(&message) }
        let properties = message.properties
        func property(_ flag: Int32, _ bytes: amqp_bytes_t) -> String? {
            properties._flags & amqp_flags_t(flag) != 0 ? Self.string(bytes) : nil
        }
        let body =
            message.body.len == 0
            ? []
            : Array(UnsafeRawBufferPointer(start: message.body.bytes, count: message.body.len))
        return ReceivedMessage(
            body: body,
            messageID: property(AMQP_BASIC_MESSAGE_ID_FLAG, properties.message_id),
            type: property(AMQP_BASIC_TYPE_FLAG, properties.type),
            correlationID: property(AMQP_BASIC_CORRELATION_ID_FLAG, properties.correlation_id)
        )
    }

    // MARK: Connection

    private func connect() throws {
        guard let connection = amqp_new_connection() else {
            throw MessagingError(.connectionFailed, "out of memory")
        }
        self.connection = connection
        let url = configuration.url
        try Self.openSocket(connection, url: url)
        var rpcTimeout = timeval(tv_sec: 30, tv_usec: 0)
        _ = amqp_set_rpc_timeout(connection, &rpcTimeout)
        try Self.check(
            crmq_login(
                connection, url.vhost, 131_072, Int32(configuration.heartbeat), url.user, url.password,
                configuration.connectionName),
            "login to \(url)")
        amqp_channel_open(connection, Self.controlChannel)
        try Self.check(amqp_get_rpc_reply(connection), "channel.open")
        amqp_confirm_select(connection, Self.controlChannel)
        try Self.check(amqp_get_rpc_reply(connection), "confirm.select")
        try declare(topology)

        generation += 1
        for id in consumers.keys.sorted() { try openConsumer(id) }
        client.shared.withLock {
            $0.connected = true
            $0.connectionCount += 1
        }
        let waiting = deferred
        deferred = []
        waiting.forEach(apply)
    }

    /// Opens `connection`'s socket to the broker: TCP, or TLS for an `amqps` URL (the handshake and the certificate's
    /// checks included).
    static func openSocket(_ connection: amqp_connection_state_t, url: AMQPURL) throws {
        let socket = try url.tls ? tlsSocket(connection, url: url) : amqp_tcp_socket_new(connection)
        guard let socket else {
            throw MessagingError(.connectionFailed, "cannot create a socket")
        }
        var timeout = timeval(tv_sec: 5, tv_usec: 0)
        let status = amqp_socket_open_noblock(socket, url.host, Int32(url.port), &timeout)
        guard status == AMQP_STATUS_OK.rawValue else {
            throw MessagingError(.connectionFailed, "cannot reach \(url): \(describe(status: status))")
        }
    }

    /// Opens a socket to the broker as ``openSocket(_:url:)`` does, and closes it again.
    static func probe(_ url: AMQPURL) throws {
        guard let connection = amqp_new_connection() else {
            throw MessagingError(.connectionFailed, "out of memory")
        }
        defer { amqp_destroy_connection(connection) }
        try openSocket(connection, url: url)
    }

    /// The system's CAs, for an `amqps` URL that names no `cacertfile`.
    static let systemCAFile = "/etc/ssl/certs/ca-certificates.crt"

    /// A TLS socket that accepts only a broker whose certificate chains to the URL's CA file (else the system's CAs)
    /// and names the URL's host.
    private static func tlsSocket(_ connection: amqp_connection_state_t, url: AMQPURL) throws -> OpaquePointer? {
        guard let socket = amqp_ssl_socket_new(connection) else { return nil }
        let caFile = url.caCertificateFile ?? systemCAFile
        let status = amqp_ssl_socket_set_cacert(socket, caFile)
        guard status == AMQP_STATUS_OK.rawValue else {
            throw MessagingError(
                .connectionFailed, "cannot read the CA file \(caFile) for \(url): \(describe(status: status))")
        }
        amqp_ssl_socket_set_verify_peer(socket, 1)
        amqp_ssl_socket_set_verify_hostname(socket, 1)
        return socket
    }

    /// Drops the connection. Unconfirmed publishes go back to the front of the queue, to be published again on
    /// the next connection; consumers are subscribed again then.
    private func disconnect() {
        if let connection {
            amqp_destroy_connection(connection)
            self.connection = nil
        }
        let resend = unconfirmed.sorted { $0.key < $1.key }.map(\.value)
        waiting = resend + waiting[waitingHead...]
        waitingHead = 0
        unconfirmed = [:]
        returnedMessageIDs = []
        nextTag = 1
        lowestUnconfirmed = 1
        for id in consumers.keys { consumers[id]?.channel = nil }
        consumerByChannel = [:]
        client.shared.withLock { $0.connected = false }
    }

    private func declare(_ topology: Topology) throws {
        guard let connection else { throw MessagingError(.connectionFailed, "not connected") }
        let channel = Self.controlChannel
        for exchange in topology.exchanges {
            exchange.name.withCString { name in
                exchange.kind.rawValue.withCString { kind in
                    _ = amqp_exchange_declare(
                        connection, channel, amqp_cstring_bytes(name), amqp_cstring_bytes(kind), 0, 1, 0, 0,
                        amqp_empty_table)
                }
            }
            try Self.check(amqp_get_rpc_reply(connection), "declaring exchange \(exchange.name)", .declarationFailed)
        }
        for queue in topology.queues {
            withOptionalCString(queue.deadLetterExchange) { deadLetter in
                withOptionalCString(queue.queueType) { queueType in
                    _ = crmq_queue_declare(
                        connection, channel, queue.name, queue.durable ? 1 : 0, 0, queue.durable ? 0 : 1, deadLetter,
                        queueType)
                }
            }
            try Self.check(amqp_get_rpc_reply(connection), "declaring queue \(queue.name)", .declarationFailed)
        }
        for binding in topology.bindings {
            withBytes(binding.queue) { queue in
                withBytes(binding.exchange) { exchange in
                    withBytes(binding.routingKey) { key in
                        _ = amqp_queue_bind(connection, channel, queue, exchange, key, amqp_empty_table)
                    }
                }
            }
            try Self.check(
                amqp_get_rpc_reply(connection), "binding \(binding.queue) to \(binding.exchange)", .declarationFailed)
        }
    }

    private func openConsumer(_ id: Int) throws {
        guard let connection, let consumer = consumers[id], consumer.channel == nil else { return }
        var channel: UInt16 = 2
        while consumerByChannel[channel] != nil { channel += 1 }
        amqp_channel_open(connection, channel)
        try Self.check(amqp_get_rpc_reply(connection), "channel.open")
        amqp_basic_qos(connection, channel, 0, consumer.registration.prefetch, 0)
        try Self.check(amqp_get_rpc_reply(connection), "basic.qos")
        withBytes(consumer.registration.queue) { queue in
            _ = amqp_basic_consume(connection, channel, queue, amqp_empty_bytes, 0, 0, 0, amqp_empty_table)
        }
        try Self.check(
            amqp_get_rpc_reply(connection), "consuming from \(consumer.registration.queue)", .declarationFailed)
        consumers[id]?.channel = channel
        consumerByChannel[channel] = id
    }

    private func cancelConsumer(_ id: Int) {
        guard let consumer = consumers.removeValue(forKey: id) else { return }
        consumer.registration.continuation.finish()
        guard let channel = consumer.channel, let connection else { return }
        consumerByChannel[channel] = nil
        // Closing the channel returns this consumer's unacked deliveries to the queue.
        attempt { try Self.check(amqp_channel_close(connection, channel, AMQP_REPLY_SUCCESS), "channel.close") }
    }

    // MARK: Shutdown

    private func finish() {
        applyCommands()
        let deadline = ContinuousClock.now + .seconds(5)
        while connection != nil, !unconfirmed.isEmpty || waitingHead < waiting.count, ContinuousClock.now < deadline {
            do {
                applyCommands()
                try sendWaiting()
                try pump(mayWait: false)
                if !unconfirmed.isEmpty {
                    var fds = [pollfd(fd: amqp_get_sockfd(connection!), events: Int16(POLLIN), revents: 0)]
                    _ = poll(&fds, 1, 50)
                }
            } catch {
                break
            }
        }
        if let connection {
            _ = amqp_connection_close(connection, AMQP_REPLY_SUCCESS)
            amqp_destroy_connection(connection)
            self.connection = nil
        }
        let shutdown = MessagingError(.shutdown, "the AMQP client is shut down")
        for pending in unconfirmed.sorted(by: { $0.key < $1.key }).map(\.value) + waiting[waitingHead...] {
            pending.complete(shutdown)
        }
        unconfirmed = [:]
        waiting = []
        waitingHead = 0
        deferred.forEach { AMQPClient.fail($0, shutdown) }
        deferred = []
        for consumer in consumers.values { consumer.registration.continuation.finish() }
        consumers = [:]
        let (leftover, waiters) = client.shared.withLock { state in
            state.stopped = true
            state.connected = false
            defer {
                state.commands = []
                state.stopWaiters = []
            }
            return (state.commands, state.stopWaiters)
        }
        leftover.forEach { AMQPClient.fail($0, shutdown) }
        waiters.forEach { $0.resume() }
        logger.debug("AMQP client stopped")
    }

    // MARK: Helpers

    static func string(_ bytes: amqp_bytes_t) -> String {
        guard bytes.len > 0, let pointer = bytes.bytes else { return "" }
        return String(decoding: UnsafeRawBufferPointer(start: pointer, count: bytes.len), as: UTF8.self)
    }

    static func describe(status: Int32) -> String {
        String(cString: amqp_error_string2(status))
    }

    static func check(
        _ reply: amqp_rpc_reply_t, _ what: String, _ code: MessagingError.Code = .connectionFailed
    ) throws {
        switch reply.reply_type {
        case AMQP_RESPONSE_NORMAL:
            return
        case AMQP_RESPONSE_LIBRARY_EXCEPTION:
            throw MessagingError(.connectionFailed, "\(what): \(describe(status: reply.library_error))")
        case AMQP_RESPONSE_SERVER_EXCEPTION:
            switch reply.reply.id {
            case AMQP_CONNECTION_CLOSE_METHOD:
                let close = reply.reply.decoded.assumingMemoryBound(to: amqp_connection_close_t.self).pointee
                throw MessagingError(.connectionFailed, "\(what): \(close.reply_code) \(string(close.reply_text))")
            case AMQP_CHANNEL_CLOSE_METHOD:
                let close = reply.reply.decoded.assumingMemoryBound(to: amqp_channel_close_t.self).pointee
                throw MessagingError(code, "\(what): \(close.reply_code) \(string(close.reply_text))")
            default:
                throw MessagingError(code, "\(what): unexpected reply \(reply.reply.id)")
            }
        default:
            throw MessagingError(.connectionFailed, "\(what): no reply")
        }
    }
}

/// Calls `body` with `string` as `amqp_bytes_t`, valid only during the call.
@inline(__always)
func withBytes<R>(_ string: String, _ body: (amqp_bytes_t) throws -> R) rethrows -> R {
    var string = string
    return try string.withUTF8 { buffer in
        try body(amqp_bytes_t(len: buffer.count, bytes: UnsafeMutableRawPointer(mutating: buffer.baseAddress)))
    }
}

@inline(__always)
func withOptionalCString<R>(_ string: String?, _ body: (UnsafePointer<CChar>?) throws -> R) rethrows -> R {
    guard let string else { return try body(nil) }
    return try string.withCString { try body($0) }
}
