import BatchCore
import Foundation
import Testing

/// AWS's published examples of Signature Version 4 for S3 ("Signature Calculations for the Authorization Header").
@Suite struct AWSSignatureV4Tests {
    let credentials = AWSSignatureV4.Credentials(
        accessKeyID: "AKIAIOSFODNN7EXAMPLE", secretAccessKey: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")
    let date = Date(timeIntervalSince1970: 1_369_353_600)  // 2013-05-24T00:00:00Z

    func authorization(_ headers: [(String, String)]) -> String? {
        headers.first { $0.0 == "Authorization" }?.1
    }

    @Test func getObjectWithARange() {
        let headers = AWSSignatureV4.sign(
            method: "GET", path: "/test.txt", query: [],
            headers: ["host": "examplebucket.s3.amazonaws.com", "range": "bytes=0-9"],
            payloadHash: AWSSignatureV4.emptyPayloadHash, credentials: credentials, region: "us-east-1", date: date)
        #expect(
            authorization(headers)
                == "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, "
                + "SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, "
                + "Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41")
        #expect(headers.contains { $0 == ("x-amz-date", "20130524T000000Z") })
    }

    @Test func listObjectsWithAQuery() {
        let headers = AWSSignatureV4.sign(
            method: "GET", path: "/", query: [("prefix", "J"), ("max-keys", "2")],
            headers: ["host": "examplebucket.s3.amazonaws.com"], payloadHash: AWSSignatureV4.emptyPayloadHash,
            credentials: credentials, region: "us-east-1", date: date)
        #expect(
            authorization(headers)?.hasSuffix(
                "Signature=34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7") == true)
    }

    @Test func encodingKeepsOnlyUnreservedCharacters() {
        #expect(AWSSignatureV4.encode("a b/c~d*é") == "a%20b%2Fc~d%2A%C3%A9")
        #expect(AWSSignatureV4.encode("/bucket/a b.txt", keepSlash: true) == "/bucket/a%20b.txt")
    }
}
