import CofferCrypto
import Foundation

/// A user name and password for an OCI registry, read from the containers auth file that skopeo, podman and oras
/// write (`skopeo login`, `podman login`, `oras login`), never from a URL or a command line.
///
/// The files are tried in this order, and the first that holds an entry for the registry wins (docs/FORMAT.md, "The
/// home directory"): `$REGISTRY_AUTH_FILE`, `$XDG_RUNTIME_DIR/containers/auth.json`, `$DOCKER_CONFIG/config.json`
/// (or `~/.docker/config.json` without `DOCKER_CONFIG`). The entry is `auths["HOST:PORT"].auth`, the base64 of
/// `USER:PASSWORD` (`auths["HOST"]` when the URL names no port).
///
/// ```swift
/// let credentials = try OCICredentials.lookup(for: endpoint, environment: ProcessInfo.processInfo.environment)
/// ```
public struct OCICredentials: Sendable, Equatable {
    public var username: String
    public var password: String

    public init(username: String, password: String) {
        self.username = username
        self.password = password
    }

    /// The auth files to read, in order, for this environment.
    public static func authFiles(environment: [String: String]) -> [String] {
        var files: [String] = []
        if let file = environment["REGISTRY_AUTH_FILE"], !file.isEmpty { files.append(file) }
        if let runtime = environment["XDG_RUNTIME_DIR"], !runtime.isEmpty { files.append("\(runtime)/containers/auth.json") }
        if let docker = environment["DOCKER_CONFIG"], !docker.isEmpty {
            files.append("\(docker)/config.json")
        } else if let home = environment["HOME"], !home.isEmpty {
            files.append("\(home)/.docker/config.json")
        }
        return files
    }

    /// The credentials for `endpoint`'s registry, or nil when no auth file has an entry for it.
    ///
    /// - Throws: `.invalidInput` naming the file when one exists but cannot be read or is not an auth file (a mistake
    ///   there should not silently mean "anonymous"); `REGISTRY_AUTH_FILE` naming a missing file is such a mistake too.
    public static func lookup(for endpoint: OCIEndpoint, environment: [String: String]) throws(CofferRegistryError) -> OCICredentials? {
        let explicit = environment["REGISTRY_AUTH_FILE"].flatMap { $0.isEmpty ? nil : $0 }
        for file in authFiles(environment: environment) {
            guard FileManager.default.fileExists(atPath: file) else {
                if file == explicit { throw .invalidInput("REGISTRY_AUTH_FILE names \(file), which does not exist") }
                continue
            }
            let bytes: [UInt8]
            do {
                bytes = try FileBytes.read(file)
            } catch {
                throw .invalidInput("cannot read the containers auth file \(file): \(error)")
            }
            if let found = try credentials(in: bytes, file: file, for: endpoint) { return found }
        }
        return nil
    }

    /// The entry for `endpoint` in one auth file's bytes.
    static func credentials(in bytes: [UInt8], file: String, for endpoint: OCIEndpoint) throws(CofferRegistryError) -> OCICredentials? {
        guard let object = (try? JSONSerialization.jsonObject(with: Data(bytes))) as? [String: Any] else {
            throw .invalidInput("the containers auth file \(file) is not a JSON object")
        }
        guard let auths = object["auths"] else { return nil }
        guard let entries = auths as? [String: Any] else {
            throw .invalidInput("the containers auth file \(file) has an 'auths' that is not an object")
        }
        // Docker's older files key entries by URL (`https://HOST:PORT/v1/`); podman's by `HOST:PORT`.
        let key = endpoint.authority
        let match =
            entries[key]
            ?? entries.first(where: { candidate, _ in
                var trimmed = Substring(candidate)
                for prefix in ["https://", "http://"] where trimmed.hasPrefix(prefix) { trimmed = trimmed.dropFirst(prefix.count) }
                return trimmed.split(separator: "/", maxSplits: 1).first.map(String.init) == key
            })?.value
        guard let match else { return nil }
        guard let entry = match as? [String: Any], let encoded = entry["auth"] as? String, !encoded.isEmpty else {
            throw .invalidInput(
                "the containers auth file \(file) has an entry for \(key) without an 'auth' value (credential helpers are not supported)"
            )
        }
        guard let decoded = Data(base64Encoded: encoded), let text = String(data: decoded, encoding: .utf8), let colon = text.firstIndex(of: ":")
        else {
            throw .invalidInput("the containers auth file \(file) has an 'auth' for \(key) that is not base64 of USER:PASSWORD")
        }
        return OCICredentials(username: String(text[..<colon]), password: String(text[text.index(after: colon)...]))
    }
}
