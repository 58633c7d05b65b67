import BatchCore
import Persistence

extension BatchAPI {
    /// The one place a store's refusal becomes the API's error: Tencent Cloud Batch's code and a message naming the
    /// field.
    static func apiError(_ refusal: StoreRefusal) -> APIError {
        switch refusal {
        case .computeEnvNotFound(let env, let field):
            APIError(.computeEnvNotFound, "\(field): no compute environment \(env)")
        case .computeEnvDeleting:
            APIError("UnsupportedOperation.ComputeEnvAcceptOtherRequest", "EnvId: the environment is being deleted")
        case .computeEnvInUse(_, let tasks):
            APIError(
                "UnsupportedOperation.ComputeEnvOperation",
                "EnvId: \(tasks) task\(tasks == 1 ? "" : "s") of unfinished jobs use this environment")
        case .computeNodeNotFound(let node, let env):
            APIError(.computeNodeNotFound, "ComputeNodeIds: environment \(env) has no node \(node)")
        case .computeNodeDeleting(let node):
            APIError("UnsupportedOperation.ComputeNodeIsTerminating", "ComputeNodeIds: \(node) is being deleted")
        case .computeNodeNotTerminable(let node, let state):
            APIError("UnsupportedOperation.ComputeNodeForbidTerminate", "ComputeNodeIds: \(node) is \(state)")
        case .instanceAttached(let instance):
            APIError("UnsupportedOperation.InstancesNotAllowToAttach", "Instances: \(instance) is attached already")
        case .instanceNotInEnv(let instance, let env):
            APIError(.computeNodeNotFound, "InstanceIds: \(instance.prefix(64)) is not in environment \(env)")
        case .instanceNotAttached(let instance):
            APIError(.unsupportedOperation, "InstanceIds: \(instance.prefix(64)) was created by Batch")
        case .jobNotFound(let job):
            APIError(.jobNotFound, "JobId: no job \(job)")
        case .jobNotScheduled:
            APIError(.unsupportedOperation, "JobId: the job is still SUBMITTED; terminate it once it is scheduled")
        case .taskInstanceNotFound(let task, let index):
            APIError(.taskInstanceNotFound, "TaskInstanceIndex: task \(task.prefix(60)) has no instance \(index)")
        case .jobNotRetryable(let job, let state):
            APIError(.unsupportedOperation, "JobIds: job \(job) is \(state.rawValue); only FAILED jobs are retried")
        case .jobInUse(let job, let state, let unfinished):
            APIError(.jobInUse, "JobId: job \(job) is \(state.rawValue) with \(unfinished) unfinished instances")
        case .taskTemplateNotFound(let template, let field):
            APIError(.taskTemplateNotFound, "\(field): no task template \(template)")
        case .invalid(let problems):
            APIError(problems: problems)
        case .quota(let violation):
            violation.apiError
        case .userNameInvalid:
            APIError(.invalidParameterValue, "UserName: a user name is 1 to 64 letters, digits, -, _, . or @")
        case .userNameTaken(let name):
            APIError(.userInUse, "UserName: a user named \(name) exists already")
        }
    }
}
