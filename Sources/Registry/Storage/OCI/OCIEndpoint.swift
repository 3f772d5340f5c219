import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// Where an OCI blob store lives: `oci://HOST[:PORT]/REPOSITORY` (HTTPS) or `oci+http://HOST[:PORT]/REPOSITORY` (plain
/// HTTP, meant for loopback), as `backends.json` names it (docs/FORMAT.md, "Storage backends").
///
/// The URL never carries credentials: they come from the containers auth file (``OCICredentials``).
///
/// ```swift
/// let endpoint = try OCIEndpoint(parsing: "oci+http://127.0.0.1:5000/coffer")
/// endpoint.name  // "OCI registry 127.0.0.1:5000/coffer"
/// ```
public struct OCIEndpoint: Sendable, Equatable, CustomStringConvertible {
    /// `https` or `http`.
    public let scheme: String
    /// The host as written in the URL, brackets included for IPv6 (`[::1]`).
    public let host: String
    public let port: Int?
    /// The repository every blob and manifest of this store goes to (distribution's `<name>`).
    public let repository: String

    /// `HOST[:PORT]`: how the auth file and error messages name the registry.
    public var authority: String { port.map { "\(host):\($0)" } ?? host }
    /// How errors name the store.
    public var name: String { "OCI registry \(authority)/\(repository)" }
    /// `https://HOST[:PORT]`, the base of every request path.
    public var baseURL: String { "\(scheme)://\(authority)" }
    public var description: String { "\(scheme == "https" ? "oci" : "oci+http")://\(authority)/\(repository)" }

    public init(parsing text: String) throws(CofferRegistryError) {
        let scheme: String
        let rest: Substring
        if text.hasPrefix("oci://") {
            scheme = "https"
            rest = text.dropFirst("oci://".count)
        } else if text.hasPrefix("oci+http://") {
            scheme = "http"
            rest = text.dropFirst("oci+http://".count)
        } else {
            throw .invalidInput("invalid OCI registry URL '\(text)': use oci://HOST[:PORT]/REPOSITORY or oci+http://HOST[:PORT]/REPOSITORY")
        }
        guard let slash = rest.firstIndex(of: "/") else {
            throw .invalidInput("invalid OCI registry URL '\(text)': it names no repository (oci://HOST[:PORT]/REPOSITORY)")
        }
        let authority = rest[..<slash]
        let repository = String(rest[rest.index(after: slash)...])
        guard !authority.contains("@") else {
            throw .invalidInput(
                "invalid OCI registry URL '\(text)': credentials do not belong in the URL; put them in the containers auth file (REGISTRY_AUTH_FILE, skopeo login)"
            )
        }
        guard !repository.contains("?"), !repository.contains("#") else {
            throw .invalidInput("invalid OCI registry URL '\(text)': it has a query or fragment")
        }
        let (host, port) = try Self.split(authority: authority, in: text)
        guard Self.isValidRepository(repository) else {
            throw .invalidInput(
                "invalid OCI repository '\(repository)' in '\(text)': use lower-case letters and digits, separated by '.', '_', '__', '-' or '/'"
            )
        }
        // distribution refuses names whose `HOST[:PORT]/NAME` exceeds 255 characters, and so do most clients.
        guard authority.utf8.count + 1 + repository.utf8.count <= 255 else {
            throw .invalidInput("invalid OCI registry URL '\(text)': HOST[:PORT]/REPOSITORY is longer than 255 characters")
        }
        self.scheme = scheme
        self.host = host
        self.port = port
        self.repository = repository
    }

    /// Splits what `coffer import` is given, `oci://HOST[:PORT]/REPOSITORY:TAG` or `...REPOSITORY@sha256:HEX`, into the
    /// repository's endpoint and the manifest reference (the tag, or `sha256:HEX`).
    public static func parse(reference text: String) throws(CofferRegistryError) -> (endpoint: OCIEndpoint, reference: String) {
        if let at = text.range(of: "@", options: .backwards), text[at.upperBound...].hasPrefix("sha256:") {
            let digest = String(text[at.upperBound...])
            guard OCIDistributionClient.hex(of: digest) != nil else {
                throw .invalidInput("invalid OCI reference '\(text)': '\(digest)' is not sha256: and 64 lower-case hex digits")
            }
            return (try OCIEndpoint(parsing: String(text[..<at.lowerBound])), digest)
        }
        guard let slash = text.range(of: "/", options: .backwards), let colon = text[slash.upperBound...].lastIndex(of: ":") else {
            throw .invalidInput("invalid OCI reference '\(text)': use oci://HOST[:PORT]/REPOSITORY:TAG or ...REPOSITORY@sha256:HEX")
        }
        let tag = String(text[text.index(after: colon)...])
        guard isValidTag(tag) else {
            throw .invalidInput("invalid OCI tag '\(tag)' in '\(text)': use up to 128 of A-Z a-z 0-9 _ . -, not starting with . or -")
        }
        return (try OCIEndpoint(parsing: String(text[..<colon])), tag)
    }

    /// distribution-spec's tag grammar: `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`.
    public static func isValidTag(_ tag: String) -> Bool {
        let bytes = Array(tag.utf8)
        func word(_ c: UInt8) -> Bool { (48...57).contains(c) || (65...90).contains(c) || (97...122).contains(c) || c == 95 }
        guard let first = bytes.first, bytes.count <= 128, word(first) else { return false }
        return bytes.allSatisfy { word($0) || $0 == 46 || $0 == 45 }
    }

    private static func split(authority: Substring, in text: String) throws(CofferRegistryError) -> (String, Int?) {
        var host = authority
        var portText: Substring?
        if authority.hasPrefix("[") {
            // An IPv6 literal: `[::1]` or `[::1]:5000`.
            guard let close = authority.firstIndex(of: "]") else {
                throw .invalidInput("invalid OCI registry URL '\(text)': unclosed '[' in the host")
            }
            host = authority[...close]
            let after = authority[authority.index(after: close)...]
            if !after.isEmpty {
                guard after.hasPrefix(":") else { throw .invalidInput("invalid OCI registry URL '\(text)': bad host '\(authority)'") }
                portText = after.dropFirst()
            }
        } else if let colon = authority.lastIndex(of: ":") {
            host = authority[..<colon]
            portText = authority[authority.index(after: colon)...]
        }
        let hostOK =
            host.hasPrefix("[")
            ? host.dropFirst().dropLast().allSatisfy { $0.isHexDigit || $0 == ":" || $0 == "." }
            : host.utf8.allSatisfy { (48...57).contains($0) || (65...90).contains($0) || (97...122).contains($0) || $0 == 46 || $0 == 45 }
        guard !host.isEmpty, hostOK else { throw .invalidInput("invalid OCI registry URL '\(text)': bad host '\(host)'") }
        guard let portText else { return (String(host), nil) }
        guard let port = Int(portText), (1...65535).contains(port), portText.allSatisfy(\.isASCII) else {
            throw .invalidInput("invalid OCI registry URL '\(text)': bad port '\(portText)'")
        }
        return (String(host), port)
    }

    /// distribution's repository grammar: `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(\/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*`.
    public static func isValidRepository(_ name: String) -> Bool {
        guard !name.isEmpty else { return false }
        return name.split(separator: "/", omittingEmptySubsequences: false).allSatisfy(isValidComponent)
    }

    private static func isValidComponent(_ component: Substring) -> Bool {
        let bytes = Array(component.utf8)
        func alphanumeric(_ c: UInt8) -> Bool { (48...57).contains(c) || (97...122).contains(c) }
        guard let first = bytes.first, let last = bytes.last, alphanumeric(first), alphanumeric(last) else { return false }
        var i = 0
        while i < bytes.count {
            if alphanumeric(bytes[i]) {
                i += 1
                continue
            }
            // A separator run: one '.', one or two '_', or any number of '-', between alphanumerics.
            var j = i
            while j < bytes.count, !alphanumeric(bytes[j]) { j += 1 }
            let run = bytes[i..<j]
            let ok = run == [46] || run == [95] || run == [95, 95] || run.allSatisfy { $0 == 45 }
            guard ok else { return false }
            i = j
        }
        return true
    }
}
