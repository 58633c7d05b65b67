import ArgumentParser
import Foundation

/// Named profiles in the user's configuration file, as the AWS CLI keeps them: `[default]` and `[profile NAME]`
/// sections of `endpoint`, `secret_id`, `secret_key` and `ca_certificate`.
///
/// The file is `BATCH_CONFIG_FILE`, else `$XDG_CONFIG_HOME/batch/config`, else `~/.config/batch/config`. One that
/// holds a `secret_key` must be readable by its owner alone, as ssh requires of a private key.
struct ProfileFile {
    static let keys = ["endpoint", "secret_id", "secret_key", "ca_certificate"]

    var path: String
    /// Settings by profile name (`default` for `[default]`).
    var profiles: [String: [String: String]] = [:]

    static var defaultPath: String {
        let environment = ProcessInfo.processInfo.environment
        if let path = environment["BATCH_CONFIG_FILE"], !path.isEmpty { return path }
        let base =
            environment["XDG_CONFIG_HOME"].flatMap { $0.isEmpty ? nil : $0 }
            ?? (environment["HOME"] ?? NSHomeDirectory()) + "/.config"
        return base + "/batch/config"
    }

    /// The file at `path`; empty when there is none. Throws a one-line reason for a malformed or exposed file.
    static func load(_ path: String = defaultPath) throws -> ProfileFile {
        var file = ProfileFile(path: path)
        guard let data = FileManager.default.contents(atPath: path) else { return file }
        var section: String?
        for (number, raw) in String(decoding: data, as: UTF8.self).split(
            separator: "\n", omittingEmptySubsequences: false
        )
        .enumerated() {
            let line = raw.trimmingCharacters(in: .whitespaces)
            if line.isEmpty || line.hasPrefix("#") || line.hasPrefix(";") { continue }
            if line.hasPrefix("[") && line.hasSuffix("]") {
                let header = line.dropFirst().dropLast().trimmingCharacters(in: .whitespaces)
                if header == "default" {
                    section = "default"
                } else if header.hasPrefix("profile "),
                    case let name = header.dropFirst(8).trimmingCharacters(in: .whitespaces),
                    isValidName(name)
                {
                    section = name
                } else {
                    throw ValidationError("\(path):\(number + 1): a section is [default] or [profile NAME]")
                }
                file.profiles[section!] = file.profiles[section!] ?? [:]
                continue
            }
            let parts = line.split(separator: "=", maxSplits: 1).map { $0.trimmingCharacters(in: .whitespaces) }
            guard let section, parts.count == 2, keys.contains(parts[0]) else {
                throw ValidationError(
                    "\(path):\(number + 1): expected KEY = VALUE under a section, KEY one of \(keys.joined(separator: ", "))"
                )
            }
            file.profiles[section]![parts[0]] = parts[1]
        }
        if file.profiles.values.contains(where: { $0["secret_key"] != nil }),
            let mode = (try? FileManager.default.attributesOfItem(atPath: path))?[.posixPermissions] as? Int,
            mode & 0o077 != 0
        {
            throw ValidationError(
                "\(path) holds a secret key and others may read it (mode \(String(mode, radix: 8))): chmod 600 it")
        }
        return file
    }

    /// A profile name: letters, digits, `-`, `_` and `.`.
    static func isValidName(_ name: String) -> Bool {
        !name.isEmpty && name.count <= 64
            && name.allSatisfy { $0.isASCII && ($0.isLetter || $0.isNumber || "-_.".contains($0)) }
    }

    /// Writes the file whole (mode 0600, its directory 0700 when made), replacing what was there.
    func save() throws {
        let directory = (path as NSString).deletingLastPathComponent
        try FileManager.default.createDirectory(
            atPath: directory, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        var text = ""
        for name in profiles.keys.sorted(by: { ($0 == "default" ? 0 : 1, $0) < ($1 == "default" ? 0 : 1, $1) }) {
            text += name == "default" ? "[default]\n" : "[profile \(name)]\n"
            for key in Self.keys { if let value = profiles[name]![key] { text += "\(key) = \(value)\n" } }
            text += "\n"
        }
        let temporary = path + ".\(UUID().uuidString.prefix(8))"
        guard
            FileManager.default.createFile(
                atPath: temporary, contents: Data(text.utf8), attributes: [.posixPermissions: 0o600])
        else { throw ValidationError("cannot write \(temporary)") }
        guard rename(temporary, path) == 0 else {
            try? FileManager.default.removeItem(atPath: temporary)
            throw ValidationError("cannot replace \(path)")
        }
    }
}

/// `batchctl configure`: writes a profile, as `aws configure` does.
struct Configure: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Write a profile (gateway, key pair, CA) to the configuration file, readable by you alone.",
        discussion: """
            Example: batchctl configure --profile prod --endpoint https://batch.example.org:8443 \\
                       --ca-certificate ca.pem --secret-id AKID… --secret-key …
                     batchctl jobs --profile prod      (or BATCH_PROFILE=prod batchctl jobs)
            Without --profile it writes [default], which every command uses unless told otherwise. Options not
            given keep the profile's values. The file is BATCH_CONFIG_FILE, else $XDG_CONFIG_HOME/batch/config,
            else ~/.config/batch/config.
            """)

    @Option(help: "The profile to write (default: [default])")
    var profile: String = "default"
    @Option(help: "The gateway: host:port, or https://host:port")
    var endpoint: String?
    @Option(help: "A PEM file of the CA that signed the gateway's certificate")
    var caCertificate: String?
    @Option(help: "The key pair's SecretId")
    var secretId: String?
    @Option(help: "The key pair's SecretKey; - reads it from the first line of stdin (kept out of shell history)")
    var secretKey: String?

    func validate() throws {
        guard ProfileFile.isValidName(profile) else {
            throw ValidationError("--profile: letters, digits, - _ . (at most 64)")
        }
        guard endpoint != nil || caCertificate != nil || secretId != nil || secretKey != nil else {
            throw ValidationError("give at least one of --endpoint, --ca-certificate, --secret-id, --secret-key")
        }
    }

    func run() async throws {
        do {
            var file = try ProfileFile.load()
            var settings = file.profiles[profile] ?? [:]
            if let endpoint { settings["endpoint"] = endpoint }
            if let caCertificate {
                settings["ca_certificate"] =
                    caCertificate.hasPrefix("/")
                    ? caCertificate : FileManager.default.currentDirectoryPath + "/" + caCertificate
            }
            if let secretId { settings["secret_id"] = secretId }
            if secretKey == "-" {
                guard let line = readLine(strippingNewline: true), !line.isEmpty else {
                    throw ValidationError("--secret-key -: stdin gave no key")
                }
                settings["secret_key"] = line
            } else if let secretKey {
                settings["secret_key"] = secretKey
            }
            file.profiles[profile] = settings
            try file.save()
            print("profile \(profile) written to \(file.path)")
        } catch let error as ValidationError {
            Batchctl.fail(error.message)
        }
    }
}
