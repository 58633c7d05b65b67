import BatchCore
import Foundation

/// The node types this installation offers. The `process` driver runs nodes on the gateway's own kind of machine,
/// so the types differ only in slots (instances at once): `PROCESS.S1`, `PROCESS.S2`, `PROCESS.S4`, `PROCESS.S8`.
struct NodeCatalog: Sendable {
    struct NodeType: Sendable {
        var name: String
        var slots: Int
        var memoryGiB: Int
    }

    let zone: String
    let types: [NodeType]

    init(zone: String) {
        self.zone = zone
        let memory = max(1, Int(ProcessInfo.processInfo.physicalMemory >> 30))
        self.types = [1, 2, 4, 8].map {
            NodeType(name: "PROCESS.S\($0)", slots: $0, memoryGiB: max(1, memory / 8 * $0 / 2))
        }
    }
}

extension BatchAPI {
    struct CatalogRequest: Decodable {
        var filters: [Filter]?
    }

    struct InstanceTypeConfig: Encodable, Sendable {
        var mem: Int
        var cpu: Int
        var instanceType: String
        var zone: String
        var instanceFamily: String
    }

    struct DescribeAvailableCvmInstanceTypesResponse: Encodable, Sendable {
        var instanceTypeConfigSet: [InstanceTypeConfig]
    }

    func describeAvailableCvmInstanceTypes(_ context: ActionContext) async throws
        -> DescribeAvailableCvmInstanceTypesResponse
    {
        let filters = try FilterSet(
            try context.decode(CatalogRequest.self).filters, supported: ["zone", "instance-family"])
        return DescribeAvailableCvmInstanceTypesResponse(
            instanceTypeConfigSet: matchingTypes(filters).map {
                InstanceTypeConfig(
                    mem: $0.memoryGiB, cpu: $0.slots, instanceType: $0.name, zone: catalog.zone,
                    instanceFamily: "PROCESS")
            })
    }

    struct InstanceTypeQuotaItem: Encodable, Sendable {
        var zone: String
        var instanceType: String
        var instanceChargeType = "POSTPAID_BY_HOUR"
        var cpu: Int
        var memory: Int
        var instanceFamily = "PROCESS"
        var typeName = "Process node"
        var status = "SELL"
    }

    struct DescribeCvmZoneInstanceConfigInfosResponse: Encodable, Sendable {
        var instanceTypeQuotaSet: [InstanceTypeQuotaItem]
    }

    func describeCvmZoneInstanceConfigInfos(_ context: ActionContext) async throws
        -> DescribeCvmZoneInstanceConfigInfosResponse
    {
        let filters = try FilterSet(
            try context.decode(CatalogRequest.self).filters,
            supported: ["zone", "instance-family", "instance-type", "instance-charge-type"])
        return DescribeCvmZoneInstanceConfigInfosResponse(
            instanceTypeQuotaSet: matchingTypes(filters).map {
                InstanceTypeQuotaItem(zone: catalog.zone, instanceType: $0.name, cpu: $0.slots, memory: $0.memoryGiB)
            })
    }

    struct DescribeInstanceCategoriesResponse: Encodable, Sendable {
        struct Item: Encodable, Sendable {
            var instanceCategory: String
            var instanceFamilySet: [String]
        }
        var instanceCategorySet: [Item]
    }

    func describeInstanceCategories(_ context: ActionContext) async throws -> DescribeInstanceCategoriesResponse {
        struct NoParameters: Decodable {}
        _ = try context.decode(NoParameters.self)  // no parameters, but the body must still be a JSON object
        return DescribeInstanceCategoriesResponse(
            instanceCategorySet: [.init(instanceCategory: "GENERAL", instanceFamilySet: ["PROCESS"])])
    }

    private func matchingTypes(_ filters: FilterSet) -> [NodeCatalog.NodeType] {
        catalog.types.filter { type in
            (filters["zone"].map { $0.contains(catalog.zone) } ?? true)
                && (filters["instance-family"].map { $0.contains("PROCESS") } ?? true)
                && (filters["instance-type"].map { $0.contains(type.name) } ?? true)
        }
    }
}
