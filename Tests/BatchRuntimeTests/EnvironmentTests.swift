import Foundation
import Testing

@testable import BatchRuntime

@Suite("Environment: settings from variables, or from the files NAME_FILE names")
struct EnvironmentTests {
    @Test("a variable wins over its file; the file's value loses its last line break; an empty value is unset")
    func fileFallback() throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent(UUID().uuidString)
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let secret = directory.appendingPathComponent("master-key")
        try "k1:c2VjcmV0\n".write(to: secret, atomically: true, encoding: .utf8)
        let empty = directory.appendingPathComponent("empty")
        try "".write(to: empty, atomically: true, encoding: .utf8)

        #expect(try Environment.value("BATCH_MASTER_KEY", in: ["BATCH_MASTER_KEY_FILE": secret.path]) == "k1:c2VjcmV0")
        #expect(
            try Environment.value(
                "BATCH_MASTER_KEY", in: ["BATCH_MASTER_KEY": "k2:given", "BATCH_MASTER_KEY_FILE": secret.path])
                == "k2:given")
        #expect(
            try Environment.value(
                "BATCH_MASTER_KEY", in: ["BATCH_MASTER_KEY": "", "BATCH_MASTER_KEY_FILE": secret.path])
                == "k1:c2VjcmV0")
        #expect(try Environment.value("BATCH_MASTER_KEY", in: ["BATCH_MASTER_KEY_FILE": empty.path]) == nil)
        #expect(try Environment.value("BATCH_MASTER_KEY", in: [:]) == nil)
    }

    @Test("a file that cannot be read is refused with its variable's name and path")
    func unreadableFile() throws {
        let path = "/nonexistent/\(UUID().uuidString)"
        let error = #expect(throws: StartupError.self) {
            try Environment.value("BATCH_DATABASE_URL", in: ["BATCH_DATABASE_URL_FILE": path])
        }
        #expect(error?.description == "BATCH_DATABASE_URL_FILE: cannot read \(path)")
    }
}
