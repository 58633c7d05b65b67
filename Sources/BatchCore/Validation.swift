/// Collects the problems of a spec, each with its field path, so that all of them are reported at once.
struct ProblemList {
    private(set) var problems: [ValidationProblem] = []

    mutating func add(_ code: APIError.Code, _ field: String, _ message: String) {
        problems.append(ValidationProblem(code, field, message))
    }

    mutating func append(_ other: [ValidationProblem]) { problems += other }

    mutating func check(
        _ condition: Bool, _ code: APIError.Code, _ field: String, _ message: @autoclosure () -> String
    ) {
        if !condition { add(code, field, message()) }
    }

    /// A string of at most `max` characters; `tooLong` is the code for a longer one.
    mutating func length(_ value: String?, max: Int, _ field: String, tooLong: APIError.Code = .invalidParameterValue) {
        guard let value else { return }
        check(value.count <= max, tooLong, field, "longer than \(max) characters")
    }

    /// An integer in `range`; a negative one gets `InvalidParameterValue.Negative`.
    mutating func range(
        _ value: Int?, _ range: ClosedRange<Int>, _ field: String, code: APIError.Code = .invalidParameterValue
    ) {
        guard let value else { return }
        if value < 0, range.lowerBound >= 0 {
            add(code == .invalidParameterValue ? .negative : code, field, "must not be negative")
        } else if !range.contains(value) {
            add(code, field, "must be \(range.lowerBound) to \(range.upperBound)")
        }
    }

    /// A value from a fixed list.
    mutating func oneOf(_ value: String?, _ allowed: [String], _ field: String) {
        guard let value else { return }
        check(
            allowed.contains(value), .invalidParameterValue, field,
            "must be one of \(allowed.joined(separator: ", ")), not \"\(value.prefix(40))\"")
    }

    mutating func remote(_ path: String?, _ field: String) {
        guard let path else { return }
        switch StorageLocation.parse(path) {
        case .success: break
        case .failure(.unsupportedScheme(let scheme)):
            add(
                .remoteStorageSchemeType, field,
                scheme.isEmpty
                    ? "needs a scheme: file://, s3:// or cos://"
                    : "scheme \(scheme.prefix(20)):// is not supported; use file://, s3:// or cos://")
        case .failure(.malformed(let reason)):
            add(.remoteStoragePath, field, reason)
        }
    }

    mutating func local(_ path: String?, _ field: String) {
        guard let path else { return }
        switch LocalPath.check(path) {
        case .valid: break
        case .relative: add(.localPath, field, "must be an absolute path")
        case .traversal: add(.localPath, field, "must not contain `.` or `..`")
        case .systemDirectory(let directory): add(.localPath, field, "must not be the system directory \(directory)")
        }
    }

    mutating func tags(_ tags: [Tag]?, _ field: String) {
        guard let tags else { return }
        check(tags.count <= Limits.tags, .limitExceededValue, field, "at most \(Limits.tags) tags")
        for (index, tag) in tags.enumerated() {
            check(!tag.key.isEmpty, .invalidParameterValue, "\(field)[\(index)].Key", "must not be empty")
            length(tag.key, max: 127, "\(field)[\(index)].Key")
            length(tag.value, max: 255, "\(field)[\(index)].Value")
        }
    }

    mutating func authentications(_ authentications: [Authentication]?, _ field: String) {
        for (index, authentication) in (authentications ?? []).enumerated() {
            let path = "\(field)[\(index)]"
            oneOf(authentication.scene, ["COS", "S3"], "\(path).Scene")
            check(!authentication.secretId.isEmpty, .missingParameter, "\(path).SecretId", "required")
            check(!authentication.secretKey.isEmpty, .missingParameter, "\(path).SecretKey", "required")
        }
    }

    mutating func inputMappings(_ mappings: [InputMapping]?, _ field: String) {
        for (index, mapping) in (mappings ?? []).enumerated() {
            remote(mapping.sourcePath, "\(field)[\(index)].SourcePath")
            local(mapping.destinationPath, "\(field)[\(index)].DestinationPath")
        }
    }

    mutating func notifications(_ notifications: [JobNotification]?, _ field: String, allowed: [EventName]) {
        for (index, notification) in (notifications ?? []).enumerated() {
            let path = "\(field)[\(index)]"
            check(!notification.topicName.isEmpty, .notificationTopicName, "\(path).TopicName", "must not be empty")
            length(notification.topicName, max: 64, "\(path).TopicName", tooLong: .notificationTopicNameTooLong)
            check(
                notification.topicName.allSatisfy { $0.isASCII && ($0.isLetter || $0.isNumber || "-_.".contains($0)) },
                .notificationTopicName, "\(path).TopicName", "may hold only letters, digits, -, _ and .")
            var seen: Set<String> = []
            for (eventIndex, config) in notification.eventConfigs.enumerated() {
                let eventField = "\(path).EventConfigs[\(eventIndex)].EventName"
                oneOf(config.eventName, allowed.map(\.rawValue), eventField)
                check(
                    seen.insert(config.eventName).inserted, .notificationEventNameDuplicate, eventField,
                    "\(config.eventName.prefix(40)) appears twice")
            }
        }
    }

    mutating func envData(_ data: EnvData?, _ field: String) {
        guard let data else { return }
        let forms = [data.instanceType != nil, data.instanceTypes != nil, data.instanceTypeOptions != nil]
        check(
            forms.filter { $0 }.count <= 1, .invalidParameterCombination, field,
            "give at most one of InstanceType, InstanceTypes and InstanceTypeOptions")
        if let types = data.instanceTypes {
            check(!types.isEmpty, .instanceTypesEmpty, "\(field).InstanceTypes", "must not be empty")
            check(types.count <= 10, .limitExceededValue, "\(field).InstanceTypes", "at most 10 instance types")
            check(Set(types).count == types.count, .instanceTypeDuplicate, "\(field).InstanceTypes", "has duplicates")
        }
        if let options = data.instanceTypeOptions {
            range(options.cpu, 1...1024, "\(field).InstanceTypeOptions.CPU")
            range(options.memory, 1...(64 * 1024), "\(field).InstanceTypeOptions.Memory")
        }
        oneOf(data.instanceChargeType, ["POSTPAID_BY_HOUR", "SPOTPAID"], "\(field).InstanceChargeType")
    }

    mutating func mountDataDisks(_ disks: [MountDataDisk]?, _ field: String) {
        for (index, disk) in (disks ?? []).enumerated() {
            local(disk.localPath, "\(field)[\(index)].LocalPath")
            oneOf(disk.fileSystemType, ["EXT3", "EXT4", "NTFS"], "\(field)[\(index)].FileSystemType")
        }
    }
}

/// Notification event names, as the API spells them.
public enum EventName: String, Sendable, CaseIterable {
    case jobRunning = "JOB_RUNNING"
    case jobSucceed = "JOB_SUCCEED"
    case jobFailed = "JOB_FAILED"
    case jobFailedInterrupted = "JOB_FAILED_INTERRUPTED"
    case taskRunning = "TASK_RUNNING"
    case taskSucceed = "TASK_SUCCEED"
    case taskFailed = "TASK_FAILED"
    case taskFailedInterrupted = "TASK_FAILED_INTERRUPTED"
    case taskInstanceRunning = "TASK_INSTANCE_RUNNING"
    case taskInstanceSucceed = "TASK_INSTANCE_SUCCEED"
    case taskInstanceFailed = "TASK_INSTANCE_FAILED"
    case taskInstanceFailedInterrupted = "TASK_INSTANCE_FAILED_INTERRUPTED"
    case computeEnvCreated = "COMPUTE_ENV_CREATED"
    case computeEnvDeleted = "COMPUTE_ENV_DELETED"
    case computeNodeCreated = "COMPUTE_NODE_CREATED"
    case computeNodeCreationFailed = "COMPUTE_NODE_CREATION_FAILED"
    case computeNodeRunning = "COMPUTE_NODE_RUNNING"
    case computeNodeAbnormal = "COMPUTE_NODE_ABNORMAL"
    case computeNodeDeleting = "COMPUTE_NODE_DELETING"

    /// Events a job's notifications may select.
    public static let jobEvents = allCases.filter { !$0.rawValue.hasPrefix("COMPUTE_") }
    /// Events an environment's notifications may select.
    public static let environmentEvents = allCases.filter { $0.rawValue.hasPrefix("COMPUTE_") }
}
