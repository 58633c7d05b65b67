import BatchCore
import Foundation
import TestSupport
import Testing

@testable import Storage

/// Transfers against the real S3-compatible store `scripts/servers start` runs (moto, which checks signatures) and
/// the local file system.
@Suite struct StorageTests {
    let endpoint: URL
    let credentials: AWSSignatureV4.Credentials
    let bucket = "batch-test-\(UUID().uuidString.prefix(8).lowercased())"
    let scratch: URL

    init() async throws {
        let store = try TestServers.objectStore()
        endpoint = store.endpoint
        credentials = .init(accessKeyID: store.accessKeyID, secretAccessKey: store.secretAccessKey)
        scratch = FileManager.default.temporaryDirectory.appendingPathComponent("storage-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: scratch, withIntermediateDirectories: true)
        try await S3Client(endpoint: endpoint, credentials: credentials).createBucket(bucket)
    }

    var storage: Storage { Storage(endpoint: endpoint, credentials: credentials) }

    func write(_ text: String, to relative: String) throws -> URL {
        let url = scratch.appendingPathComponent(relative)
        try FileManager.default.createDirectory(
            at: url.deletingLastPathComponent(), withIntermediateDirectories: true)
        try Data(text.utf8).write(to: url)
        return url
    }

    @Test func aFileGoesUpAndComesBackTheSame() async throws {
        let file = try write("hello, object store\n", to: "up/greeting.txt")
        try await storage.store(file, to: .s3(bucket: bucket, key: "in/greeting.txt"))
        let back = scratch.appendingPathComponent("down/copy.txt")
        let size = try await storage.fetch(.s3(bucket: bucket, key: "in/greeting.txt"), to: back)
        #expect(size == 20)
        #expect(try String(contentsOf: back, encoding: .utf8) == "hello, object store\n")
    }

    @Test func aDirectoryGoesUpWithItsLayoutAndComesBackWhole() async throws {
        _ = try write("a", to: "tree/a.txt")
        _ = try write("b", to: "tree/sub/b.txt")
        _ = try write("c", to: "tree/sub/deeper/c.txt")
        try await storage.store(scratch.appendingPathComponent("tree"), to: .s3(bucket: bucket, key: "results"))
        let keys = try await S3Client(endpoint: endpoint, credentials: credentials)
            .list(bucket: bucket, prefix: "results/").map(\.key)
        #expect(keys == ["results/a.txt", "results/sub/b.txt", "results/sub/deeper/c.txt"])

        let back = scratch.appendingPathComponent("fetched")
        try await storage.fetch(.s3(bucket: bucket, key: "results"), to: back)
        #expect(try String(contentsOf: back.appendingPathComponent("sub/deeper/c.txt"), encoding: .utf8) == "c")
        #expect(try String(contentsOf: back.appendingPathComponent("a.txt"), encoding: .utf8) == "a")
    }

    @Test func aFileOverThePartSizeGoesAsAMultipartUpload() async throws {
        // 12 MiB and a bit, in 5 MiB parts: three parts, two at a time.
        var bytes = [UInt8](repeating: 0, count: 12 << 20 + 12_345)
        var generator = SystemRandomNumberGenerator()
        for index in stride(from: 0, to: bytes.count, by: 4096) { bytes[index] = generator.next() }
        let file = scratch.appendingPathComponent("big.bin")
        try Data(bytes).write(to: file)
        let multipart = Storage(
            endpoint: endpoint, credentials: credentials, partSize: Storage.minimumPartSize, workers: 2)
        try await multipart.store(file, to: .s3(bucket: bucket, key: "big/"))

        let client = S3Client(endpoint: endpoint, credentials: credentials)
        // A multipart object's ETag is `"<md5 of the part md5s>-<part count>"`.
        let head = try await client.send("HEAD", bucket: bucket, key: "big/big.bin", operation: "HeadObject")
        #expect(head.headers.first(name: "etag")?.hasSuffix("-3\"") == true)
        let back = scratch.appendingPathComponent("big-back.bin")
        try await storage.fetch(.s3(bucket: bucket, key: "big/big.bin"), to: back)
        #expect(try Data(contentsOf: back) == Data(bytes))
    }

    @Test func wrongCredentialsFailWithTheStoresReasonAndNoSecret() async throws {
        let file = try write("x", to: "x.txt")
        let wrong = Storage(
            endpoint: endpoint,
            credentials: .init(accessKeyID: credentials.accessKeyID, secretAccessKey: "not-the-secret-key"))
        let error = await #expect(throws: StorageError.self) {
            try await wrong.store(file, to: .s3(bucket: bucket, key: "x.txt"))
        }
        let text = "\(error.map { $0 as any Error } ?? CancellationError())"
        #expect(text.contains("SignatureDoesNotMatch"))
        #expect(text.contains("s3://\(bucket)/x.txt"))
        #expect(!text.contains("not-the-secret-key"))
    }

    @Test func aMissingInputNamesItsPath() async throws {
        let error = await #expect(throws: StorageError.self) {
            try await storage.fetch(
                .s3(bucket: bucket, key: "no/such/input.csv"), to: scratch.appendingPathComponent("in"))
        }
        #expect("\(error.map { $0 as any Error } ?? CancellationError())".contains("s3://\(bucket)/no/such/input.csv"))
        await #expect(throws: StorageError.self) {
            try await storage.fetch(.file(path: scratch.path + "/absent"), to: scratch.appendingPathComponent("in"))
        }
    }

    @Test func sharedFileSystemPathsCopyFilesAndDirectories() async throws {
        _ = try write("one", to: "shared/data/1.txt")
        _ = try write("two", to: "shared/data/nested/2.txt")
        let local = scratch.appendingPathComponent("instance/inputs")
        try await storage.fetch(.file(path: scratch.path + "/shared/data"), to: local)
        #expect(try String(contentsOf: local.appendingPathComponent("nested/2.txt"), encoding: .utf8) == "two")

        try await storage.store(local, to: .file(path: scratch.path + "/shared/out"))
        #expect(try String(contentsOf: scratch.appendingPathComponent("shared/out/1.txt"), encoding: .utf8) == "one")
        try await storage.store(
            local.appendingPathComponent("1.txt"), to: .file(path: scratch.path + "/shared/single/"))
        #expect(FileManager.default.fileExists(atPath: scratch.path + "/shared/single/1.txt"))
    }
}
