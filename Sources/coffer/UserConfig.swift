import CofferCrypto
import Foundation
import Synchronization

/// What a user sets once instead of on every command: who they are, which registry, which server and token.
///
/// Each setting is the command's flag when given, else its environment variable, else the user's config file,
/// `$XDG_CONFIG_HOME/coffer/config.toml` (else `~/.config/coffer/config.toml`), read only when a command needs a
/// setting it was not given. The file is a small part of TOML: `key = "string"` lines, `#` comments, blank lines.
///
/// ```toml
/// identity = "~/keys/alice.key"     # --identity, COFFER_IDENTITY
/// registry = "https://coffer.example:8443"   # --registry, COFFER_REGISTRY (or home = "...": one or the other)
/// token_file = "~/.config/coffer/token"      # the token for this file's registry (the file holds it)
/// ca_cert = "~/.config/coffer/ca.pem"        # --ca-cert, COFFER_CA_CERT
/// ```
///
/// Paths may start with `~/`; relative paths are read from the config file's directory. A key the file does not
/// know, or a line that is not `key = "string"`, stops the command with one line naming the file and line: a typo
/// must not silently act as someone else, or on another registry.
enum UserConfig {
    enum Key: String, CaseIterable {
        case identity, home, registry
        case tokenFile = "token_file"
        case caCert = "ca_cert"

        /// The variable that comes before the file; none for the token file, which belongs to the file's registry.
        var environmentVariable: String? {
            switch self {
            case .identity: "COFFER_IDENTITY"
            case .home: "COFFER_HOME"
            case .registry: "COFFER_REGISTRY"
            case .tokenFile: nil
            case .caCert: "COFFER_CA_CERT"
            }
        }
    }

    /// The setting `key` from the environment, else from the config file; `nil` when neither has it.
    static func value(_ key: Key, environment: [String: String] = ProcessInfo.processInfo.environment) -> String? {
        if let variable = key.environmentVariable, let value = environment[variable], !value.isEmpty { return value }
        switch file {
        case .success(let settings): return settings[key]
        case .failure(let error): Coffer.fail(error.description)
        }
    }

    /// `--identity` when given, else the user's default identity.
    static func identity(_ flag: String?) -> String? { flag ?? value(.identity) }

    /// `--identity` when given, else the user's default identity; a command that must have one says how to give it.
    static func requiredIdentity(_ flag: String?) throws -> String {
        guard let identity = identity(flag) else {
            throw CLIError("no identity: give --identity NAME.key, or set COFFER_IDENTITY, or identity in \(path)")
        }
        return identity
    }

    /// Where the config file is (whether or not it exists).
    static var path: String {
        let environment = ProcessInfo.processInfo.environment
        if let xdg = environment["XDG_CONFIG_HOME"], xdg.hasPrefix("/") { return "\(xdg)/coffer/config.toml" }
        return "\(home)/.config/coffer/config.toml"
    }

    private static var home: String {
        ProcessInfo.processInfo.environment["HOME"].flatMap { $0.isEmpty ? nil : $0 } ?? FileManager.default.homeDirectoryForCurrentUser.path
    }

    private static let file: Result<[Key: String], CLIError> = {
        let path = UserConfig.path
        var status = stat()
        guard stat(path, &status) == 0 else {
            return errno == ENOENT ? .success([:]) : .failure(CLIError("\(path): \(String(cString: strerror(errno)))"))
        }
        // As ssh does with its config: a file others may write could point every command at their registry.
        guard status.st_mode & 0o022 == 0, status.st_uid == getuid() || status.st_uid == 0 else {
            return .failure(CLIError("\(path) can be changed by other users (mode \(String(status.st_mode & 0o777, radix: 8))): chmod go-w it"))
        }
        guard let data = FileManager.default.contents(atPath: path) else { return .failure(CLIError("\(path): cannot be read")) }
        guard let text = String(data: data, encoding: .utf8) else { return .failure(CLIError("\(path): not UTF-8 text")) }
        return Result { () throws(CLIError) in try parse(text, path: path) }
    }()

    /// A secret file (a passphrase, a token) that other users can read gives it away: said on stderr, once per
    /// command and file. The file is checked where a link leads; a pipe (`<(pass show coffer)`) says nothing.
    static func warnIfOthersCanRead(_ path: String, what: String) {
        var status = stat()
        guard stat(path, &status) == 0, status.st_mode & S_IFMT == S_IFREG, status.st_mode & 0o077 != 0 else { return }
        guard warned.withLock({ $0.insert(path).inserted }) else { return }
        FileDescriptorStream.standardError.writeLine(
            "coffer: warning: the \(what) \(path) can be read by other users (mode \(String(status.st_mode & 0o777, radix: 8))): chmod 600 it"
        )
    }

    private static let warned = Mutex<Set<String>>([])

    /// The settings in `text`, the config file at `path`.
    static func parse(_ text: String, path: String) throws(CLIError) -> [Key: String] {
        var settings: [Key: String] = [:]
        let directory = FileBytes.parentDirectory(of: path)
        // Any line ending (a file written on Windows ends lines with CR LF, one Character in Swift), and no BOM.
        let body = text.hasPrefix("\u{FEFF}") ? String(text.dropFirst()) : text
        for (index, rawLine) in body.split(omittingEmptySubsequences: false, whereSeparator: \.isNewline).enumerated() {
            let line = rawLine.trimmingCharacters(in: .whitespaces)
            guard !line.isEmpty, !line.hasPrefix("#") else { continue }
            let place = "\(path) line \(index + 1)"
            guard let equals = line.firstIndex(of: "=") else { throw CLIError("\(place): expected key = \"value\"") }
            let name = line[..<equals].trimmingCharacters(in: .whitespaces)
            guard let key = Key(rawValue: name) else {
                throw CLIError("\(place): unknown setting '\(name)' (known: \(Key.allCases.map(\.rawValue).joined(separator: ", ")))")
            }
            guard settings[key] == nil else { throw CLIError("\(place): \(name) is set twice") }
            var rest = line[line.index(after: equals)...].trimmingCharacters(in: .whitespaces)
            guard rest.hasPrefix("\"") else { throw CLIError("\(place): the value of \(name) must be a \"quoted string\"") }
            rest.removeFirst()
            guard let close = rest.firstIndex(of: "\"") else { throw CLIError("\(place): the value of \(name) has no closing quote") }
            let value = String(rest[..<close])
            let after = rest[rest.index(after: close)...].trimmingCharacters(in: .whitespaces)
            guard after.isEmpty || after.hasPrefix("#") else { throw CLIError("\(place): unexpected text after the value of \(name)") }
            guard !value.isEmpty, !value.contains("\\") else { throw CLIError("\(place): \(name) must be a non-empty path or URL without escapes") }
            settings[key] = key == .registry ? value : resolve(value, directory: directory)
        }
        if settings[.home] != nil, settings[.registry] != nil {
            throw CLIError("\(path): set home (a local registry) or registry (a served one), not both")
        }
        return settings
    }

    private static func resolve(_ path: String, directory: String) -> String {
        if path.hasPrefix("~/") { return home + path.dropFirst() }
        if path.hasPrefix("/") { return path }
        return "\(directory)/\(path)"
    }
}
