import Testing

@testable import BatchCore

@Suite("TC3-HMAC-SHA256 request signatures")
struct TC3SignatureTests {
    @Test("the signature matches one computed independently (Python hmac, the documented algorithm)")
    func knownVector() {
        let body = Array(#"{"JobId":"job-abcdefgh"}"#.utf8)
        let headers = [
            "content-type": "application/json; charset=utf-8", "host": "batch.tencentcloudapi.com",
            "x-tc-action": "describejob",
        ]
        let signature = TC3Signature.signature(
            secretKey: "SECRETEXAMPLEKEY", headers: headers, signedHeaders: ["content-type", "host", "x-tc-action"],
            body: body, timestamp: 1_764_400_000, date: "2025-11-29", service: "batch")
        #expect(signature == "6b2f80f7d9a34707c5fbee257654f97441e46a0b3e648d128186054a3b5e896c")
    }

    @Test(
        "UTC dates of timestamps",
        arguments: [(0, "1970-01-01"), (1_764_400_000, "2025-11-29"), (951_782_400, "2000-02-29")])
    func dates(timestamp: Int, date: String) {
        #expect(TC3Signature.date(of: timestamp) == date)
    }

    @Test("an Authorization header round-trips through its parser")
    func authorizationHeader() throws {
        let headers = TC3Signature.signedRequestHeaders(
            secretID: "AKIDEXAMPLE", secretKey: "k", host: "127.0.0.1:8080", action: "SubmitJob", body: [UInt8](),
            timestamp: 1_764_400_000)
        let header = try #require(headers.first { $0.0 == "Authorization" }?.1)
        let parsed = try #require(TC3Signature.Authorization(header: header))
        #expect(parsed.secretID == "AKIDEXAMPLE")
        #expect(parsed.service == "batch")
        #expect(parsed.signedHeaders == ["content-type", "host", "x-tc-action"])
        #expect(TC3Signature.Authorization(header: "Bearer abc") == nil)
        #expect(TC3Signature.Authorization(header: "TC3-HMAC-SHA256 Credential=x") == nil)
    }
}
