public import CofferCrypto
public import NIOCore

/// Where a registry keeps its sealed files, by the SHA-256 of their bytes (docs/FORMAT.md, "Blob stores"): a
/// directory (``DirectoryBlobStore``, the embedded default) or an OCI registry. Only ciphertext ever reaches one.
///
/// Sealing always writes to a local temporary file first (``makeTemporary()``), then ``store(_:digest:size:)``
/// makes it the blob. Reads are streams of buffers, or, for a store on local disk, a path the chunk pipeline reads
/// itself (``localPath(of:)``). Nothing here blocks Swift's cooperative pool.
public protocol BlobStore: Sendable {
    /// How errors name the store: `blob directory /srv/registry`, `OCI registry 127.0.0.1:5000/coffer`.
    var name: String { get }

    /// A new local temporary file for a blob being sealed; the caller writes the sealed file into it, then stores it.
    func makeTemporary() throws(CofferRegistryError) -> AtomicOutputFile

    /// Makes the finished temporary file the blob `digest` (its SHA-256, lower-case hex) of `size` bytes, durably;
    /// a blob already there is not sent again. The temporary file is gone afterwards, whatever happened.
    func store(_ file: AtomicOutputFile, digest: String, size: Int) async throws(CofferRegistryError)

    /// The blob's size in bytes, or nil when the store does not hold it.
    func size(of digest: String) async throws(CofferRegistryError) -> Int?

    /// The path of the blob on local disk, for a store that keeps blobs there (nil otherwise): the fastest way to read it.
    func localPath(of digest: String) -> String?

    /// Reads the blob, or bytes `range` of it, as a stream of buffers in order. A whole blob is checked against its
    /// digest as it streams when the store is remote: the stream fails at its end if the bytes were not the blob's.
    func read(_ digest: String, range: Range<Int>?) async throws(CofferRegistryError) -> BlobStream

    /// Deletes a blob (an erasure, a refused push's, an orphan found by `gc`); a blob already gone is not an error.
    func remove(_ digest: String) async throws(CofferRegistryError)

    /// Whether ``digests()`` lists the store's blobs. When it cannot (an OCI registry), a push journals each blob in
    /// the metadata store's `pending_blobs` before sending it, and `gc` reclaims from that journal.
    var listsBlobs: Bool { get }

    /// Every blob the store holds, or nil when it cannot list them.
    func digests() async throws(CofferRegistryError) -> [String]?

    /// Starts a resumable upload (a remote push's blob): its record is kept in the metadata store, so any replica goes on.
    func startUpload() async throws(CofferRegistryError) -> BlobUpload

    /// Appends `bytes` at the upload's offset; returns the upload as it now stands.
    func append(to upload: BlobUpload, _ bytes: BlobStream) async throws(CofferRegistryError) -> BlobUpload

    /// Makes the upload the blob `digest`, refused when its bytes do not hash to it; returns the blob's size.
    func finish(_ upload: BlobUpload, digest: String) async throws(CofferRegistryError) -> Int

    /// Drops an unfinished upload and whatever it holds.
    func abandon(_ upload: BlobUpload) async

    /// Publishes a committed version in the store's own terms (an OCI manifest and its signatures as referrers);
    /// nothing for a directory. Derived data: the metadata store stays the authority.
    func publish(_ version: PublishedVersion) async throws(CofferRegistryError)

    /// What is wrong with `version` as this store publishes it: nil when it is there as ``publish(_:)`` writes it (or
    /// the store publishes nothing), ``PublicationProblem/missing`` when a part is absent (a push stopped between its
    /// commit and its manifest: `gc` publishes it again), ``PublicationProblem/different(_:)`` when something else
    /// stands in its place.
    func publicationProblem(_ version: PublishedVersion) async throws(CofferRegistryError) -> PublicationProblem?
}

/// What ``BlobStore/publicationProblem(_:)`` found.
public enum PublicationProblem: Sendable, Equatable {
    case missing
    case different(String)
}

/// A resumable upload, as the metadata store keeps it between requests (possibly to different replicas).
public struct BlobUpload: Codable, Sendable, Equatable {
    /// Coffer's id for the upload (what clients name in `/v1/uploads/{id}`).
    public var id: String
    /// Where the bytes go on: a temporary file's name, or the OCI registry's upload `Location`.
    public var location: String
    /// Bytes received so far.
    public var offset: Int

    public init(id: String, location: String, offset: Int) {
        self.id = id
        self.location = location
        self.offset = offset
    }
}

/// Bytes of a blob, in order, with their total length when known. Pulled: nothing is read before it is asked for,
/// so a slow reader holds back its source (a file, an HTTP response) instead of filling memory.
public struct BlobStream: AsyncSequence, Sendable {
    public typealias Element = ByteBuffer
    public let length: Int?
    private let buffers: any AsyncSequence<ByteBuffer, any Error> & Sendable

    public init<S: AsyncSequence<ByteBuffer, any Error> & Sendable>(length: Int?, _ buffers: S) {
        self.length = length
        self.buffers = buffers
    }

    /// A stream over a sequence that fails with another error type (a request body's).
    public init<S: AsyncSequence & Sendable>(length: Int?, _ buffers: S) where S.Element == ByteBuffer {
        self.init(length: length, Erased(base: buffers))
    }

    public struct AsyncIterator: AsyncIteratorProtocol {
        var base: any AsyncIteratorProtocol<ByteBuffer, any Error>
        public mutating func next() async throws -> ByteBuffer? { try await base.next() }
    }

    public func makeAsyncIterator() -> AsyncIterator { AsyncIterator(base: buffers.makeAsyncIterator()) }

    private struct Erased<Base: AsyncSequence & Sendable>: AsyncSequence, Sendable where Base.Element == ByteBuffer {
        let base: Base
        struct AsyncIterator: AsyncIteratorProtocol {
            var base: Base.AsyncIterator
            mutating func next() async throws -> ByteBuffer? { try await base.next() }
        }
        func makeAsyncIterator() -> AsyncIterator { AsyncIterator(base: base.makeAsyncIterator()) }
    }
}

/// What a blob store is told of a committed version (``BlobStore/publish(_:)``): enough to describe it in another
/// format without reading anything back.
public struct PublishedVersion: Sendable, Equatable {
    public struct File: Sendable, Equatable {
        public var path: String
        public var size: Int
        public var plaintextSHA256: String
        public var sealedSHA256: String
        public var sealedSize: Int
    }

    public var model: String
    public var version: String
    /// SHA-256 of the signed statement: the version's identity.
    public var digest: String
    public var created: String
    public var publisherKeyID: String
    public var files: [File]
    /// The DSSE envelope of the statement, as stored (JSON).
    public var envelope: [UInt8]
    /// The OpenSSF model-signing bundle, as stored (JSON).
    public var modelSigningBundle: [UInt8]
}
