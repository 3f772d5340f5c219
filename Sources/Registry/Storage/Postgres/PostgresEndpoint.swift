import CofferCrypto
import Foundation

/// Where a PostgreSQL metadata store is and how to reach it: `postgres://USER@HOST:PORT/DB?sslmode=...&sslrootcert=PATH`.
///
/// The URL never holds a password (docs/FORMAT.md, "The home directory"): the password comes from `PGPASSWORD`, else
/// the password file (``PostgresPassfile``), else there is none.
///
/// ```swift
/// let endpoint = try PostgresEndpoint(url: "postgres://coffer@db.internal:5432/coffer?sslmode=verify-full")
/// print(endpoint.engine)    // PostgreSQL at db.internal:5432/coffer
/// ```
struct PostgresEndpoint: Sendable, Hashable, CustomStringConvertible {
    /// How TLS is used, as libpq's `sslmode` (only the modes that cannot be downgraded silently, and `disable`).
    enum SSLMode: String, Sendable, Hashable, CaseIterable {
        /// Plain TCP. The default on a loopback address.
        case disable
        /// TLS, the server's certificate not checked (protects against a passive listener only).
        case require
        /// TLS, the certificate checked against `sslrootcert` (else the system's roots) and the host name or address.
        /// The default off loopback.
        case verifyFull = "verify-full"
    }

    var host: String
    var port: Int
    var user: String
    var database: String
    var sslMode: SSLMode
    /// A PEM file of the certificate authorities to trust for `verify-full`; `nil`: the system's roots.
    var sslRootCertificate: String?

    static let defaultPort = 5432

    /// Parses a PostgreSQL URL (`postgres://` or `postgresql://`).
    ///
    /// - Parameter url: `postgres://USER@HOST[:PORT][/DB][?sslmode=disable|require|verify-full&sslrootcert=PATH]`;
    ///   `DB` defaults to `USER` (as libpq's), `PORT` to 5432, `sslmode` to `disable` on a loopback host and `verify-full`
    ///   elsewhere. User, database and path are percent-decoded; an IPv6 host is written in brackets.
    /// - Throws: ``CofferRegistryError/invalidInput(_:)`` naming what is wrong; a password in the URL is refused
    ///   without repeating it.
    init(url: String) throws(CofferRegistryError) {
        func invalid(_ why: String) -> CofferRegistryError { .invalidInput("invalid PostgreSQL URL: \(why)") }
        var rest: Substring
        if url.hasPrefix("postgres://") {
            rest = url.dropFirst("postgres://".count)
        } else if url.hasPrefix("postgresql://") {
            rest = url.dropFirst("postgresql://".count)
        } else {
            throw invalid("it must start with postgres:// (postgres://USER@HOST:PORT/DB)")
        }
        var query: Substring = ""
        if let mark = rest.firstIndex(of: "?") {
            query = rest[rest.index(after: mark)...]
            rest = rest[..<mark]
        }
        var path: Substring = ""
        if let slash = rest.firstIndex(of: "/") {
            path = rest[rest.index(after: slash)...]
            rest = rest[..<slash]
        }
        guard let at = rest.lastIndex(of: "@") else {
            throw invalid("it names no user (postgres://USER@HOST:PORT/DB)")
        }
        let userInfo = rest[..<at]
        let hostPort = rest[rest.index(after: at)...]
        if userInfo.contains(":") {
            throw .invalidInput(
                "a PostgreSQL URL must not hold a password: set PGPASSWORD, or put it in the password file PGPASSFILE (default ~/.pgpass, mode 0600)"
            )
        }
        guard let user = Self.percentDecoded(userInfo), !user.isEmpty else { throw invalid("it names no user (postgres://USER@HOST:PORT/DB)") }

        var host: String
        var portText: Substring? = nil
        if hostPort.hasPrefix("[") {
            guard let close = hostPort.firstIndex(of: "]") else { throw invalid("an IPv6 address must end with ]") }
            host = String(hostPort[hostPort.index(after: hostPort.startIndex)..<close])
            let after = hostPort[hostPort.index(after: close)...]
            if !after.isEmpty {
                guard after.hasPrefix(":") else { throw invalid("expected :PORT after the IPv6 address") }
                portText = after.dropFirst()
            }
        } else if let colon = hostPort.firstIndex(of: ":") {
            host = String(hostPort[..<colon])
            portText = hostPort[hostPort.index(after: colon)...]
        } else {
            host = String(hostPort)
        }
        guard !host.isEmpty else { throw invalid("it names no host (postgres://USER@HOST:PORT/DB)") }
        guard !host.contains(",") else { throw invalid("several hosts are not supported: name one") }
        var port = Self.defaultPort
        if let portText {
            guard let value = Int(portText), (1...65535).contains(value) else { throw invalid("the port must be a number from 1 to 65535") }
            port = value
        }
        var database = user
        if !path.isEmpty {
            guard let decoded = Self.percentDecoded(path), !decoded.contains("/") else {
                throw invalid("the path must be one database name")
            }
            database = decoded
        }

        var sslMode: SSLMode? = nil
        var rootCertificate: String? = nil
        for pair in query.split(separator: "&", omittingEmptySubsequences: true) {
            let parts = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            let name = String(parts[0])
            guard parts.count == 2, let value = Self.percentDecoded(parts[1]) else { throw invalid("parameter \(name) has no value") }
            switch name {
            case "sslmode":
                guard let mode = SSLMode(rawValue: value) else {
                    throw invalid("sslmode must be disable, require or verify-full (got \(value))")
                }
                sslMode = mode
            case "sslrootcert":
                guard !value.isEmpty else { throw invalid("sslrootcert names no file") }
                rootCertificate = value
            case "password":
                throw .invalidInput(
                    "a PostgreSQL URL must not hold a password: set PGPASSWORD, or put it in the password file PGPASSFILE (default ~/.pgpass, mode 0600)"
                )
            default:
                throw invalid("unknown parameter \(name) (Coffer reads sslmode and sslrootcert)")
            }
        }
        self.host = host
        self.port = port
        self.user = user
        self.database = database
        self.sslMode = sslMode ?? (isLoopback(host: host) ? .disable : .verifyFull)
        self.sslRootCertificate = rootCertificate
        if rootCertificate != nil && self.sslMode != .verifyFull {
            throw invalid("sslrootcert is only read with sslmode=verify-full")
        }
    }

    /// An endpoint from its parts (tests, tools).
    init(
        host: String,
        port: Int = Self.defaultPort,
        user: String,
        database: String,
        sslMode: SSLMode = .disable,
        sslRootCertificate: String? = nil
    ) {
        self.host = host
        self.port = port
        self.user = user
        self.database = database
        self.sslMode = sslMode
        self.sslRootCertificate = sslRootCertificate
    }

    /// How errors name this store: `PostgreSQL at HOST:PORT/DB`.
    var engine: String {
        let shownHost = host.contains(":") ? "[\(host)]" : host
        return "PostgreSQL at \(shownHost):\(port)/\(database)"
    }

    /// The URL again, in its canonical form (what `backends.json` records). Holds no secret.
    var url: String {
        let shownHost = host.contains(":") ? "[\(host)]" : host
        var text = "postgres://\(Self.percentEncoded(user))@\(shownHost):\(port)/\(Self.percentEncoded(database))?sslmode=\(sslMode.rawValue)"
        if let sslRootCertificate { text += "&sslrootcert=\(Self.percentEncoded(sslRootCertificate, keepingSlashes: true))" }
        return text
    }

    var description: String { url }

    /// The same server and credentials, another database (tests make one per test; `CREATE DATABASE` runs elsewhere).
    func with(database: String) -> PostgresEndpoint {
        var copy = self
        copy.database = database
        return copy
    }

    /// The password to log in with: `PGPASSWORD` when set and not empty, else the first matching line of the password
    /// file (`PGPASSFILE`, else `~/.pgpass`), else `nil`.
    ///
    /// - Parameter environment: the variables to read; `nil` for the process's environment (tests pass their own).
    /// - Throws: ``CofferRegistryError/unavailable(engine:reason:)`` when the password file cannot be used (group or
    ///   world access, not a regular file, unreadable).
    func password(environment: [String: String]? = nil) throws(CofferRegistryError) -> String? {
        let environment = environment ?? ProcessInfo.processInfo.environment
        if let password = environment["PGPASSWORD"], !password.isEmpty { return password }
        let path: String
        if let file = environment["PGPASSFILE"], !file.isEmpty {
            path = file
        } else if let home = environment["HOME"], !home.isEmpty {
            path = "\(home)/.pgpass"
        } else {
            return nil
        }
        do {
            guard let file = try PostgresPassfile(contentsOf: path) else { return nil }
            return file.password(host: host, port: port, database: database, user: user)
        } catch {
            throw .unavailable(engine: engine, reason: error.reason)
        }
    }

    private static func percentDecoded(_ text: Substring) -> String? {
        String(text).removingPercentEncoding
    }

    private static func percentEncoded(_ text: String, keepingSlashes: Bool = false) -> String {
        var allowed = CharacterSet(charactersIn: "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~")
        if keepingSlashes { allowed.insert("/") }
        return text.addingPercentEncoding(withAllowedCharacters: allowed) ?? text
    }
}
