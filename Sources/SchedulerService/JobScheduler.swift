import BatchCore
import BatchRuntime
import Foundation
import Logging
import Messaging
import Persistence
import PostgresNIO

/// Carries out BatchCore's decisions for one event: locks the job, records the event, lets ``JobProgress`` decide
/// what follows, and writes the new states with the messages they cause, all in one transaction.
struct JobScheduler: Sendable {
    let database: Database
    let store: SchedulerStore
    let logger: Logger

    init(database: Database, logger: Logger) {
        self.database = database
        self.store = SchedulerStore(database: database)
        self.logger = logger
    }

    @Sendable func handle(_ delivery: Delivery) async throws {
        switch delivery.type {
        case JobSubmitted.type:
            let event = try delivery.decode(JobSubmitted.self).payload
            try await advance(event.jobID) { _, _ in }
        case InstanceStarted.type:
            let event = try delivery.decode(InstanceStarted.self).payload
            try await advance(event.jobID) { _, connection in
                if try await !store.instanceStarted(event, on: connection) {
                    logger.debug(
                        "stale instance.started ignored",
                        metadata: metadata(event.jobID, event.taskName, event.instanceIndex))
                }
            }
        case InstanceFinished.type:
            let event = try delivery.decode(InstanceFinished.self).payload
            try await advance(event.jobID) { _, connection in
                if try await !store.instanceFinished(event, on: connection) {
                    logger.debug(
                        "stale instance.finished ignored",
                        metadata: metadata(event.jobID, event.taskName, event.instanceIndex))
                }
            }
        case JobTerminationRequested.type:
            let event = try delivery.decode(JobTerminationRequested.self).payload
            try await advance(event.jobID, reason: event.reason) { job, connection in
                let kills = try await store.terminateInstances(of: job, reason: event.reason, on: connection)
                try await Outbox.enqueue(kills, on: connection, sealer: database.sealer, logger: logger)
                try await store.clearNextAction(job, on: connection)
            } decide: { progress in
                progress.terminate(reason: event.reason) + progress.advance()
            }
        case InstanceTerminationRequested.type:
            let event = try delivery.decode(InstanceTerminationRequested.self).payload
            try await advance(event.jobID) { job, connection in
                let kills = try await store.terminateInstances(
                    of: job, task: event.taskName, index: event.instanceIndex,
                    reason: "terminated by the user (TerminateTaskInstance)", on: connection)
                try await Outbox.enqueue(kills, on: connection, sealer: database.sealer, logger: logger)
            }
        case JobRetryRequested.type:
            let event = try delivery.decode(JobRetryRequested.self).payload
            try await advance(event.jobID) { _, _ in
            } decide: {
                $0.retry()
            }
        default:
            throw PoisonMessage("the scheduler does not handle messages of type \(delivery.type ?? "(none)")")
        }
    }

    /// Runs `record` and then `decide` on the job's progress, carrying out its actions, in one transaction holding
    /// the job's row lock. `reason` explains a job that ends `FAILED` (otherwise: the tasks that failed).
    func advance(
        _ jobID: JobID, reason: String? = nil,
        record: (SchedulerStore.LockedJob, PostgresConnection) async throws -> Void,
        decide: (inout JobProgress) -> [JobProgress.Action] = { $0.advance() }
    ) async throws {
        try await database.transaction { connection in
            guard let job = try await store.lockJob(jobID, on: connection) else {
                logger.warning("event for an unknown job ignored", metadata: ["job.id": "\(jobID)"])
                return
            }
            try await record(job, connection)
            var progress = try await store.progress(of: job, on: connection)
            var messages: [OutgoingMessage] = []
            for action in decide(&progress) {
                switch action {
                case .startTask(let name):
                    let runs = try await store.startTask(name, of: job, on: connection)
                    messages += runs
                    logger.info(
                        "task started",
                        metadata: ["job.id": "\(jobID)", "task.name": "\(name)", "instances": "\(runs.count)"])
                case .skipTask(let name, let why):
                    try await store.skipTask(name, of: job, reason: why, on: connection)
                    logger.info(
                        "task cannot run", metadata: ["job.id": "\(jobID)", "task.name": "\(name)", "reason": "\(why)"])
                case .setTaskState(let name, let state):
                    try await store.setTaskState(name, of: job, state, on: connection)
                case .setJobState(let state):
                    let failedTasks = progress.tasks.values.filter { $0.state == .failed }.map(\.name).sorted()
                    let why =
                        state == .failed || state == .failedInterrupted
                        ? reason ?? "task \(failedTasks.joined(separator: ", ")) failed" : nil
                    try await store.setJobState(job, state, reason: why, on: connection)
                    logger.info(
                        "job state changed", metadata: ["job.id": "\(jobID)", "job.state": "\(state.rawValue)"])
                }
            }
            try await Outbox.enqueue(messages, on: connection, sealer: database.sealer, logger: logger)
        }
    }

    func metadata(_ job: JobID, _ task: String, _ index: Int) -> Logger.Metadata {
        ["job.id": "\(job)", "task.name": "\(task)", "instance.index": "\(index)"]
    }
}
