import CofferCrypto
import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// Which stores a registry uses (docs/FORMAT.md, "The home directory"): `backends.json` in the home directory, absent
/// for an embedded registry (SQLite and a blob directory). Never holds a credential.
public struct Backends: Codable, Sendable, Equatable {
    /// `sqlite`, or a PostgreSQL URL `postgres://USER@HOST:PORT/DB?sslmode=...`.
    public var metadata: String
    /// `directory`, or an OCI registry URL `oci://HOST:PORT/REPOSITORY` (`oci+http://` for plain HTTP).
    public var blobs: String

    public static let embedded = Backends(metadata: "sqlite", blobs: "directory")
    static let fileName = "backends.json"
    static let format = "coffer-backends-v1"

    public init(metadata: String = "sqlite", blobs: String = "directory") {
        self.metadata = metadata
        self.blobs = blobs
    }

    enum CodingKeys: String, CodingKey { case format, metadata, blobs }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        guard try c.decode(String.self, forKey: .format) == Self.format else {
            throw CofferRegistryError.invalidInput("\(Self.fileName) is not \(Self.format)")
        }
        metadata = try c.decode(String.self, forKey: .metadata)
        blobs = try c.decode(String.self, forKey: .blobs)
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(Self.format, forKey: .format)
        try c.encode(metadata, forKey: .metadata)
        try c.encode(blobs, forKey: .blobs)
    }

    public var isEmbedded: Bool { metadata == "sqlite" && blobsInHome }

    /// Whether the sealed blobs are in the registry's own directory (`blobs/sha256`), not in an OCI registry.
    var blobsInHome: Bool { blobs == "directory" }

    /// Refuses what names no store this build knows, and anything that looks like a credential.
    public func validate() throws(CofferRegistryError) {
        for url in [metadata, blobs] where URLComponents(string: url)?.password != nil {
            // user:password@ in a URL: passwords come from PGPASSWORD/PGPASSFILE or the containers auth file.
            let scheme = url.split(separator: ":")[0]
            throw .invalidInput(
                "a password in the \(scheme) URL is refused: it would be stored in \(Self.fileName) (see docs/FORMAT.md for where passwords go)"
            )
        }
        guard metadata == "sqlite" || metadata.hasPrefix("postgres://") || metadata.hasPrefix("postgresql://") else {
            throw .invalidInput("--metadata must be sqlite or a postgres:// URL, not \(metadata)")
        }
        guard blobs == "directory" || blobs.hasPrefix("oci://") || blobs.hasPrefix("oci+http://") else {
            throw .invalidInput("--blobs must be directory or an oci:// (or oci+http://) URL, not \(blobs)")
        }
    }

    /// The backends of the registry at `home`: its `backends.json`, else embedded when `registry.sqlite` is there.
    static func of(home: String) throws(CofferRegistryError) -> Backends {
        let file = "\(home)/\(fileName)"
        if access(file, F_OK) == 0 {
            let bytes: [UInt8]
            do { bytes = try FileBytes.read(file) } catch { throw .crypto(error) }
            do {
                let backends = try JSONDecoder().decode(Backends.self, from: Data(bytes))
                try backends.validate()
                return backends
            } catch let error as CofferRegistryError {
                throw error
            } catch {
                throw .invalidInput("\(file) is not valid: \(error)")
            }
        }
        guard access("\(home)/\(Registry.databaseName)", F_OK) == 0 else { throw .notARegistry(home) }
        return .embedded
    }

    /// Writes `backends.json` (mode 0600) atomically: its presence makes the directory a scale-out registry.
    func write(home: String) throws(CofferRegistryError) {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .prettyPrinted, .withoutEscapingSlashes]
        do {
            try FileBytes.write(Array(try encoder.encode(self)) + [0x0A], to: "\(home)/\(Self.fileName)", mode: 0o600)
        } catch let error as CofferCryptoError {
            throw .crypto(error)
        } catch {
            throw .invalidInput("cannot write \(Self.fileName): \(error)")
        }
        Directories.sync(home)
    }

    /// `environment` is where credentials are looked up (`PGPASSFILE`, `REGISTRY_AUTH_FILE`...): the process's when nil.
    func openMetadata(
        home: String,
        busyTimeout: Double,
        sqlite connections: SQLiteConnections = .pool,
        environment: [String: String]? = nil
    ) async throws(CofferRegistryError) -> any MetadataStore {
        if metadata == "sqlite" {
            return try SQLiteMetadataStore(path: "\(home)/\(Registry.databaseName)", busyTimeout: busyTimeout, connections: connections)
        }
        return try await PostgresMetadataStore.open(url: metadata, home: home, environment: environment)
    }

    func openBlobs(home: String, environment: [String: String]? = nil) async throws(CofferRegistryError) -> any BlobStore {
        if blobsInHome { return DirectoryBlobStore(root: home) }
        // Sealed files are written in the home's tmp/ before they are uploaded, as the directory store writes them.
        try Directories.make("\(home)/tmp")
        return try OCIBlobStore(url: blobs, temporaryDirectory: "\(home)/tmp", environment: environment ?? ProcessInfo.processInfo.environment)
    }
}
