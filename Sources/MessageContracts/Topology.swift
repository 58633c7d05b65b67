/// Every AMQP exchange, queue and routing key Batch uses, and the declarations that create them.
///
/// - `batch.events` (topic): facts that happened (`job.submitted`, `instance.finished`, `node.heartbeat`, …);
///   services bind their own queue to the keys they care about, and users may bind theirs.
/// - `batch.commands` (direct): work for one compute environment (`env.<EnvId>` → queue `batch.env.<EnvId>`).
/// - `batch.replies` (direct): answers to one process's requests (`reply.<id>` → queue `batch.reply.<id>`).
/// - `batch.dead-letter` (fanout) → queue `batch.dead-letter`: messages a consumer rejected as poison.
///
/// Every durable queue dead-letters into `batch.dead-letter`.
public struct Topology: Sendable, Hashable {
    public struct Exchange: Sendable, Hashable {
        public enum Kind: String, Sendable { case direct, topic, fanout }
        public var name: String
        public var kind: Kind
        public init(_ name: String, _ kind: Kind) {
            self.name = name
            self.kind = kind
        }
    }

    public struct Queue: Sendable, Hashable {
        public var name: String
        public var durable: Bool
        /// Dead-letter exchange for rejected messages; `nil` for none.
        public var deadLetterExchange: String?
        /// `quorum` or `classic`; `nil` leaves the broker's default.
        public var queueType: String?
        public init(
            _ name: String, durable: Bool = true, deadLetterExchange: String? = Topology.deadLetterExchange,
            queueType: String? = nil
        ) {
            self.name = name
            self.durable = durable
            self.deadLetterExchange = deadLetterExchange
            self.queueType = queueType
        }
    }

    public struct Binding: Sendable, Hashable {
        public var queue: String
        public var exchange: String
        public var routingKey: String
        public init(queue: String, exchange: String, routingKey: String) {
            self.queue = queue
            self.exchange = exchange
            self.routingKey = routingKey
        }
    }

    public var exchanges: [Exchange]
    public var queues: [Queue]
    public var bindings: [Binding]

    public init(exchanges: [Exchange] = [], queues: [Queue] = [], bindings: [Binding] = []) {
        self.exchanges = exchanges
        self.queues = queues
        self.bindings = bindings
    }

    /// Both topologies' declarations, without repeats.
    public func merging(_ other: Topology) -> Topology {
        func unique<T: Hashable>(_ a: [T], _ b: [T]) -> [T] {
            var seen = Set<T>()
            return (a + b).filter { seen.insert($0).inserted }
        }
        return Topology(
            exchanges: unique(exchanges, other.exchanges),
            queues: unique(queues, other.queues),
            bindings: unique(bindings, other.bindings)
        )
    }
}

extension Topology {
    // MARK: Names

    public static let eventsExchange = "batch.events"
    public static let commandsExchange = "batch.commands"
    public static let repliesExchange = "batch.replies"
    public static let deadLetterExchange = "batch.dead-letter"
    public static let deadLetterQueue = "batch.dead-letter"
    public static let schedulerQueue = "batch.scheduler"
    public static let provisionerQueue = "batch.provisioner"

    /// Routing keys on `batch.events`.
    public enum Event {
        public static let jobSubmitted = "job.submitted"
        public static let jobTerminationRequested = "job.termination-requested"
        public static let jobRetryRequested = "job.retry-requested"
        public static let instanceTerminationRequested = "instance.termination-requested"
        public static let instanceStarted = "instance.started"
        public static let instanceFinished = "instance.finished"
        public static let instanceReports = "instance.reports"
        public static let nodeHeartbeat = "node.heartbeat"
        public static let heartbeatMark = "node.heartbeat-mark"
        public static let nodeStopped = "node.stopped"
        public static let nodeGone = "node.gone"
        public static let computeEnvCreated = "env.created"
        public static let computeEnvModified = "env.modified"
        public static let computeEnvDeletionRequested = "env.deletion-requested"
        public static let nodeTerminationRequested = "node.termination-requested"
    }

    /// The routing key of a state-change notification on `batch.events`: `notify.JOB_SUCCEED.job-ab12cd34`, so
    /// a user binds `notify.#`, `notify.JOB_*.#` style patterns (`notify.JOB_SUCCEED.*`) or one job's events.
    public static func notificationRoutingKey(event: String, job: String) -> String { "notify.\(event).\(job)" }
    /// The routing key a job's `Notifications` topic receives its selected events on: `topic.<TopicName>`.
    public static func topicRoutingKey(topic: String) -> String { "topic.\(topic)" }

    /// The work queue of a compute environment.
    public static func workQueue(env: String) -> String { "batch.env.\(env)" }
    /// The routing key on `batch.commands` that reaches a compute environment's work queue.
    public static func workRoutingKey(env: String) -> String { "env.\(env)" }

    // MARK: Declarations

    /// Exchanges and the dead-letter queue: what every client declares.
    public static let base = Topology(
        exchanges: [
            Exchange(eventsExchange, .topic),
            Exchange(commandsExchange, .direct),
            Exchange(repliesExchange, .direct),
            Exchange(deadLetterExchange, .fanout),
        ],
        queues: [Queue(deadLetterQueue, deadLetterExchange: nil)],
        bindings: [Binding(queue: deadLetterQueue, exchange: deadLetterExchange, routingKey: "")]
    )

    /// The scheduler's queue: job and instance events, and nodes gone.
    public static let scheduler = base.merging(
        Topology(
            queues: [Queue(schedulerQueue)],
            bindings: [
                Event.jobSubmitted, Event.jobTerminationRequested, Event.jobRetryRequested,
                Event.instanceTerminationRequested, Event.instanceStarted, Event.instanceFinished,
                Event.instanceReports, Event.nodeGone,
            ].map {
                Binding(queue: schedulerQueue, exchange: eventsExchange, routingKey: $0)
            }
        )
    )

    /// The provisioner's queue: environment and node events.
    public static let provisioner = base.merging(
        Topology(
            queues: [Queue(provisionerQueue)],
            bindings: [
                Event.computeEnvCreated, Event.computeEnvModified, Event.computeEnvDeletionRequested,
                Event.nodeTerminationRequested, Event.nodeHeartbeat, Event.heartbeatMark, Event.nodeStopped,
            ].map {
                Binding(queue: provisionerQueue, exchange: eventsExchange, routingKey: $0)
            }
        )
    )

    /// The services' own queues with their bindings. Every publisher declares them too, so that an event published
    /// before its consumer first started (a fresh installation, services starting in any order) is queued, not
    /// dropped as unroutable.
    public static let services = scheduler.merging(provisioner)

    /// A node's own queue, for commands about what it runs (`instance.kill`); it goes away with the node. Named with
    /// its environment, so that a broker user of that environment's nodes may consume it and no other node's.
    public static func nodeQueue(node: String, env: String) -> String { "batch.node.\(env).\(node)" }
    /// The routing key on `batch.commands` that reaches one node.
    public static func nodeRoutingKey(node: String) -> String { "node.\(node)" }

    /// A node's own queue, bound to `batch.commands`: all a node declares (its broker user may configure nothing
    /// else; the control plane declares the exchanges and the environment's work queue).
    public static func nodeQueue(forNode node: String, env: String) -> Topology {
        Topology(
            queues: [Queue(nodeQueue(node: node, env: env), durable: false)],
            bindings: [
                Binding(
                    queue: nodeQueue(node: node, env: env), exchange: commandsExchange,
                    routingKey: nodeRoutingKey(node: node))
            ]
        )
    }

    /// The routing key on `batch.replies` of one process's reply queue.
    public static func replyRoutingKey(_ id: String) -> String { "reply.\(id)" }
    public static func replyQueue(_ id: String) -> String { "batch.reply.\(id)" }

    /// A process's own reply queue (answers to its requests), bound to `batch.replies`; it goes with the process.
    public static func replyQueue(for id: String) -> Topology {
        base.merging(
            Topology(
                queues: [Queue(replyQueue(id), durable: false, deadLetterExchange: nil)],
                bindings: [Binding(queue: replyQueue(id), exchange: repliesExchange, routingKey: replyRoutingKey(id))]
            )
        )
    }

    /// A compute environment's work queue, bound to `batch.commands`.
    public static func workQueue(forEnv env: String) -> Topology {
        base.merging(
            Topology(
                queues: [Queue(workQueue(env: env))],
                bindings: [
                    Binding(
                        queue: workQueue(env: env), exchange: commandsExchange, routingKey: workRoutingKey(env: env))
                ]
            )
        )
    }
}

extension Topology {
    /// A broker user's permissions: regular expressions over the names of the exchanges and queues it may declare
    /// (`configure`), publish to or bind to (`write`), and consume from or bind from (`read`); and the routing keys
    /// it may publish on `batch.events` (a topic permission; nil for any).
    public struct Role: Sendable, Hashable {
        public var user: String
        public var configure: String
        public var write: String
        public var read: String
        public var eventsWrite: String?
    }

    /// One broker user per service. The gateway, scheduler and provisioner relay the same outbox, so each may
    /// publish any of the control plane's messages, and each declares the services' queues (declaring a queue that
    /// dead-letters takes read on it). A node declares only its own queue, consumes only its environment's and its
    /// own, and publishes only its reports, heartbeats, stop and log replies (and its own poison, dead-lettered). `scripts/servers`, compose and the tests make these users; `BrokerRoleTests` checks that the broker
    /// holds exactly these.
    public static let roles: [Role] = [
        Role(
            user: "batch-gateway",
            configure: #"^batch\.(events|commands|replies|dead-letter|scheduler|provisioner|reply\..+)$"#,
            write: #"^batch\.(events|commands|replies|dead-letter|scheduler|provisioner|reply\..+)$"#,
            read: #"^batch\.(events|replies|dead-letter|scheduler|provisioner|reply\..+)$"#),
        Role(
            user: "batch-scheduler",
            configure: #"^batch\.(events|commands|replies|dead-letter|scheduler|provisioner)$"#,
            write: #"^batch\.(events|commands|replies|dead-letter|scheduler|provisioner)$"#,
            read: #"^batch\.(events|dead-letter|scheduler|provisioner)$"#),
        Role(
            user: "batch-provisioner",
            configure: #"^batch\.(events|commands|replies|dead-letter|scheduler|provisioner|env\..+)$"#,
            write: #"^batch\.(events|commands|replies|dead-letter|scheduler|provisioner|env\..+)$"#,
            read: #"^batch\.(events|commands|dead-letter|scheduler|provisioner|env\..+)$"#),
        nodeRole(user: "batch-executor", env: #"env-[0-9A-Za-z_-]+"#),
    ]

    /// The broker user of one environment's nodes (`batch-node-<env id>`), made by the provisioner when it can manage
    /// the broker's users (`BATCH_RABBITMQ_MANAGEMENT_URL`): it consumes only that environment's work queue and its
    /// nodes' queues. Its password is the environment's ``NodeKey``'s `brokerPassword`.
    public static func nodeRole(env: String) -> Role { nodeRole(user: nodeUser(env: env), env: env) }

    /// The name of `env`'s nodes' broker user.
    public static func nodeUser(env: String) -> String { "batch-node-\(env)" }

    /// A node's permissions for the environments `env` matches (a regular expression of environment ids).
    static func nodeRole(user: String, env: String) -> Role {
        let node = #"node-[0-9A-Za-z_-]+"#
        return Role(
            user: user,
            configure: "^batch\\.node\\.\(env)\\.\(node)$",
            write: "^batch\\.(events|replies|dead-letter|node\\.\(env)\\.\(node))$",
            read: "^batch\\.(commands|env\\.\(env)|node\\.\(env)\\.\(node))$",
            eventsWrite: #"^(instance\.reports|node\.heartbeat|node\.stopped)$"#)
    }
}
