import PostgresNIO

/// A query assembled from pieces (optional filters, paging) with every value bound as a parameter: SQL text never
/// holds a value the caller gave.
struct SQLBuilder {
    private(set) var sql: String
    private(set) var binds = PostgresBindings()

    init(_ sql: String) { self.sql = sql }

    /// Binds `value` and returns its placeholder (`$3`).
    mutating func bind<Value: PostgresDynamicTypeEncodable>(_ value: Value) -> String {
        binds.append(value)
        return "$\(binds.count)"
    }

    mutating func append(_ fragment: String) { sql += fragment }
    mutating func prepend(_ fragment: String) { sql = fragment + " " + sql }

    var query: PostgresQuery { PostgresQuery(unsafeSQL: sql, binds: binds) }

    /// `SELECT count(*)` over what is built so far (a `FROM … WHERE …` clause).
    var countQuery: PostgresQuery { PostgresQuery(unsafeSQL: "SELECT count(*) " + sql, binds: binds) }
}
