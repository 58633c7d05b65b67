import AsyncHTTPClient
import BatchCore
import Foundation
import NIOCore
import NIOFoundationCompat
import NIOHTTP1

/// A client of an S3-compatible object store (AWS S3, MinIO, Ceph, Tencent COS, moto): the calls an executor needs to
/// fetch inputs and packages and to upload outputs and logs, signed with AWS Signature V4. Path-style addressing
/// (`<endpoint>/<bucket>/<key>`), which every S3-compatible store accepts.
public struct S3Client: Sendable {
    public var endpoint: URL
    public var region: String
    /// Nil for anonymous requests (a public bucket).
    public var credentials: AWSSignatureV4.Credentials?
    let http: HTTPClient
    let timeout: TimeAmount

    public init(
        endpoint: URL, region: String = "us-east-1", credentials: AWSSignatureV4.Credentials?,
        http: HTTPClient = .shared, timeout: TimeAmount = .minutes(10)
    ) {
        self.endpoint = endpoint
        self.region = region
        self.credentials = credentials
        self.http = http
        self.timeout = timeout
    }

    public struct Object: Sendable, Hashable {
        public var key: String
        public var size: Int64
    }

    /// The size of an object, or nil when there is none at `key`.
    public func size(bucket: String, key: String) async throws -> Int64? {
        do {
            let response = try await send("HEAD", bucket: bucket, key: key, operation: "HeadObject", allowing: [404])
            guard response.status == .ok else { return nil }
            return response.headers.first(name: "content-length").flatMap { Int64($0) } ?? 0
        } catch StorageError.remote(_, "HeadObject", _, _, _) {
            // A HEAD reply has no body to say why; a GET of the object's first byte does (or gets it after all).
            let response = try await send(
                "GET", bucket: bucket, key: key, headers: [("Range", "bytes=0-0")], operation: "GetObject",
                allowing: [416])
            _ = try await response.body.collect(upTo: 1 << 20)
            switch response.status.code {
            case 416: return 0  // an empty object has no first byte
            case 206:
                return response.headers.first(name: "content-range")?.split(separator: "/").last.flatMap { Int64($0) }
            default: return response.headers.first(name: "content-length").flatMap { Int64($0) } ?? 0
            }
        }
    }

    /// Every object whose key starts with `prefix`, in key order.
    public func list(bucket: String, prefix: String) async throws -> [Object] {
        var objects: [Object] = []
        var token: String?
        repeat {
            var query = [("list-type", "2"), ("prefix", prefix)]
            if let token { query.append(("continuation-token", token)) }
            let response = try await send("GET", bucket: bucket, key: "", query: query, operation: "ListObjectsV2")
            let body = String(buffer: try await response.body.collect(upTo: 64 << 20))
            for contents in XMLText.elements("Contents", in: body) {
                guard let key = XMLText.value("Key", in: contents) else { continue }
                objects.append(Object(key: key, size: XMLText.value("Size", in: contents).flatMap { Int64($0) } ?? 0))
            }
            token =
                XMLText.value("IsTruncated", in: body) == "true"
                ? XMLText.value("NextContinuationToken", in: body) : nil
        } while token != nil
        return objects
    }

    /// Streams an object into `file` (replacing it), without holding it in memory.
    public func download(bucket: String, key: String, to file: URL) async throws {
        let response = try await send("GET", bucket: bucket, key: key, operation: "GetObject")
        try FileManager.default.createDirectory(
            at: file.deletingLastPathComponent(), withIntermediateDirectories: true)
        guard FileManager.default.createFile(atPath: file.path, contents: nil) else {
            throw StorageError.local(path: file.path, "cannot be created")
        }
        let handle = try FileHandle(forWritingTo: file)
        defer { try? handle.close() }
        for try await chunk in response.body {
            try handle.write(contentsOf: chunk.readableBytesView)
        }
    }

    /// The whole object, for small ones.
    public func get(bucket: String, key: String) async throws -> Data {
        let response = try await send("GET", bucket: bucket, key: key, operation: "GetObject")
        return Data(buffer: try await response.body.collect(upTo: 256 << 20))
    }

    public func put(bucket: String, key: String, data: Data) async throws {
        _ = try await send(
            "PUT", bucket: bucket, key: key, body: ByteBuffer(data: data), operation: "PutObject")
    }

    public func createBucket(_ bucket: String) async throws {
        _ = try await send("PUT", bucket: bucket, key: "", operation: "CreateBucket")
    }

    /// Uploads a file: in one request when it fits in one part, otherwise as a multipart upload of `partSize`
    /// parts with `workers` parts in flight at once (aborted when a part fails, so no half object is left).
    public func upload(file: URL, bucket: String, key: String, partSize: Int, workers: Int) async throws {
        let size = try FileManager.default.attributesOfItem(atPath: file.path)[.size] as? Int ?? 0
        guard size > partSize else {
            let data = try Data(contentsOf: file)
            _ = try await send(
                "PUT", bucket: bucket, key: key, body: ByteBuffer(data: data), operation: "PutObject")
            return
        }
        let created = try await send(
            "POST", bucket: bucket, key: key, query: [("uploads", "")], operation: "CreateMultipartUpload")
        let createdBody = String(buffer: try await created.body.collect(upTo: 1 << 20))
        guard let uploadID = XMLText.value("UploadId", in: createdBody) else {
            throw StorageError.remote(
                target: "s3://\(bucket)/\(key)", operation: "CreateMultipartUpload", status: 200,
                code: "NoUploadId", message: "the reply names no UploadId")
        }
        let parts = (size + partSize - 1) / partSize
        do {
            var etags = [String](repeating: "", count: parts)
            try await withThrowingTaskGroup(of: (Int, String).self) { group in
                var next = 0
                func addPart() {
                    let number = next + 1
                    let offset = next * partSize
                    next += 1
                    group.addTask {
                        let handle = try FileHandle(forReadingFrom: file)
                        defer { try? handle.close() }
                        try handle.seek(toOffset: UInt64(offset))
                        let data = try handle.read(upToCount: partSize) ?? Data()
                        let response = try await send(
                            "PUT", bucket: bucket, key: key,
                            query: [("partNumber", String(number)), ("uploadId", uploadID)],
                            body: ByteBuffer(data: data), operation: "UploadPart")
                        return (number, response.headers.first(name: "etag") ?? "")
                    }
                }
                for _ in 0..<min(max(1, workers), parts) { addPart() }
                while let (number, etag) = try await group.next() {
                    etags[number - 1] = etag
                    if next < parts { addPart() }
                }
            }
            let manifest =
                "<CompleteMultipartUpload>"
                + etags.enumerated().map {
                    "<Part><PartNumber>\($0.offset + 1)</PartNumber><ETag>\($0.element)</ETag></Part>"
                }
                .joined() + "</CompleteMultipartUpload>"
            let completed = try await send(
                "POST", bucket: bucket, key: key, query: [("uploadId", uploadID)],
                body: ByteBuffer(string: manifest), signBody: true, operation: "CompleteMultipartUpload")
            // A failure after the 200 status line comes as an <Error> body.
            let completedBody = String(buffer: try await completed.body.collect(upTo: 1 << 20))
            if let code = XMLText.value("Code", in: completedBody), completedBody.contains("<Error>") {
                throw StorageError.remote(
                    target: "s3://\(bucket)/\(key)", operation: "CompleteMultipartUpload", status: 200, code: code,
                    message: XMLText.value("Message", in: completedBody) ?? "")
            }
        } catch {
            _ = try? await send(
                "DELETE", bucket: bucket, key: key, query: [("uploadId", uploadID)],
                operation: "AbortMultipartUpload")
            throw error
        }
    }

    /// Sends one signed request; a status outside 2xx (and `allowing`) becomes a ``StorageError`` with the store's
    /// error code and message.
    func send(
        _ method: String, bucket: String, key: String, query: [(String, String)] = [], body: ByteBuffer? = nil,
        signBody: Bool = false, headers: [(String, String)] = [], operation: String, allowing: Set<UInt> = []
    ) async throws -> HTTPClientResponse {
        let basePath = endpoint.path.hasSuffix("/") ? String(endpoint.path.dropLast()) : endpoint.path
        let path = "\(basePath)/\(bucket)" + (key.isEmpty ? "" : "/\(key)")
        var host = endpoint.host ?? "127.0.0.1"
        if let port = endpoint.port { host += ":\(port)" }
        let queryString = query.map {
            $0.1.isEmpty && $0.0 == "uploads"
                ? "uploads" : "\(AWSSignatureV4.encode($0.0))=\(AWSSignatureV4.encode($0.1))"
        }.joined(separator: "&")
        let url =
            "\(endpoint.scheme ?? "http")://\(host)\(AWSSignatureV4.encode(path, keepSlash: true))"
            + (queryString.isEmpty ? "" : "?\(queryString)")
        var request = HTTPClientRequest(url: url)
        request.method = HTTPMethod(rawValue: method)
        request.headers.add(name: "Host", value: host)
        for (name, value) in headers { request.headers.add(name: name, value: value) }
        if let body {
            request.body = .bytes(body)
            request.headers.add(name: "Content-Length", value: String(body.readableBytes))
        }
        if let credentials {
            let payloadHash =
                body == nil
                ? AWSSignatureV4.emptyPayloadHash
                : signBody ? AWSSignatureV4.hexSHA256(Array(body!.readableBytesView)) : AWSSignatureV4.unsignedPayload
            for (name, value) in AWSSignatureV4.sign(
                method: method, path: path, query: query, headers: ["host": host], payloadHash: payloadHash,
                credentials: credentials, region: region, date: Date())
            {
                request.headers.add(name: name, value: value)
            }
        }
        let target = "s3://\(bucket)/\(key)"
        let response: HTTPClientResponse
        do {
            response = try await http.execute(request, timeout: timeout)
        } catch {
            throw StorageError.unreachable(target: target, endpoint: endpoint.absoluteString, "\(error)")
        }
        let status = response.status.code
        guard (200..<300).contains(status) || allowing.contains(status) else {
            let text = method == "HEAD" ? "" : String(buffer: try await response.body.collect(upTo: 1 << 20))
            throw StorageError.remote(
                target: target, operation: operation, status: Int(status),
                code: XMLText.value("Code", in: text) ?? response.status.reasonPhrase,
                message: XMLText.value("Message", in: text) ?? "")
        }
        return response
    }
}

/// Just enough XML reading for S3's replies: the text of the first `<name>` element, and every `<name>` element.
enum XMLText {
    static func value(_ name: String, in text: String) -> String? {
        guard let open = text.range(of: "<\(name)>"),
            let close = text.range(of: "</\(name)>", range: open.upperBound..<text.endIndex)
        else { return nil }
        return unescape(String(text[open.upperBound..<close.lowerBound]))
    }

    static func elements(_ name: String, in text: String) -> [String] {
        var result: [String] = []
        var rest = text[...]
        while let open = rest.range(of: "<\(name)>"),
            let close = rest.range(of: "</\(name)>", range: open.upperBound..<rest.endIndex)
        {
            result.append(String(rest[open.upperBound..<close.lowerBound]))
            rest = rest[close.upperBound...]
        }
        return result
    }

    static func unescape(_ text: String) -> String {
        guard text.contains("&") else { return text }
        return text.replacingOccurrences(of: "&lt;", with: "<").replacingOccurrences(of: "&gt;", with: ">")
            .replacingOccurrences(of: "&quot;", with: "\"").replacingOccurrences(of: "&apos;", with: "'")
            .replacingOccurrences(of: "&#13;", with: "\r").replacingOccurrences(of: "&amp;", with: "&")
    }
}
