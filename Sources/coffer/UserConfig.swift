import Foundation

/// What a user sets once instead of on every command: who they are, which registry, which server and token.
///
/// Each setting is the command's flag when given, else its environment variable, else the user's config file,
/// `$XDG_CONFIG_HOME/coffer/config.toml` (else `~/.config/coffer/config.toml`), read only when a command needs a
/// setting it was not given. The file is a small part of TOML: `key = "string"` lines, `#` comments, blank lines.
///
/// ```toml
/// identity = "~/keys/alice.key"     # --identity, COFFER_IDENTITY
/// home = "~/registries/icu"         # --home, COFFER_HOME
/// registry = "https://coffer.example:8443"   # --registry, COFFER_REGISTRY
/// token_file = "~/.config/coffer/token"      # --token, COFFER_TOKEN (the file holds the token)
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

        var environmentVariable: String {
            switch self {
            case .identity: "COFFER_IDENTITY"
            case .home: "COFFER_HOME"
            case .registry: "COFFER_REGISTRY"
            case .tokenFile: "COFFER_TOKEN_FILE"
            case .caCert: "COFFER_CA_CERT"
            }
        }
    }

    /// The setting `key` from the environment, else from the config file; `nil` when neither has it.
    static func value(_ key: Key, environment: [String: String] = ProcessInfo.processInfo.environment) -> String? {
        if let value = environment[key.environmentVariable], !value.isEmpty { return value }
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
        guard let data = FileManager.default.contents(atPath: path) else { return .success([:]) }
        guard let text = String(data: data, encoding: .utf8) else { return .failure(CLIError("\(path): not UTF-8 text")) }
        return Result { () throws(CLIError) in try parse(text, path: path) }
    }()

    /// The settings in `text`, the config file at `path`.
    static func parse(_ text: String, path: String) throws(CLIError) -> [Key: String] {
        var settings: [Key: String] = [:]
        let directory = (path as NSString).deletingLastPathComponent
        for (index, rawLine) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
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
        return settings
    }

    private static func resolve(_ path: String, directory: String) -> String {
        if path.hasPrefix("~/") { return home + path.dropFirst() }
        if path.hasPrefix("/") { return path }
        return "\(directory)/\(path)"
    }
}
