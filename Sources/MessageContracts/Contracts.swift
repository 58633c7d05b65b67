import BatchCore
import Foundation

// The messages Batch's services exchange. Events are past-tense facts on `batch.events`; `instance.run` is a
// command on `batch.commands`, routed to one compute environment's work queue.

/// A job was accepted by the gateway and written to the database.
public struct JobSubmitted: MessageContract, Hashable {
    public static let type = "job.submitted"
    public var jobID: JobID

    public init(jobID: JobID) { self.jobID = jobID }
}

/// Run one attempt of one task instance. Carries everything the executor needs; the executor never reads the
/// database.
public struct InstanceRun: MessageContract, Hashable {
    public static let type = "instance.run"
    public var jobID: JobID
    public var taskName: String
    public var instanceIndex: Int
    public var instanceCount: Int
    /// 1 for the first run, +1 per retry; a result for another attempt is stale.
    public var attempt: Int
    public var envID: EnvID
    public var command: String
    public var environment: [EnvVar]
    public var timeoutSeconds: Int
    /// The package, storage mappings and log destinations; nil when the task has none.
    public var io: InstanceIO?

    public init(
        jobID: JobID, taskName: String, instanceIndex: Int, instanceCount: Int, attempt: Int, envID: EnvID,
        command: String, environment: [EnvVar], timeoutSeconds: Int, io: InstanceIO? = nil
    ) {
        self.io = io
        self.jobID = jobID
        self.taskName = taskName
        self.instanceIndex = instanceIndex
        self.instanceCount = instanceCount
        self.attempt = attempt
        self.envID = envID
        self.command = command
        self.environment = environment
        self.timeoutSeconds = timeoutSeconds
    }
}

/// Run attempts of several instances of one task: what one scheduler batch sends an environment for it, in groups
/// of at most the slots of its smallest node. A node runs them as if each had come in its own ``InstanceRun``, as
/// its slots allow, and acks the message once every one has started (or is not to run).
public struct InstanceRuns: MessageContract, Hashable {
    public static let type = "instance.runs"
    public var jobID: JobID
    public var taskName: String
    public var instanceCount: Int
    public var envID: EnvID
    public var command: String
    public var environment: [EnvVar]
    public var timeoutSeconds: Int
    public var io: InstanceIO?
    public var attempts: [Attempt]
    /// `command`, `environment` and `io` sealed with the environment's ``NodeKey`` (``sealing(with:)``); those
    /// fields are then empty, and only the environment's nodes read them (``opening(with:)``).
    public var sealed: String?

    /// What a run message keeps secret.
    struct Secrets: Codable {
        var command: String
        var environment: [EnvVar]
        var io: InstanceIO?
    }

    /// One instance and its attempt.
    public struct Attempt: Codable, Sendable, Hashable {
        public var instanceIndex: Int
        public var attempt: Int

        public init(instanceIndex: Int, attempt: Int) {
            self.instanceIndex = instanceIndex
            self.attempt = attempt
        }
    }

    public init(
        jobID: JobID, taskName: String, instanceCount: Int, envID: EnvID, command: String, environment: [EnvVar],
        timeoutSeconds: Int, io: InstanceIO? = nil, attempts: [Attempt]
    ) {
        self.jobID = jobID
        self.taskName = taskName
        self.instanceCount = instanceCount
        self.envID = envID
        self.command = command
        self.environment = environment
        self.timeoutSeconds = timeoutSeconds
        self.io = io
        self.attempts = attempts
    }

    /// What the secrets of a task's run messages are sealed with, beside the key: they open for that task only.
    public static func sealingContext(job: JobID, task: String) -> String { "instance.runs:\(job.rawValue)/\(task)" }

    /// This message with its command, variables and storage parts sealed for the environment's nodes.
    public func sealing(with key: NodeKey) throws -> InstanceRuns {
        var sealed = self
        sealed.sealed = try key.seal(
            Secrets(command: command, environment: environment, io: io),
            context: Self.sealingContext(job: jobID, task: taskName))
        (sealed.command, sealed.environment, sealed.io) = ("", [], nil)
        return sealed
    }

    /// The same message with a sealed one's secrets in place; throws for a message that is not sealed or that
    /// does not open with `key` (another environment's).
    public func opening(with key: NodeKey) throws -> InstanceRuns {
        guard let sealed else { throw NodeKeyError("the run message is not sealed: refused") }
        let secrets = try key.open(Secrets.self, from: sealed, context: Self.sealingContext(job: jobID, task: taskName))
        var opened = self
        (opened.command, opened.environment, opened.io, opened.sealed) = (
            secrets.command, secrets.environment, secrets.io, nil
        )
        return opened
    }

    /// The runs, one for each attempt.
    public var runs: [InstanceRun] {
        attempts.map {
            InstanceRun(
                jobID: jobID, taskName: taskName, instanceIndex: $0.instanceIndex, instanceCount: instanceCount,
                attempt: $0.attempt, envID: envID, command: command, environment: environment,
                timeoutSeconds: timeoutSeconds, io: io)
        }
    }
}

/// What an instance takes from storage and leaves there: its package, inputs, outputs and logs, with the task's
/// storage credentials (sealed in the database; in this message only on the broker, never logged).
public struct InstanceIO: Codable, Sendable, Hashable {
    /// A `.tar.gz` unpacked into the work dir before the run (`DeliveryForm` `PACKAGE`).
    public var packagePath: String?
    /// Run the command in this image through the node's container runtime.
    public var docker: Docker?
    public var inputMappings: [InputMapping]
    public var outputMappings: [OutputMapping]
    public var outputMappingConfigs: [OutputMappingConfig]
    public var redirectInfo: RedirectInfo?
    public var authentications: [Authentication]

    public init(
        packagePath: String? = nil, docker: Docker? = nil, inputMappings: [InputMapping] = [],
        outputMappings: [OutputMapping] = [], outputMappingConfigs: [OutputMappingConfig] = [],
        redirectInfo: RedirectInfo? = nil, authentications: [Authentication] = []
    ) {
        self.packagePath = packagePath
        self.docker = docker
        self.inputMappings = inputMappings
        self.outputMappings = outputMappings
        self.outputMappingConfigs = outputMappingConfigs
        self.redirectInfo = redirectInfo
        self.authentications = authentications
    }

    /// The storage parts of a task, or nil when it uses none of them.
    public init?(task: TaskSpec) {
        let application = task.application
        self.init(
            packagePath: application?.deliveryForm == "PACKAGE" ? application?.packagePath : nil,
            docker: application?.docker, inputMappings: task.inputMappings ?? [],
            outputMappings: task.outputMappings ?? [], outputMappingConfigs: task.outputMappingConfigs ?? [],
            redirectInfo: task.redirectInfo, authentications: task.authentications ?? [])
        if self == InstanceIO() { return nil }
    }
}

/// An executor's word on an instance's attempt: in ``InstanceReports/accepted``, it took the attempt and waits for
/// ``InstanceCleared`` before the attempt takes a slot (the attempt is `STARTING` on the node); in
/// ``InstanceReports/started``, the command of a cleared attempt started (`RUNNING`). A lone `instance.started`
/// (nodes before claims) is a start that waits for its clearance.
public struct InstanceStarted: MessageContract, Hashable {
    public static let type = "instance.started"
    public var jobID: JobID
    public var taskName: String
    public var instanceIndex: Int
    public var attempt: Int
    public var nodeID: NodeID
    public var startedAt: Date

    public init(jobID: JobID, taskName: String, instanceIndex: Int, attempt: Int, nodeID: NodeID, startedAt: Date) {
        self.jobID = jobID
        self.taskName = taskName
        self.instanceIndex = instanceIndex
        self.attempt = attempt
        self.nodeID = nodeID
        self.startedAt = startedAt
    }
}

/// An instance's attempt ended: its exit code, or why it could not run.
public struct InstanceFinished: MessageContract, Hashable {
    public static let type = "instance.finished"
    public var jobID: JobID
    public var taskName: String
    public var instanceIndex: Int
    public var attempt: Int
    public var nodeID: NodeID
    /// The program's exit status; 128+N when killed by signal N; nil when it could not start.
    public var exitCode: Int?
    /// Why it failed, in words, when it did not exit 0.
    public var reason: String?
    public var finishedAt: Date
    /// The last bytes (at most 2048) of the attempt's stdout and stderr, for `DescribeTaskLogs`.
    public var stdoutTail: [UInt8]?
    public var stderrTail: [UInt8]?
    /// True when the node stopped the attempt because the node itself stopped (scale-down, shutdown): the attempt
    /// runs again elsewhere and does not count against `MaxRetryCount`.
    public var interrupted: Bool?

    public init(
        jobID: JobID, taskName: String, instanceIndex: Int, attempt: Int, nodeID: NodeID, exitCode: Int?,
        reason: String?, finishedAt: Date, stdoutTail: [UInt8]? = nil, stderrTail: [UInt8]? = nil,
        interrupted: Bool? = nil
    ) {
        self.interrupted = interrupted
        self.stdoutTail = stdoutTail
        self.stderrTail = stderrTail
        self.jobID = jobID
        self.taskName = taskName
        self.instanceIndex = instanceIndex
        self.attempt = attempt
        self.nodeID = nodeID
        self.exitCode = exitCode
        self.reason = reason
        self.finishedAt = finishedAt
    }

    public var succeeded: Bool { exitCode == 0 }
}

/// The claims, starts and ends a node reports in one message: those that came while its previous report was on the
/// way to the broker. The scheduler handles the claims first, then the starts, then the ends (an attempt's start and
/// end can come in one message; its claim never comes with them, since it starts only once the claim is cleared).
public struct InstanceReports: MessageContract, Hashable {
    public static let type = "instance.reports"
    /// Attempts the node took and that wait for the scheduler's clearance (absent from nodes before claims, whose
    /// ``started`` wait for it instead).
    public var accepted: [InstanceStarted]?
    public var started: [InstanceStarted]
    public var finished: [InstanceFinished]
    /// The node that reports, the environment it serves, and its ``NodeKey/proof(node:)``: the scheduler takes
    /// only reports about this node from a node that proves its environment.
    public var nodeID: NodeID?
    public var envID: EnvID?
    public var proof: String?

    public init(
        accepted: [InstanceStarted]? = nil, started: [InstanceStarted] = [], finished: [InstanceFinished] = [],
        nodeID: NodeID? = nil, envID: EnvID? = nil, proof: String? = nil
    ) {
        self.accepted = accepted
        self.started = started
        self.finished = finished
        self.nodeID = nodeID
        self.envID = envID
        self.proof = proof
    }
}

/// A compute environment was created; the provisioner makes its work queue and nodes.
public struct ComputeEnvCreated: MessageContract, Hashable {
    public static let type = "env.created"
    public var envID: EnvID

    public init(envID: EnvID) { self.envID = envID }
}

/// A node is alive, with how many of its slots are free.
public struct NodeHeartbeat: MessageContract, Hashable {
    public static let type = "node.heartbeat"
    public var nodeID: NodeID
    public var envID: EnvID
    public var slots: Int
    public var freeSlots: Int
    public var host: String
    public var pid: Int32
    public var at: Date
    /// The machine's own id (`ComputeNodeInstanceId`): what `AttachInstances` names.
    public var instanceID: String?
    /// True for an executor started outside the provisioner (by hand, by `docker compose --scale`): it joined the
    /// environment on its own and is shown as `USER_ATTACHED`.
    public var attached: Bool?
    /// The node's ``NodeKey/proof(node:)`` for `envID`: a beat without a valid one is ignored.
    public var proof: String?

    public init(
        nodeID: NodeID, envID: EnvID, slots: Int, freeSlots: Int, host: String, pid: Int32, at: Date,
        instanceID: String? = nil, attached: Bool? = nil, proof: String? = nil
    ) {
        self.instanceID = instanceID
        self.attached = attached
        self.proof = proof
        self.nodeID = nodeID
        self.envID = envID
        self.slots = slots
        self.freeSlots = freeSlots
        self.host = host
        self.pid = pid
        self.at = at
    }
}

/// A mark the provisioner puts in its own queue. Once it has taken the mark, it has recorded every heartbeat the
/// broker confirmed before `at`; nodes are silent only up to there. A provisioner that is behind or stopped leaves
/// heartbeats queued, and must not make their nodes look silent (the scheduler would run their instances again
/// while they run).
public struct HeartbeatMark: MessageContract, Hashable {
    public static let type = "node.heartbeat-mark"
    public var at: Date

    public init(at: Date) { self.at = at }
}

/// A node stopped on purpose (shutdown), after finishing or handing back its work.
public struct NodeStopped: MessageContract, Hashable {
    public static let type = "node.stopped"
    public var nodeID: NodeID
    public var envID: EnvID
    public var at: Date
    /// The node's ``NodeKey/proof(node:)`` for `envID`: without a valid one, the node is not removed.
    public var proof: String?

    public init(nodeID: NodeID, envID: EnvID, at: Date, proof: String? = nil) {
        self.nodeID = nodeID
        self.envID = envID
        self.at = at
        self.proof = proof
    }
}

/// A node's row was removed (it stopped, ended, or went silent): published in the transaction that removes it, so
/// that the scheduler hears it after everything the node reported, and runs again only what the node never finished.
public struct NodeGone: MessageContract, Hashable {
    public static let type = "node.gone"
    public var nodeID: NodeID
    public var envID: EnvID
    public var cause: String

    public init(nodeID: NodeID, envID: EnvID, cause: String) {
        self.nodeID = nodeID
        self.envID = envID
        self.cause = cause
    }
}

/// A user asked to terminate a job (`TerminateJob`).
public struct JobTerminationRequested: MessageContract, Hashable {
    public static let type = "job.termination-requested"
    public var jobID: JobID
    public var reason: String

    public init(jobID: JobID, reason: String) {
        self.jobID = jobID
        self.reason = reason
    }
}

/// A user asked to terminate one instance (`TerminateTaskInstance`).
public struct InstanceTerminationRequested: MessageContract, Hashable {
    public static let type = "instance.termination-requested"
    public var jobID: JobID
    public var taskName: String
    public var instanceIndex: Int

    public init(jobID: JobID, taskName: String, instanceIndex: Int) {
        self.jobID = jobID
        self.taskName = taskName
        self.instanceIndex = instanceIndex
    }
}

/// A user asked to run a failed job's failed instances again (`RetryJobs`).
public struct JobRetryRequested: MessageContract, Hashable {
    public static let type = "job.retry-requested"
    public var jobID: JobID

    public init(jobID: JobID) { self.jobID = jobID }
}

/// An environment's desired node count or name changed (`ModifyComputeEnv`).
public struct ComputeEnvModified: MessageContract, Hashable {
    public static let type = "env.modified"
    public var envID: EnvID

    public init(envID: EnvID) { self.envID = envID }
}

/// A user asked to delete an environment (`DeleteComputeEnv`): its nodes go, then the environment.
public struct ComputeEnvDeletionRequested: MessageContract, Hashable {
    public static let type = "env.deletion-requested"
    public var envID: EnvID

    public init(envID: EnvID) { self.envID = envID }
}

/// A user asked to terminate nodes (`TerminateComputeNode(s)`, `DetachInstances`).
public struct NodeTerminationRequested: MessageContract, Hashable {
    public static let type = "node.termination-requested"
    public var envID: EnvID
    public var nodeIDs: [NodeID]
    /// True when the nodes should finish their running instances first (`DetachInstances`); otherwise they hand
    /// them back at once (`TerminateComputeNode`).
    public var drain: Bool?

    public init(envID: EnvID, nodeIDs: [NodeID], drain: Bool? = nil) {
        self.envID = envID
        self.nodeIDs = nodeIDs
        self.drain = drain
    }
}

/// Tells a node (on its own queue) to stop: draining (no new work, running instances finish) or at once (running
/// instances are handed back). For nodes no driver of ours runs: attached ones.
public struct NodeStop: MessageContract, Hashable {
    public static let type = "node.stop"
    public var nodeID: NodeID
    public var drain: Bool
    public var reason: String

    public init(nodeID: NodeID, drain: Bool, reason: String) {
        self.nodeID = nodeID
        self.drain = drain
        self.reason = reason
    }
}

/// Stop one attempt of an instance on the node that runs it (termination). Sent to the node's own queue.
public struct InstanceKill: MessageContract, Hashable {
    public static let type = "instance.kill"
    public var jobID: JobID
    public var taskName: String
    public var instanceIndex: Int
    public var attempt: Int
    public var reason: String

    public init(jobID: JobID, taskName: String, instanceIndex: Int, attempt: Int, reason: String) {
        self.jobID = jobID
        self.taskName = taskName
        self.instanceIndex = instanceIndex
        self.attempt = attempt
        self.reason = reason
    }
}

/// The scheduler recorded this node's starts of these attempts as the attempts' runs: the node may run their
/// commands (the second phase of a start). A node whose start was not recorded gets ``InstanceKill`` instead, so a
/// run message delivered twice (to two nodes) never runs twice. Sent to the node's own queue, one message for the
/// node's starts of one scheduler batch; a node that waits resends its start every few seconds, so a lost clearance
/// costs a delay, never the instance.
public struct InstanceCleared: MessageContract, Hashable {
    public static let type = "instance.cleared"
    public var attempts: [Attempt]

    /// One attempt of one instance.
    public struct Attempt: Codable, Sendable, Hashable {
        public var jobID: JobID
        public var taskName: String
        public var instanceIndex: Int
        public var attempt: Int

        public init(jobID: JobID, taskName: String, instanceIndex: Int, attempt: Int) {
            self.jobID = jobID
            self.taskName = taskName
            self.instanceIndex = instanceIndex
            self.attempt = attempt
        }
    }

    public init(attempts: [Attempt]) { self.attempts = attempts }
}

/// Asks the node that ran an attempt for a piece of its stdout or stderr (it may still be running). Sent to the
/// node's queue; the answer (``LogChunk``) goes to `batch.commands` with the routing key `replyTo`.
public struct LogRequest: MessageContract, Hashable {
    public static let type = "instance.log-request"
    public var requestID: String
    public var replyTo: String
    public var jobID: JobID
    public var taskName: String
    public var instanceIndex: Int
    public var attempt: Int
    /// `stdout` or `stderr`.
    public var stream: String
    /// Where to start; negative counts from the end (`-2048`: the last 2 KiB).
    public var offset: Int
    public var limit: Int

    public init(
        requestID: String, replyTo: String, jobID: JobID, taskName: String, instanceIndex: Int, attempt: Int,
        stream: String, offset: Int, limit: Int
    ) {
        self.requestID = requestID
        self.replyTo = replyTo
        self.jobID = jobID
        self.taskName = taskName
        self.instanceIndex = instanceIndex
        self.attempt = attempt
        self.stream = stream
        self.offset = offset
        self.limit = limit
    }
}

/// A node's answer to a ``LogRequest``.
public struct LogChunk: MessageContract, Hashable {
    public static let type = "instance.log-chunk"
    public var requestID: String
    /// False when the node has no such attempt (its files are gone).
    public var found: Bool
    public var data: [UInt8]
    /// Where `data` starts in the file, and the file's size when read.
    public var offset: Int
    public var size: Int
    /// True while the attempt runs: more may come.
    public var running: Bool

    public init(requestID: String, found: Bool, data: [UInt8], offset: Int, size: Int, running: Bool) {
        self.requestID = requestID
        self.found = found
        self.data = data
        self.offset = offset
        self.size = size
        self.running = running
    }
}

/// Jobs, tasks or instances changed state: the notification users subscribe to, in Tencent Cloud Batch's message
/// format (`{"Events": [{"EventName": "JOB_SUCCEED", …, "Batch": {…}}]}`), published on `batch.events` with the routing
/// key ``Topology/notificationRoutingKey(event:job:)`` and, when the job's `Notifications` select the event, also with
/// ``Topology/topicRoutingKey(topic:)``. One message holds events of one name and one job that happened one after
/// another (``grouped(_:mostPerMessage:)``): a task's instances that end together are one message, not one each.
public struct BatchNotification: Codable, Sendable, Hashable {
    public struct Event: Codable, Sendable, Hashable {
        public var eventVersion = "1.0"
        public var eventTime: Date
        public var region: String
        public var eventName: String
        public var eventVars: [EventVar]
        public var batch: Subject

        /// `event` happened to `job` (and its task, and the task's instance) at `time`.
        public init(
            _ event: EventName, at time: Date, region: String = "local", vars: [EventVar] = [], job: JobID,
            jobName: String?, task: String? = nil, instance: Int? = nil, state: ExecutionState, reason: String? = nil
        ) {
            eventTime = time
            self.region = region
            eventName = event.rawValue
            eventVars = vars
            batch = Subject(
                jobId: job.rawValue, jobName: jobName, taskName: task, taskInstanceIndex: instance,
                state: state.rawValue, stateReason: reason)
        }
    }

    /// What changed.
    public struct Subject: Codable, Sendable, Hashable {
        public var jobId: String
        public var jobName: String?
        public var taskName: String?
        public var taskInstanceIndex: Int?
        public var state: String
        public var stateReason: String?
    }

    public var events: [Event]

    public init(events: [Event]) { self.events = events }

    /// The notifications of `events`, in their order: a run of events of one name and one job goes in one message,
    /// `mostPerMessage` at the most, so that each message has one routing key and a subscriber that reads the
    /// messages in turn reads the events in the order they happened.
    public static func grouped(_ events: [Event], mostPerMessage: Int) -> [BatchNotification] {
        var notifications: [BatchNotification] = []
        for event in events {
            if let last = notifications.last?.events.last, last.eventName == event.eventName,
                last.batch.jobId == event.batch.jobId,
                notifications[notifications.count - 1].events.count < mostPerMessage
            {
                notifications[notifications.count - 1].events.append(event)
            } else {
                notifications.append(BatchNotification(events: [event]))
            }
        }
        return notifications
    }
}
