import Foundation

/// Where the registries a test makes keep their metadata and blobs in this test run.
///
/// tools/test runs the registry, CLI, client and server suites twice: first on the embedded backends (SQLite and a
/// blob directory), then on PostgreSQL and an OCI registry it started, named by `COFFER_TEST_METADATA_URL` (a server,
/// `postgres://USER@HOST:PORT`, the password in `PGPASSFILE`) and `COFFER_TEST_BLOBS_URL` (`oci+http://HOST:PORT`,
/// its storage at `COFFER_TEST_BLOBS_STORAGE`). On those, each registry a test makes gets a database and a repository
/// of its own (`coffer init` creates a missing database).
public enum TestBackends {
    private static var environment: [String: String] { ProcessInfo.processInfo.environment }

    /// The `--metadata` of a new registry: `sqlite`, or the URL of a database no other registry uses.
    public static func newMetadata() -> String {
        guard let server = environment["COFFER_TEST_METADATA_URL"] else { return "sqlite" }
        return "\(server)/t_\(unique(20))"
    }

    /// The `--blobs` of a new registry: `directory`, or a repository no other registry uses.
    public static func newBlobs() -> String {
        guard let registry = environment["COFFER_TEST_BLOBS_URL"] else { return "directory" }
        return "\(registry)/test/\(unique(13))"
    }

    /// Whether this run's registries keep their metadata in SQLite (`registry.sqlite` in the home directory).
    public static var metadataInSQLite: Bool { environment["COFFER_TEST_METADATA_URL"] == nil }

    /// Whether this run's registries keep their blobs in a directory (`blobs/` in the home directory).
    public static var blobsInDirectory: Bool { environment["COFFER_TEST_BLOBS_URL"] == nil }

    /// `coffer` arguments with this run's backends added to an `init` that chooses none.
    public static func initArguments(_ arguments: [String]) -> [String] {
        guard arguments.first == "init" else { return arguments }
        var arguments = arguments
        if !arguments.contains("--metadata"), case let metadata = newMetadata(), metadata != "sqlite" { arguments += ["--metadata", metadata] }
        if !arguments.contains("--blobs"), case let blobs = newBlobs(), blobs != "directory" { arguments += ["--blobs", blobs] }
        return arguments
    }

    /// The file holding blob `digest`'s bytes, what someone with the blob store's files would edit: in the registry's
    /// blob directory, or in the OCI registry's storage (docker-registry's data file, shared by every repository).
    public static func blobFile(_ digest: String, home: String) -> String {
        guard let storage = environment["COFFER_TEST_BLOBS_STORAGE"] else { return "\(home)/blobs/sha256/\(digest.prefix(2))/\(digest)" }
        return "\(storage)/docker/registry/v2/blobs/sha256/\(digest.prefix(2))/\(digest)/data"
    }

    private static func unique(_ length: Int) -> String {
        String(UUID().uuidString.replacingOccurrences(of: "-", with: "").lowercased().prefix(length))
    }
}
