import CofferCrypto
import CofferTestSupport
import Foundation
import PostgresNIO
import Synchronization
import Testing

@testable import CofferRegistry

/// PostgreSQL for tests: one real cluster per test process (tools/lib/postgres.sh: initdb in a temporary directory,
/// run as an unprivileged user, scram-sha-256, TLS), started on first use, stopped when the process exits (and by a
/// watchdog if it is killed); a fresh database per test, so tests running in parallel never share state.
///
/// ```swift
/// let test = try await PostgresTestSupport.database()            // migrated to the latest schema
/// try await test.withDatabase { database in ... }                // a pool on it, shut down afterwards
/// ```
///
/// When PostgreSQL's binaries are missing, its suites are skipped with ``skipReason`` and the registry tests run on
/// SQLite alone (``MetadataBackend/available``), unless `COFFER_REQUIRE_POSTGRES=1` (tools/test, which installs them):
/// then every test needing PostgreSQL fails with one line saying how to install it. `COFFER_PG_BINDIR` points at other
/// binaries than Debian's `/usr/lib/postgresql/N/bin`.
enum PostgresTestSupport {
    /// Whether this machine can run the PostgreSQL tests: the server's binaries are there (`COFFER_PG_BINDIR`, else
    /// Debian's `/usr/lib/postgresql/N/bin`), or `COFFER_REQUIRE_POSTGRES=1` says they must be (tools/test sets it,
    /// so a CI machine without them fails with ``skipReason`` instead of skipping).
    static let isAvailable: Bool = {
        let environment = ProcessInfo.processInfo.environment
        if environment["COFFER_REQUIRE_POSTGRES"] == "1" { return true }
        if let bindir = environment["COFFER_PG_BINDIR"] { return FileManager.default.isExecutableFile(atPath: "\(bindir)/initdb") }
        let versions = (try? FileManager.default.contentsOfDirectory(atPath: "/usr/lib/postgresql")) ?? []
        return versions.contains { FileManager.default.isExecutableFile(atPath: "/usr/lib/postgresql/\($0)/bin/initdb") }
    }()

    /// Why PostgreSQL tests are skipped where ``isAvailable`` is false.
    static let skipReason: Comment =
        "PostgreSQL server binaries not found (apt-get install postgresql, or set COFFER_PG_BINDIR): PostgreSQL tests skipped; tools/test installs them and sets COFFER_REQUIRE_POSTGRES=1"

    /// A running cluster: where it is and how to log in.
    struct Cluster: Sendable {
        let root: String
        let port: Int
        let password: String
        let passfile: String
        let dataDirectory: String
        let caCertificate: String?
        /// Seconds `tools/lib/postgres.sh start` took.
        let startSeconds: Double

        /// The role `coffer` on database `database`, over plain TCP.
        func endpoint(_ database: String = "postgres", sslMode: PostgresEndpoint.SSLMode = .disable) -> PostgresEndpoint {
            PostgresEndpoint(
                host: "127.0.0.1",
                port: port,
                user: "coffer",
                database: database,
                sslMode: sslMode,
                sslRootCertificate: sslMode == .verifyFull ? caCertificate : nil
            )
        }
    }

    /// A test's own database.
    struct TestDatabase: Sendable {
        let name: String
        let cluster: Cluster
        var endpoint: PostgresEndpoint { cluster.endpoint(name) }
        var password: String { cluster.password }

        /// A pool on this database, running while `body` runs.
        func withDatabase<Result: Sendable>(
            options: PostgresPool.Options = testOptions,
            _ body: (PostgresPool) async throws -> Result
        ) async throws -> Result {
            try await PostgresPool.withDatabase(endpoint, password: password, options: options, body)
        }
    }

    /// Small pools: many tests run at once against one cluster.
    static let testOptions: PostgresPool.Options = {
        var options = PostgresPool.Options()
        options.maximumConnections = 4
        return options
    }()

    struct Failure: Error, CustomStringConvertible {
        let description: String
    }

    static let repositoryRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().path
    static let script = "\(repositoryRoot)/tools/lib/postgres.sh"

    /// Clusters started by this process, stopped at exit.
    private static let started = Mutex<[String]>([])

    /// The cluster with TLS (a self-signed CA at `caCertificate`); most tests use it over plain TCP.
    static var cluster: Cluster { get throws { try sharedCluster.get() } }
    private static let sharedCluster: Result<Cluster, Failure> = start(tls: true)

    /// A second cluster without TLS, for what a server without TLS answers; started only if a test asks.
    static var plainCluster: Cluster { get throws { try sharedPlainCluster.get() } }
    private static let sharedPlainCluster: Result<Cluster, Failure> = start(tls: false)

    /// A cluster of the calling test's own (stopped when the process exits), for what would disturb other tests: a
    /// restart.
    static func privateCluster() throws -> Cluster { try start(tls: false).get() }

    /// Restarts `cluster`'s server with a fast shutdown (every session cut), returning once it accepts connections.
    static func restart(_ cluster: Cluster) throws {
        let (status, output) = run("/bin/bash", [script, "restart", cluster.root])
        guard status == 0 else { throw Failure(description: "could not restart the PostgreSQL test cluster: \(output)") }
    }

    /// Starts a cluster (swift_once makes each `static let` above start exactly one, however many tests ask at once).
    private static func start(tls: Bool) -> Result<Cluster, Failure> {
        let root = FileManager.default.temporaryDirectory.appendingPathComponent("coffer-pg-\(UUID().uuidString.prefix(8))").path
        var arguments = [script, "start", root, "--watch", String(getpid())]
        if tls { arguments.append("--tls") }
        let began = Date()
        let (status, output) = run("/bin/bash", arguments)
        let seconds = Date().timeIntervalSince(began)
        guard status == 0 else {
            let line = output.split(separator: "\n").last.map(String.init) ?? "exit status \(status)"
            if line.contains("binaries not found") {
                return .failure(
                    Failure(
                        description:
                            "PostgreSQL is not installed: run tools/lib/postgres.sh install as root (tools/test does), or apt-get install postgresql"
                    )
                )
            }
            return .failure(Failure(description: "could not start a PostgreSQL test cluster: \(line)"))
        }
        registerStop(root)
        guard let text = try? String(contentsOfFile: "\(root)/env", encoding: .utf8) else {
            return .failure(Failure(description: "the PostgreSQL test cluster wrote no \(root)/env"))
        }
        var values: [String: String] = [:]
        for line in text.split(separator: "\n") {
            let parts = line.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            if parts.count == 2 { values[String(parts[0])] = String(parts[1]) }
        }
        guard let port = values["COFFER_PG_PORT"].flatMap(Int.init), let passfile = values["PGPASSFILE"],
            let data = values["COFFER_PG_DATA"],
            let password = try? PostgresEndpoint(host: "127.0.0.1", port: port, user: "coffer", database: "postgres")
                .password(environment: ["PGPASSFILE": passfile])
        else {
            return .failure(Failure(description: "the PostgreSQL test cluster's env file is incomplete: \(text)"))
        }
        let ca = values["COFFER_PG_CA"].flatMap { $0.isEmpty ? nil : $0 }
        return .success(
            Cluster(root: root, port: port, password: password, passfile: passfile, dataDirectory: data, caCertificate: ca, startSeconds: seconds)
        )
    }

    private static func registerStop(_ root: String) {
        let first = started.withLock { roots in
            roots.append(root)
            return roots.count == 1
        }
        if first {
            atexit {
                for root in PostgresTestSupport.started.withLock({ $0 }) {
                    _ = PostgresTestSupport.run("/bin/bash", [PostgresTestSupport.script, "stop", root])
                }
            }
        }
    }

    /// Runs a program to its end (``ProgramRun``); its exit status and standard output and error together.
    @discardableResult
    static func run(_ executable: String, _ arguments: [String]) -> (Int32, String) {
        do {
            let output = try ProgramRun.run(executable, arguments, mergingStandardError: true)
            return (output.status, output.stdoutText)
        } catch {
            return (-1, error.localizedDescription)
        }
    }

    // MARK: - Databases

    /// A new, empty database (no schema) with a unique name.
    static func emptyDatabase() async throws -> TestDatabase {
        let cluster = try cluster
        let name = "t_\(UUID().uuidString.replacingOccurrences(of: "-", with: "").lowercased().prefix(20))"
        _ = try await admin(cluster) { connection in
            try await connection.query(PostgresQuery(unsafeSQL: "CREATE DATABASE \(name)"), logger: connection.logger)
        }
        return TestDatabase(name: name, cluster: cluster)
    }

    /// A new database at the latest schema: a copy of a template migrated once per process by PostgresMigrator.
    static func database() async throws -> TestDatabase {
        let cluster = try cluster
        let template = try await Template.shared.name()
        let name = "t_\(UUID().uuidString.replacingOccurrences(of: "-", with: "").lowercased().prefix(20))"
        _ = try await admin(cluster) { connection in
            try await connection.query(PostgresQuery(unsafeSQL: "CREATE DATABASE \(name) TEMPLATE \(template)"), logger: connection.logger)
        }
        return TestDatabase(name: name, cluster: cluster)
    }

    /// Runs `body` on one connection to the cluster's `postgres` database as the role `coffer`.
    static func admin<Result: Sendable>(_ cluster: Cluster, _ body: (PostgresConnection) async throws -> Result) async throws -> Result {
        let database = try PostgresPool(endpoint: cluster.endpoint(), password: cluster.password)
        let connection = try await database.openConnection()
        do {
            let result = try await body(connection)
            try? await connection.close()
            return result
        } catch {
            try? await connection.close()
            throw error
        }
    }

    /// A new database for a registry (``RegistryFixture``): migrated, and its password found the way a registry looks
    /// it up (this process's PGPASSFILE names the cluster's pgpass file; the registry's URL holds no password).
    static func registryDatabase() async throws -> TestDatabase {
        let cluster = try cluster
        try passfileExported.withLock { exported in
            defer { exported = true }
            guard !exported else { return }
            // A password file the run already names (tools/test's cluster, which other tests' `coffer` children log
            // into) stays in force: the cluster's lines are added to a copy of it.
            var passfile = cluster.passfile
            if let given = ProcessInfo.processInfo.environment["PGPASSFILE"], let lines = FileManager.default.contents(atPath: given) {
                passfile = "\(cluster.root)/pgpass-and-\(URL(fileURLWithPath: given).lastPathComponent)"
                let both = lines + Data("\n".utf8) + (FileManager.default.contents(atPath: cluster.passfile) ?? Data())
                guard FileManager.default.createFile(atPath: passfile, contents: both, attributes: [.posixPermissions: 0o600]) else {
                    throw CocoaError(.fileWriteUnknown)
                }
            }
            setenv("PGPASSFILE", passfile, 1)
        }
        return try await database()
    }

    private static let passfileExported = Mutex(false)

    /// The migrated template, made once.
    private actor Template {
        static let shared = Template()
        private var made: Task<String, any Error>?

        func name() async throws -> String {
            if let made { return try await made.value }
            let task = Task<String, any Error> {
                let cluster = try PostgresTestSupport.cluster
                let name = "coffer_template"
                _ = try await PostgresTestSupport.admin(cluster) { connection in
                    try await connection.query(PostgresQuery(unsafeSQL: "CREATE DATABASE \(name)"), logger: connection.logger)
                }
                _ = try await PostgresPool.withDatabase(cluster.endpoint(name), password: cluster.password) { database in
                    try await PostgresMigrator.migrate(database)
                }
                return name
            }
            made = task
            return try await task.value
        }
    }
}

/// The rows of a query as one value each (tests' short-hand).
extension PostgresPool {
    func scalar<T: PostgresDecodable & Sendable>(_ type: T.Type, _ query: PostgresQuery) async throws -> T? {
        try await self.query(query).first.map { try $0.decode(T.self) }
    }
}
