import BatchRuntime
import Crypto
import Foundation
import SwiftASN1
import X509

#if canImport(Glibc)
    import Glibc
#endif

/// The gateway's own CA and a server certificate it signed, made on first start when the operator gives no
/// certificate: clients trust `ca.pem` (`batchctl --ca-certificate`, the SDK's and tccli's CA file). The CA's key is
/// used once and never written; to change the names, remove the directory and restart (a new CA is made).
struct GeneratedTLS {
    let directory: String
    var caPath: String { directory + "/ca.pem" }
    var certificatePath: String { directory + "/gateway.pem" }
    var keyPath: String { directory + "/gateway.key" }

    /// Makes the CA, the certificate (for `names`: host names or IP addresses, asked for only then) and its key
    /// unless all three are there. Returns whether it made them. Throws a ``StartupError`` with a one-line reason.
    func ensure(names: @autoclosure () -> [String]) throws -> Bool {
        let manager = FileManager.default
        if [caPath, certificatePath, keyPath].allSatisfy(manager.fileExists(atPath:)) { return false }
        let names = names()
        do {
            try manager.createDirectory(
                atPath: directory, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
            let now = Date()
            let caKey = P256.Signing.PrivateKey()
            let caIdentifier = SubjectKeyIdentifier(hash: .init(caKey.publicKey))
            let caName = try DistinguishedName {
                CommonName("Batch gateway CA \(UUID().uuidString.prefix(8).lowercased())")
            }
            let ca = try Certificate(
                version: .v3, serialNumber: .init(), publicKey: .init(caKey.publicKey),
                notValidBefore: now - 3600, notValidAfter: now + 10 * 365 * 86400, issuer: caName, subject: caName,
                signatureAlgorithm: .ecdsaWithSHA256,
                extensions: try Certificate.Extensions {
                    Critical(BasicConstraints.isCertificateAuthority(maxPathLength: 0))
                    Critical(KeyUsage(keyCertSign: true, cRLSign: true))
                    caIdentifier
                }, issuerPrivateKey: .init(caKey))
            let key = P256.Signing.PrivateKey()
            let alternatives = SubjectAlternativeNames(names.map(Self.generalName))
            let leaf = try Certificate(
                version: .v3, serialNumber: .init(), publicKey: .init(key.publicKey),
                notValidBefore: now - 3600, notValidAfter: now + 825 * 86400, issuer: caName,
                subject: try DistinguishedName { CommonName(names.first ?? "localhost") },
                signatureAlgorithm: .ecdsaWithSHA256,
                extensions: try Certificate.Extensions {
                    Critical(BasicConstraints.notCertificateAuthority)
                    Critical(KeyUsage(digitalSignature: true))
                    try ExtendedKeyUsage([.serverAuth])
                    alternatives
                    SubjectKeyIdentifier(hash: .init(key.publicKey))
                    AuthorityKeyIdentifier(keyIdentifier: caIdentifier.keyIdentifier)
                }, issuerPrivateKey: .init(caKey))
            // The key first, the CA last: a certificate is never there without its key.
            try write(try Certificate.PrivateKey(key).serializeAsPEM().pemString, to: keyPath, mode: 0o600)
            try write(
                try leaf.serializeAsPEM().pemString + "\n" + ca.serializeAsPEM().pemString, to: certificatePath,
                mode: 0o644)
            try write(try ca.serializeAsPEM().pemString, to: caPath, mode: 0o644)
            return true
        } catch let error as StartupError {
            throw error
        } catch {
            throw StartupError("--tls-directory \(directory): cannot make the gateway's certificate: \(error)")
        }
    }

    /// An IP address as itself, anything else as a DNS name.
    static func generalName(_ name: String) -> GeneralName {
        var v4 = in_addr()
        if inet_pton(AF_INET, name, &v4) == 1 {
            return .ipAddress(ASN1OctetString(contentBytes: withUnsafeBytes(of: &v4) { ArraySlice($0) }))
        }
        var v6 = in6_addr()
        if inet_pton(AF_INET6, name, &v6) == 1 {
            return .ipAddress(ASN1OctetString(contentBytes: withUnsafeBytes(of: &v6) { ArraySlice($0) }))
        }
        return .dnsName(name)
    }

    /// Writes `text` whole (through a temporary file) with `mode`.
    private func write(_ text: String, to path: String, mode: Int) throws {
        let temporary = path + ".\(UUID().uuidString.prefix(8))"
        guard
            FileManager.default.createFile(
                atPath: temporary, contents: Data(text.utf8), attributes: [.posixPermissions: mode])
        else { throw StartupError("--tls-directory: cannot write \(temporary)") }
        guard rename(temporary, path) == 0 else {
            unlink(temporary)
            throw StartupError("--tls-directory: cannot write \(path): \(String(cString: strerror(errno)))")
        }
    }
}
