/// A `Filters` entry of a Describe action: a name and the values any of which matches.
public struct Filter: Codable, Sendable, Hashable {
    public var name: String
    public var values: [String]

    public init(name: String, values: [String]) {
        self.name = name
        self.values = values
    }
}

/// The filters of one Describe action, checked against the names it supports.
///
/// Each filter matches when any of its values does; all filters must match. `tag:<key>` matches a tag with that
/// key and one of the values.
public struct FilterSet: Sendable, Hashable {
    public private(set) var values: [String: [String]] = [:]
    public private(set) var tagValues: [String: [String]] = [:]

    /// Parses `filters`, refusing names outside `supported` (and `tag:<key>` unless `tags`) with
    /// `InvalidParameterValue.InvalidFilter` naming the filter.
    public init(_ filters: [Filter]?, supported: Set<String>, tags: Bool = false, field: String = "Filters") throws {
        for (index, filter) in (filters ?? []).enumerated() {
            guard filter.values.count <= 10, filter.values.allSatisfy({ $0.count <= 256 }) else {
                throw APIError(.invalidFilter, "\(field)[\(index)].Values: at most 10 values of 256 characters")
            }
            if tags, filter.name.hasPrefix("tag:"), filter.name.count > 4 {
                tagValues[String(filter.name.dropFirst(4)), default: []] += filter.values
            } else if supported.contains(filter.name) {
                values[filter.name, default: []] += filter.values
            } else {
                let names = supported.sorted().joined(separator: ", ") + (tags ? ", tag:<key>" : "")
                throw APIError(
                    .invalidFilter, "\(field)[\(index)].Name: \(filter.name.prefix(40)) is not one of \(names)")
            }
        }
    }

    public subscript(_ name: String) -> [String]? { values[name] }
}

/// Paging of a Describe action: `Offset` from 0, `Limit` from 1 to `maximum`, `defaultLimit` when absent.
public struct Paging: Sendable, Hashable {
    public var offset: Int
    public var limit: Int

    public init(offset: Int?, limit: Int?, defaultLimit: Int, maximum: Int) throws {
        self.offset = offset ?? 0
        self.limit = limit ?? defaultLimit
        guard self.offset >= 0 else { throw APIError(.negative, "Offset: must not be negative") }
        guard (1...maximum).contains(self.limit) else {
            throw APIError(.invalidParameterValue, "Limit: must be 1 to \(maximum)")
        }
    }
}
