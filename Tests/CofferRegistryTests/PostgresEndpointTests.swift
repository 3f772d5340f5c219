import CofferRegistry
import Foundation
import Testing

@testable import CofferRegistry

/// PostgreSQL URLs and passwords: parsing, refusals, libpq's password file rules. No server needed.
struct PostgresEndpointTests {
    @Test func parsesAFullURL() throws {
        let endpoint = try PostgresEndpoint(url: "postgres://coffer@db.example:6543/registry?sslmode=verify-full&sslrootcert=/etc/ca%20root.pem")
        #expect(endpoint.host == "db.example")
        #expect(endpoint.port == 6543)
        #expect(endpoint.user == "coffer")
        #expect(endpoint.database == "registry")
        #expect(endpoint.sslMode == .verifyFull)
        #expect(endpoint.sslRootCertificate == "/etc/ca root.pem")
        #expect(endpoint.engine == "PostgreSQL at db.example:6543/registry")
        #expect(endpoint.url == "postgres://coffer@db.example:6543/registry?sslmode=verify-full&sslrootcert=/etc/ca%20root.pem")
        #expect(try PostgresEndpoint(url: endpoint.url) == endpoint)
    }

    @Test func defaultsFollowLibpqAndSecureOffLoopback() throws {
        let local = try PostgresEndpoint(url: "postgresql://alice@127.0.0.1")
        #expect(local.port == 5432)
        #expect(local.database == "alice", "the database defaults to the user's name, as libpq's")
        #expect(local.sslMode == .disable, "plain TCP by default on loopback")
        let remote = try PostgresEndpoint(url: "postgres://alice@db.example/coffer")
        #expect(remote.sslMode == .verifyFull, "TLS checked by default off loopback")
        let lookalike = try PostgresEndpoint(url: "postgres://alice@127.example.com/coffer")
        #expect(lookalike.sslMode == .verifyFull, "a name that starts like a loopback address is resolved anywhere")
        let v6 = try PostgresEndpoint(url: "postgres://alice@[::1]:5433/coffer")
        #expect(v6.host == "::1" && v6.port == 5433 && v6.sslMode == .disable)
        #expect(v6.engine == "PostgreSQL at [::1]:5433/coffer")
    }

    /// A password in the URL is refused without being repeated, and the message says where passwords go.
    @Test(arguments: ["postgres://coffer:s3cret@127.0.0.1/coffer", "postgres://coffer@127.0.0.1/coffer?password=s3cret"])
    func refusesAPasswordInTheURL(url: String) {
        let error = #expect(throws: CofferRegistryError.self) { try PostgresEndpoint(url: url) }
        #expect(error?.description.contains("PGPASSWORD") == true)
        #expect(error?.description.contains("PGPASSFILE") == true)
        #expect(error?.description.contains("s3cret") == false)
        #expect(error?.description.contains("\n") == false)
    }

    @Test(
        arguments: [
            ("mysql://a@h/d", "it must start with postgres:// (postgres://USER@HOST:PORT/DB)"),
            ("postgres://h/d", "it names no user (postgres://USER@HOST:PORT/DB)"),
            ("postgres://a@:5432/d", "it names no host (postgres://USER@HOST:PORT/DB)"),
            ("postgres://a@h:99999/d", "the port must be a number from 1 to 65535"),
            ("postgres://a@h/d?sslmode=prefer", "sslmode must be disable, require or verify-full (got prefer)"),
            ("postgres://a@h/d?sslmode=require&sslrootcert=/ca.pem", "sslrootcert is only read with sslmode=verify-full"),
            ("postgres://a@h/d?application=x", "unknown parameter application (Coffer reads sslmode and sslrootcert)"),
            ("postgres://a@h1,h2/d", "several hosts are not supported: name one"),
        ]
    )
    func refusesMalformedURLs(url: String, message: String) {
        #expect(throws: CofferRegistryError.invalidInput("invalid PostgreSQL URL: \(message)")) { try PostgresEndpoint(url: url) }
    }

    @Test func passwordComesFromPGPASSWORDFirst() throws {
        let endpoint = PostgresEndpoint(host: "127.0.0.1", port: 5432, user: "coffer", database: "coffer")
        #expect(try endpoint.password(environment: ["PGPASSWORD": "from-env", "PGPASSFILE": "/nonexistent"]) == "from-env")
        #expect(try endpoint.password(environment: ["PGPASSFILE": "/nonexistent/pgpass"]) == nil, "no file: no password")
        #expect(try endpoint.password(environment: [:]) == nil)
    }

    /// libpq's matching: first matching line wins, `*` matches anything, `\:` and `\\` are escapes, comments skipped.
    @Test func passwordFileFollowsLibpqMatching() throws {
        let file = PostgresPassfile(
            text: """
                # a comment line: skipped
                db.example:5432:coffer:coffer:first
                127.0.0.1:5432:other:coffer:wrong-database
                127.0.0.1:5432:*:coffer:pass\\:with\\\\escapes:and-colon
                *:*:*:*:fallback
                short:line
                """
        )
        #expect(file.password(host: "db.example", port: 5432, database: "coffer", user: "coffer") == "first")
        #expect(file.password(host: "127.0.0.1", port: 5432, database: "coffer", user: "coffer") == "pass:with\\escapes:and-colon")
        #expect(file.password(host: "127.0.0.1", port: 5432, database: "other", user: "coffer") == "wrong-database")
        #expect(file.password(host: "localhost", port: 5432, database: "coffer", user: "coffer") == "fallback", "host names are compared as written")
        #expect(file.password(host: "db.example", port: 5433, database: "coffer", user: "coffer") == "fallback")
    }

    /// A password file the group or others can read is refused, as libpq refuses it, in one line naming the fix.
    @Test func passwordFileWithLoosePermissionsIsRefused() throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("coffer-pgpass-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let path = directory.appendingPathComponent("pgpass").path
        try Data("127.0.0.1:5432:*:coffer:secret\n".utf8).write(to: URL(fileURLWithPath: path))
        let endpoint = PostgresEndpoint(host: "127.0.0.1", port: 5432, user: "coffer", database: "coffer")

        try FileManager.default.setAttributes([.posixPermissions: 0o600], ofItemAtPath: path)
        #expect(try endpoint.password(environment: ["PGPASSFILE": path]) == "secret")

        try FileManager.default.setAttributes([.posixPermissions: 0o644], ofItemAtPath: path)
        #expect(
            throws: CofferRegistryError.unavailable(
                engine: "PostgreSQL at 127.0.0.1:5432/coffer",
                reason: "password file \(path) has group or world access; permissions should be u=rw (0600) or less (chmod 600 \(path))"
            )
        ) { try endpoint.password(environment: ["PGPASSFILE": path]) }

        #expect(
            throws: CofferRegistryError.unavailable(
                engine: "PostgreSQL at 127.0.0.1:5432/coffer",
                reason: "password file \(directory.path) is not a plain file"
            )
        ) {
            try endpoint.password(environment: ["PGPASSFILE": directory.path])
        }
        // HOME/.pgpass when PGPASSFILE is not set.
        let home = directory.appendingPathComponent("home")
        try FileManager.default.createDirectory(at: home, withIntermediateDirectories: true)
        try Data("*:*:*:coffer:from-home\n".utf8).write(to: home.appendingPathComponent(".pgpass"))
        try FileManager.default.setAttributes([.posixPermissions: 0o600], ofItemAtPath: home.appendingPathComponent(".pgpass").path)
        #expect(try endpoint.password(environment: ["HOME": home.path]) == "from-home")
    }

    /// Migration files are cut into statements at semicolons outside quotes, dollar quotes and comments.
    @Test func sqlScriptsSplitIntoStatements() {
        let script = """
            -- a comment; with a semicolon
            CREATE TABLE a (x TEXT DEFAULT 'a;b', "odd;name" INT); /* block; comment */
            CREATE FUNCTION f() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                RAISE EXCEPTION 'x; y';
            END;
            $$;
            SELECT $tag$ ; $$ ; $tag$, 'it''s; fine', $1;
            -- trailing comment only
            """
        let statements = SQLScript.statements(script)
        #expect(statements.count == 3)
        #expect(statements[0].hasSuffix("\"odd;name\" INT)"))
        #expect(statements[1].hasPrefix("/* block; comment */\nCREATE FUNCTION f()"))
        #expect(statements[1].hasSuffix("END;\n$$"))
        #expect(statements[2] == "SELECT $tag$ ; $$ ; $tag$, 'it''s; fine', $1")
        for migration in EmbeddedSchema.postgresMigrations {
            #expect(!SQLScript.statements(migration.sql).isEmpty, "\(migration.name)")
        }
    }
}
