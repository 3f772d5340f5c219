public import CofferCrypto

/// What `push` stores: files or a model directory, with their privacy metadata and lineage.
public struct PushRequest: Sendable {
    public var model: String
    /// `nil` for the next integer version.
    public var version: String?
    /// Files (stored under their base names) or directories (stored with paths relative to the directory).
    public var paths: [String]
    /// Files that exist only in memory (a model a process made and must not write to disk in plaintext), stored under
    /// their `path`, as if pushed from a directory holding them.
    public var contents: [Content] = []
    public var privacy = PrivacyMetadata()
    public var alias: String?
    public var tags: [String: String] = [:]
    public var parent: ModelReference?
    public var datasetID: String?
    public var datasetDigest: String?
    public var trainingConfigDigest: String?
    /// Identities that receive the version's data key besides the registry and the publisher.
    public var recipients: [PublicIdentity] = []
    public var message: String?
    /// Push past the dataset's privacy budget (an admin's act, audited).
    public var overrideBudget = false
    public var chunkSize = SealedFile.defaultChunkSize

    public init(model: String, version: String? = nil, paths: [String]) {
        self.model = model
        self.version = version
        self.paths = paths
    }

    public init(model: String, version: String? = nil, contents: [Content]) {
        self.init(model: model, version: version, paths: [])
        self.contents = contents
    }

    /// A file's bytes and the relative path it is stored under.
    public struct Content: Sendable, Equatable {
        public var path: String
        public var bytes: [UInt8]

        public init(path: String, bytes: [UInt8]) {
            self.path = path
            self.bytes = bytes
        }
    }
}

/// What a push committed.
public struct PushResult: Sendable, Equatable {
    public var model: String
    public var version: String
    /// SHA-256 of the signed statement.
    public var digest: String
    public var files: Int
    public var bytes: Int
}
