// The compute-node spec types of the API (CVM settings and the like), with the SDK's exact field names.
// Batch accepts and stores them; the process and static node drivers use none of them.

/// `SystemDisk` (generated from the SDK's field list; every field optional).
public struct SystemDisk: Codable, Sendable, Hashable {
    public var diskType: String?
    public var diskId: String?
    public var diskSize: Int?
    public var cdcId: String?
    public var diskName: String?
    public var encrypt: Bool?
    public var kmsKeyId: String?

    public init() {}
}

/// `DataDisk` (generated from the SDK's field list; every field optional).
public struct DataDisk: Codable, Sendable, Hashable {
    public var diskSize: Int?
    public var diskType: String?
    public var diskId: String?
    public var deleteWithInstance: Bool?
    public var snapshotId: String?
    public var encrypt: Bool?
    public var kmsKeyId: String?
    public var throughputPerformance: Int?
    public var cdcId: String?
    public var burstPerformance: Bool?
    public var diskName: String?

    public init() {}
}

/// `VirtualPrivateCloud` (generated from the SDK's field list; every field optional).
public struct VirtualPrivateCloud: Codable, Sendable, Hashable {
    public var vpcId: String?
    public var subnetId: String?
    public var asVpcGateway: Bool?
    public var privateIpAddresses: [String]?
    public var ipv6AddressCount: Int?

    public init() {}
}

/// `InternetAccessible` (generated from the SDK's field list; every field optional).
public struct InternetAccessible: Codable, Sendable, Hashable {
    public var internetChargeType: String?
    public var internetMaxBandwidthOut: Int?
    public var publicIpAssigned: Bool?
    public var bandwidthPackageId: String?
    public var internetServiceProvider: String?
    public var iPv4AddressType: String?
    public var iPv6AddressType: String?
    public var antiDDoSPackageId: String?

    public init() {}
}

/// `LoginSettings` (generated from the SDK's field list; every field optional).
public struct LoginSettings: Codable, Sendable, Hashable {
    public var password: String?
    public var keyIds: [String]?
    public var keepImageLogin: String?

    public init() {}
}

/// `EnhancedService` (generated from the SDK's field list; every field optional).
public struct EnhancedService: Codable, Sendable, Hashable {
    public var securityService: RunSecurityServiceEnabled?
    public var monitorService: RunMonitorServiceEnabled?
    public var automationService: RunAutomationServiceEnabled?

    public init() {}
}

/// `RunSecurityServiceEnabled` (generated from the SDK's field list; every field optional).
public struct RunSecurityServiceEnabled: Codable, Sendable, Hashable {
    public var enabled: Bool?

    public init() {}
}

/// `RunMonitorServiceEnabled` (generated from the SDK's field list; every field optional).
public struct RunMonitorServiceEnabled: Codable, Sendable, Hashable {
    public var enabled: Bool?

    public init() {}
}

/// `RunAutomationServiceEnabled` (generated from the SDK's field list; every field optional).
public struct RunAutomationServiceEnabled: Codable, Sendable, Hashable {
    public var enabled: Bool?

    public init() {}
}

/// `InstanceMarketOptionsRequest` (generated from the SDK's field list; every field optional).
public struct InstanceMarketOptionsRequest: Codable, Sendable, Hashable {
    public var spotOptions: SpotMarketOptions?
    public var marketType: String?

    public init() {}
}

/// `SpotMarketOptions` (generated from the SDK's field list; every field optional).
public struct SpotMarketOptions: Codable, Sendable, Hashable {
    public var maxPrice: String?
    public var spotInstanceType: String?

    public init() {}
}

/// `InstanceTypeOptions` (generated from the SDK's field list; every field optional).
public struct InstanceTypeOptions: Codable, Sendable, Hashable {
    public var cpu: Int?
    public var memory: Int?
    public var instanceCategories: [String]?

    enum CodingKeys: String, CodingKey {
        case cpu = "cPU"
        case memory
        case instanceCategories
    }

    public init() {}
}

/// `MountDataDisk` (generated from the SDK's field list; every field optional).
public struct MountDataDisk: Codable, Sendable, Hashable {
    public var localPath: String?
    public var fileSystemType: String?

    public init() {}
}

/// `AgentRunningMode` (generated from the SDK's field list; every field optional).
public struct AgentRunningMode: Codable, Sendable, Hashable {
    public var scene: String?
    public var user: String?
    public var session: String?

    public init() {}
}

/// `Placement` (generated from the SDK's field list; every field optional).
public struct Placement: Codable, Sendable, Hashable {
    public var zone: String?
    public var projectId: Int?
    public var hostIds: [String]?
    public var hostId: String?
    public var dedicatedResourcePackTenancy: String?
    public var dedicatedResourcePackIds: [String]?
    public var rackId: String?

    public init() {}
}

/// `OutputMappingConfig` (generated from the SDK's field list; every field optional).
public struct OutputMappingConfig: Codable, Sendable, Hashable {
    public var scene: String?
    public var workerNum: Int?
    public var workerPartSize: Int?

    public init() {}
}

/// `ComputeEnvData` (generated from the SDK's field list; every field optional).
public struct ComputeEnvData: Codable, Sendable, Hashable {
    public var instanceTypes: [String]?

    public init() {}
}

/// `EnvData` (generated from the SDK's field list; every field optional).
public struct EnvData: Codable, Sendable, Hashable {
    public var instanceType: String?
    public var imageId: String?
    public var systemDisk: SystemDisk?
    public var dataDisks: [DataDisk]?
    public var virtualPrivateCloud: VirtualPrivateCloud?
    public var internetAccessible: InternetAccessible?
    public var instanceName: String?
    public var loginSettings: LoginSettings?
    public var securityGroupIds: [String]?
    public var enhancedService: EnhancedService?
    public var instanceChargeType: String?
    public var instanceMarketOptions: InstanceMarketOptionsRequest?
    public var instanceTypes: [String]?
    public var instanceTypeOptions: InstanceTypeOptions?
    public var zones: [String]?
    public var virtualPrivateClouds: [VirtualPrivateCloud]?

    public init() {}
}
