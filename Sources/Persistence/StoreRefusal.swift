import BatchCore

/// Why a store refused a change: the domain's reasons, with the ids and fields involved. The gateway turns each into
/// the API's error code and message in one place (`BatchAPI.apiError(_:)`); the stores know nothing of the wire.
public enum StoreRefusal: Error, Sendable, Hashable {
    /// No such environment of this user; `field` names where the id came from (`EnvId`, `Job.Tasks[0].EnvId`).
    case computeEnvNotFound(EnvID, field: String)
    /// The environment is being deleted and takes no other change.
    case computeEnvDeleting(EnvID)
    /// Tasks of unfinished jobs still use the environment.
    case computeEnvInUse(EnvID, tasks: Int)
    case computeNodeNotFound(NodeID, env: EnvID)
    case computeNodeDeleting(NodeID)
    /// A node in a state it cannot be terminated from.
    case computeNodeNotTerminable(NodeID, state: String)
    /// An instance (a machine) attached to an environment already.
    case instanceAttached(String)
    case instanceNotInEnv(String, env: EnvID)
    /// A machine Batch made, not one the user attached.
    case instanceNotAttached(String)
    case jobNotFound(JobID)
    /// `TerminateJob` before the scheduler has taken the job.
    case jobNotScheduled(JobID)
    case taskInstanceNotFound(task: String, index: Int)
    /// `RetryJobs` of a job that has not failed.
    case jobNotRetryable(JobID, state: ExecutionState)
    /// `DeleteJob` of a job that has not ended, or whose instances have not.
    case jobInUse(JobID, state: ExecutionState, unfinished: Int)
    case taskTemplateNotFound(TaskTemplateID, field: String)
    /// A stored spec changed into one that is not valid.
    case invalid([ValidationProblem])
    case quota(Quotas.Violation)
    /// Not 1 to 64 letters, digits, `-`, `_`, `.` or `@`.
    case userNameInvalid
    case userNameTaken(String)
}
