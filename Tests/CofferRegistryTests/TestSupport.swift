import CofferCrypto
import Foundation
import GRDB
import PostgresNIO
import Testing

@testable import CofferRegistry

/// Where a fixture's registry keeps its metadata: the registry behaviour tests run on each
/// (`@Test(arguments: MetadataBackend.available)`).
enum MetadataBackend: String, Sendable, CaseIterable, CustomTestStringConvertible {
    /// `registry.sqlite` in the home directory.
    case sqlite
    /// A fresh database of its own in the PostgreSQL cluster this test process runs (``PostgresTestSupport``).
    case postgres

    var testDescription: String { rawValue }

    /// Where a fixture that names no backend keeps its metadata: SQLite, or PostgreSQL in the pass of tools/test that
    /// sets `COFFER_TEST_METADATA=postgres` (a test of what only SQLite has asks for `.sqlite` by name).
    static var ofThisRun: MetadataBackend { ProcessInfo.processInfo.environment["COFFER_TEST_METADATA"] == "postgres" ? .postgres : .sqlite }

    /// The backends this machine can run: PostgreSQL only where ``PostgresTestSupport/isAvailable`` (its skip is said
    /// once on standard error).
    static let available: [MetadataBackend] = {
        guard PostgresTestSupport.isAvailable else {
            FileHandle.standardError.write(Data("note: \(PostgresTestSupport.skipReason.rawValue)\n".utf8))
            return [.sqlite]
        }
        return allCases
    }()
}

/// A temporary registry and a workspace beside it, removed when the test ends.
///
/// Its backends are the embedded ones, unless the test run asks for others: with `COFFER_TEST_BLOBS=oci` (tools/test's
/// second pass of the registry suites) every fixture keeps its blobs in a repository of its own on the test
/// docker-registry, and the helpers below that reach into the blob store's files reach into that registry's storage.
final class RegistryFixture {
    let root: URL
    let registry: Registry
    /// The PostgreSQL database of a registry made with ``init(_:)`` on `.postgres`.
    let postgres: PostgresTestSupport.TestDatabase?
    var home: String { root.appendingPathComponent("home").path }
    /// The OCI registry and repository holding the blobs, when they are not in `home/blobs`.
    let oci: (instance: OCITestRegistry.Instance, repository: String)?

    /// Whether this test run puts the fixtures' blobs in an OCI registry.
    static var blobsInOCI: Bool { ProcessInfo.processInfo.environment["COFFER_TEST_BLOBS"] == "oci" }

    /// A registry on this run's backends (``MetadataBackend/ofThisRun``, blobs as the run keeps them).
    convenience init() async throws { try await self.init(.ofThisRun) }

    /// A registry whose metadata is on `backend` (blobs as the run keeps them); on `.postgres`, in a new database.
    convenience init(_ backend: MetadataBackend) async throws {
        guard backend == .postgres else {
            try await self.init(metadata: "sqlite")
            return
        }
        let database = try await PostgresTestSupport.registryDatabase()
        try await self.init(metadata: database.endpoint.url, postgres: database)
    }

    /// A registry on `backends` (default: the run's, see above), its metadata at `metadata` when given.
    init(backends given: Backends? = nil, metadata: String? = nil, postgres: PostgresTestSupport.TestDatabase? = nil) async throws {
        self.postgres = postgres
        root = FileManager.default.temporaryDirectory.appendingPathComponent("coffer-registry-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: root, withIntermediateDirectories: true)
        var backends = given ?? .embedded
        if let metadata { backends.metadata = metadata }
        if given == nil, Self.blobsInOCI {
            let instance = try OCITestRegistry.plain.get()
            let repository = "fixture/\(UUID().uuidString.lowercased().prefix(13))"
            oci = (instance, repository)
            backends.blobs = instance.url(repository)
        } else if let given, given.blobs != "directory", let instance = try? OCITestRegistry.plain.get(),
            given.blobs.contains(instance.address)
        {
            oci = (instance, String(given.blobs.split(separator: "/", maxSplits: 3).last ?? ""))
        } else {
            oci = nil
        }
        let secret = passphrase("registry passphrase")
        registry = try await Registry.create(
            at: root.appendingPathComponent("home").path,
            passphrase: secret,
            kdf: KDFParameters(opsLimit: 1, memLimit: 8192),
            backends: backends,
            memory: ClientMemory(directory: root.appendingPathComponent("client-state").path)
        )
    }

    deinit { try? FileManager.default.removeItem(at: root) }

    func path(_ relative: String) -> String { root.appendingPathComponent(relative).path }

    /// What this fixture's client remembers (its pins and verified states), beside the registry, never shared.
    var memory: ClientMemory { ClientMemory(directory: root.appendingPathComponent("client-state").path) }

    /// The registry opened again, as another command of the same user would.
    func reopen(busyTimeout: Double = 5) async throws -> Registry { try await Registry(at: home, busyTimeout: busyTimeout, memory: memory) }

    /// Writes `files` (relative path to bytes) under `directory` and returns the directory's path.
    @discardableResult
    func makeModel(_ directory: String, _ files: [String: [UInt8]]) throws -> String {
        for (relative, bytes) in files {
            let url = root.appendingPathComponent(directory).appendingPathComponent(relative)
            try FileManager.default.createDirectory(at: url.deletingLastPathComponent(), withIntermediateDirectories: true)
            try Data(bytes).write(to: url)
        }
        return path(directory)
    }

    /// Where blob `digest` is on disk: what someone with the blob store's files would edit (docker-registry's data
    /// file for an OCI store, shared by every repository holding that blob).
    func blobPath(_ digest: String) -> String {
        guard let oci else { return "\(home)/blobs/sha256/\(digest.prefix(2))/\(digest)" }
        return "\(oci.instance.storage)/docker/registry/v2/blobs/sha256/\(digest.prefix(2))/\(digest)/data"
    }

    /// Whether the store holds blob `digest` (in an OCI repository: whether the repository links it).
    func blobExists(_ digest: String) -> Bool {
        guard let oci else { return FileManager.default.fileExists(atPath: blobPath(digest)) }
        return FileManager.default.fileExists(atPath: "\(layers(of: oci))/\(digest)/link")
    }

    /// Every sealed blob in the store (an OCI repository also holds manifests' configs and signed documents: not these).
    func blobDigests() -> [String] {
        guard let oci else {
            let base = "\(home)/blobs/sha256"
            return ((try? FileManager.default.subpathsOfDirectory(atPath: base)) ?? []).filter { $0.count > 64 }.map { String($0.suffix(64)) }
        }
        let sealedMagic = Data([0x89, 0x43, 0x46, 0x53, 0x0D, 0x0A, 0x1A, 0x0A])
        return ((try? FileManager.default.contentsOfDirectory(atPath: layers(of: oci))) ?? []).filter { digest in
            guard blobExists(digest), let file = FileHandle(forReadingAtPath: blobPath(digest)) else { return false }
            defer { try? file.close() }
            return (try? file.read(upToCount: 8)) == sealedMagic
        }
    }

    private func layers(of oci: (instance: OCITestRegistry.Instance, repository: String)) -> String {
        "\(oci.instance.storage)/docker/registry/v2/repositories/\(oci.repository)/_layers/sha256"
    }

    /// The registry's database file, opened directly (as anyone with the file could).
    func sqlite() throws -> DatabaseQueue { try DatabaseQueue(path: "\(home)/registry.sqlite") }

    /// Runs SQL on the registry's database as someone who can write it would: every protective trigger dropped first.
    func attack(_ statements: String, _ arguments: StatementArguments = []) async throws {
        let db = try DatabaseQueue(path: "\(home)/registry.sqlite")
        try await db.write { db in
            let triggers = try String.fetchAll(db, sql: "SELECT name FROM sqlite_master WHERE type = 'trigger'")
            for trigger in triggers { try db.execute(sql: "DROP TRIGGER \(trigger)") }
            try db.execute(sql: statements, arguments: arguments)
        }
    }

    /// Runs SQL on a `.postgres` fixture's database as its owner could behind the registry's back: the tables' own
    /// triggers disabled for the statements and enabled again afterwards (so the damage is all that is left).
    func attackPostgres(_ statements: String) async throws {
        guard let postgres else { throw PostgresTestSupport.Failure(description: "attackPostgres on a registry without PostgreSQL") }
        try await postgres.withDatabase { database in
            try await database.transaction { connection in
                let tables = try await connection.rows("SELECT DISTINCT tgrelid::regclass::text FROM pg_trigger WHERE NOT tgisinternal")
                    .map { try $0.decode(String.self) }
                for table in tables { try await connection.rows(PostgresQuery(unsafeSQL: "ALTER TABLE \(table) DISABLE TRIGGER USER")) }
                for statement in statements.split(separator: ";") where !statement.allSatisfy(\.isWhitespace) {
                    try await connection.rows(PostgresQuery(unsafeSQL: String(statement)))
                }
                for table in tables { try await connection.rows(PostgresQuery(unsafeSQL: "ALTER TABLE \(table) ENABLE TRIGGER USER")) }
            }
        }
    }

    /// Changes the registry's metadata behind its back, whatever holds it: SQLite's file (triggers dropped), or
    /// PostgreSQL's rows (triggers disabled meanwhile).
    func tamper(_ statements: String) async throws {
        if postgres != nil { try await attackPostgres(statements) } else { try await attack(statements) }
    }

    func read(_ relative: String) throws -> [UInt8] { Array(try Data(contentsOf: root.appendingPathComponent(relative))) }
    func exists(_ relative: String) -> Bool { FileManager.default.fileExists(atPath: path(relative)) }
}

/// What `body` threw, as its one-line message; "no error" when it threw nothing.
func refusal(_ body: () async throws -> Void) async -> String {
    do {
        try await body()
        return "no error"
    } catch {
        return "\(error)"
    }
}

func passphrase(_ text: String) -> SecureBytes {
    let bytes = Array(text.utf8)
    let secret = SecureBytes(count: bytes.count)
    secret.withUnsafeMutableBytes { $0.copyBytes(from: bytes) }
    return secret
}

func bytes(_ count: Int, seed: UInt8 = 1) -> [UInt8] { (0..<count).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ Int(seed)) } }

/// A new identity, unlocked: what a person acting on the registry holds.
func person(_ name: String) throws -> UnlockedIdentity { UnlockedIdentity(try Identity.generate(name: name)) }

extension RegistryFixture {
    /// The registry's own key, unlocked (its passphrase is the fixture's).
    var registryKey: UnlockedIdentity {
        get throws {
            let file = Array(try Data(contentsOf: URL(fileURLWithPath: "\(home)/registry.key")))
            return UnlockedIdentity(try Identity.decrypt(keyFile: file, passphrase: passphrase("registry passphrase")))
        }
    }

    /// The registry's key signing in its own name: how a registry without principals records changes.
    var registrySigner: Signer { get throws { Signer(try registryKey) } }
}

/// Expects `body` to throw an error whose message contains `fragment`; the body stays outside the macro so the compiler checks its `await`s.
func expectRefusal(_ fragment: String, sourceLocation: SourceLocation = #_sourceLocation, _ body: () async throws -> Void) async {
    let message = await refusal(body)
    #expect(message.contains(fragment), "\(message)", sourceLocation: sourceLocation)
}
