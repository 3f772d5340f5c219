import AsyncHTTPClient
public import CofferCrypto
import Foundation
import NIOCore
import NIOHTTP1

#if canImport(Glibc)
import Glibc
#endif

/// Sealed files as blobs of one repository of an OCI distribution registry (docs/FORMAT.md, "Blob stores"): a Coffer
/// blob `D` is the OCI blob `sha256:D` of `REPOSITORY`. Only ciphertext ever goes there.
///
/// Stores upload from the local temporary file the blob was sealed into, streamed (one 1 MiB buffer at a time), in one
/// `PUT` up to 64 MiB and in `PATCH`es of at most 64 MiB beyond. Whole-blob reads are hashed as they stream and fail at
/// their end when the registry sent other bytes. Resumable uploads are the registry's own upload sessions: their
/// `Location` is the ``BlobUpload/location``, so any process holding the record goes on with it.
///
/// ```swift
/// let store = try OCIBlobStore(url: "oci+http://127.0.0.1:5000/coffer", temporaryDirectory: home + "/tmp",
///                              environment: ProcessInfo.processInfo.environment)
/// let file = try store.makeTemporary()   // seal into it, then:
/// try await store.store(file, digest: digest, size: size)
/// ```
public struct OCIBlobStore: BlobStore {
    public let client: OCIDistributionClient
    /// Where sealed files wait before they are sent (the registry home's `tmp/`).
    public let temporaryDirectory: String

    /// The largest single request body: a blob up to this size goes in one `PUT`, a larger one in `PATCH`es this big.
    /// 64 MiB keeps a request short enough to retry and to pass proxies that cap bodies, while the per-request cost
    /// (about 1 ms on loopback) stays far below the time to send 64 MiB.
    public static let chunkLimit = 64 << 20
    /// An append whose length is not known is sent in pieces of this size, gathered in memory.
    static let unknownLengthPiece = 8 << 20
    /// Largest envelope or model-signing bundle read back by ``describeVersion(_:)``.
    static let documentLimit = 16 << 20

    public var name: String { client.endpoint.name }

    public init(client: OCIDistributionClient, temporaryDirectory: String) {
        self.client = client
        self.temporaryDirectory = temporaryDirectory
    }

    /// A store for the OCI URL of `backends.json`, with credentials and CA file from `environment` (``OCICredentials``,
    /// `COFFER_OCI_CA_FILE`).
    public init(url: String, temporaryDirectory: String, environment: [String: String]) throws(CofferRegistryError) {
        let endpoint = try OCIEndpoint(parsing: url)
        self.init(client: try OCIDistributionClient(endpoint: endpoint, environment: environment), temporaryDirectory: temporaryDirectory)
    }

    public func localPath(of digest: String) -> String? { nil }

    public func makeTemporary() throws(CofferRegistryError) -> AtomicOutputFile {
        try Directories.make(temporaryDirectory)
        do {
            // Not durable: the registry keeps the blob, the local file lives only until it is sent.
            return try AtomicOutputFile(destination: "\(temporaryDirectory)/oci-blob-\(UUID().uuidString)", mode: 0o600, durable: false)
        } catch {
            throw .crypto(error)
        }
    }

    // MARK: - Store, size, read, remove

    public func store(_ file: AtomicOutputFile, digest: String, size: Int) async throws(CofferRegistryError) {
        // The sealed bytes are complete in `file`; committing renames it to its destination in tmp/, which is then read
        // and removed whatever happens. A failed commit leaves the file to AtomicOutputFile, which removes it.
        do {
            try file.commit()
        } catch {
            throw .crypto(error)
        }
        let path = file.destination
        defer { unlink(path) }
        var info = stat()
        guard stat(path, &info) == 0 else { throw .io(path: path, reason: String(cString: strerror(errno))) }
        guard Int(info.st_size) == size else {
            throw .invalidInput("the sealed file holds \(info.st_size) bytes, not the \(size) its blob sha256:\(digest) should have")
        }
        if let present = try await client.blobSize(digest) {
            guard present == size else {
                throw .tampered("\(name) holds blob sha256:\(digest) with \(present) bytes, not \(size)")
            }
            return
        }
        let location = try await client.startUpload()
        do {
            if size <= Self.chunkLimit {
                try await client.finishUpload(location, digest: digest, start: 0, body: .file(path: path, range: 0..<size))
            } else {
                var next = location
                var offset = 0
                while offset < size {
                    let end = min(offset + Self.chunkLimit, size)
                    next = try await client.patch(next, start: offset, .file(path: path, range: offset..<end))
                    offset = end
                }
                try await client.finishUpload(next, digest: digest, start: size, body: nil)
            }
        } catch {
            await client.cancelUpload(location)
            throw error
        }
    }

    public func size(of digest: String) async throws(CofferRegistryError) -> Int? {
        try await client.blobSize(digest)
    }

    public func read(_ digest: String, range: Range<Int>?) async throws(CofferRegistryError) -> BlobStream {
        if let range {
            guard range.lowerBound >= 0, range.lowerBound <= range.upperBound else {
                throw .invalidInput("bytes \(range.lowerBound)-\(range.upperBound) is not a range of blob sha256:\(digest)")
            }
            if range.isEmpty {
                // `Range: bytes=A-(A-1)` cannot be sent: check the bounds against the size instead.
                guard let total = try await client.blobSize(digest) else { throw missing(digest) }
                guard range.upperBound <= total else {
                    throw .invalidInput("bytes \(range.lowerBound)-\(range.upperBound) lie outside blob sha256:\(digest) (\(total) bytes)")
                }
                return BlobStream(length: 0, AsyncThrowingStream { $0.finish() })
            }
        }
        guard let response = try await client.getBlob(digest, range: range) else { throw missing(digest) }
        let contentLength = response.headers.first(name: "Content-Length").flatMap(Int.init)
        let pump: ResponsePump
        if let range {
            if response.status.code == 206 {
                // `Content-Range: bytes A-B/N` must be the range asked for. A range running past the end is answered
                // with the part that exists (RFC 9110 §14.1.2), which here means the caller asked for bytes past the end.
                guard let answered = response.headers.first(name: "Content-Range").flatMap(Self.parseContentRange) else {
                    throw .unavailable(engine: name, reason: "GET blob sha256:\(digest) answered 206 without a Content-Range")
                }
                if let total = answered.total, range.upperBound > total {
                    throw .invalidInput("bytes \(range.lowerBound)-\(range.upperBound) lie outside blob sha256:\(digest) (\(total) bytes)")
                }
                guard answered.range == range else {
                    throw .unavailable(
                        engine: name,
                        reason: "GET blob sha256:\(digest) answered another range than bytes \(range.lowerBound)-\(range.upperBound)"
                    )
                }
                pump = ResponsePump(response.body, endpoint: client.endpoint, digest: digest, skip: 0, take: range.count, verify: false)
            } else {
                // The registry ignored `Range` and sent the whole blob: cut the range out of it.
                pump = ResponsePump(
                    response.body,
                    endpoint: client.endpoint,
                    digest: digest,
                    skip: range.lowerBound,
                    take: range.count,
                    verify: false
                )
            }
            return BlobStream(length: range.count, AsyncThrowingStream(unfolding: pump.next))
        }
        pump = ResponsePump(response.body, endpoint: client.endpoint, digest: digest, skip: 0, take: nil, verify: true)
        return BlobStream(length: contentLength, AsyncThrowingStream(unfolding: pump.next))
    }

    /// `bytes A-B/N` (or `bytes A-B/*`) as `A..<B+1` and N.
    static func parseContentRange(_ text: String) -> (range: Range<Int>, total: Int?)? {
        guard text.hasPrefix("bytes ") else { return nil }
        let parts = text.dropFirst(6).split(separator: "/")
        guard parts.count == 2 else { return nil }
        let bounds = parts[0].split(separator: "-")
        guard bounds.count == 2, let first = Int(bounds[0]), let last = Int(bounds[1]), first <= last else { return nil }
        return (first..<(last + 1), Int(parts[1]))
    }

    private func missing(_ digest: String) -> CofferRegistryError { .tampered("blob sha256:\(digest) is missing from the \(name)") }

    public func remove(_ digest: String) async throws(CofferRegistryError) {
        // With deletion disabled in the registry the blob stays (docs/FORMAT.md): its key is gone, only ciphertext stays.
        try await client.deleteBlob(digest)
    }

    /// The distribution API has no way to list a repository's blobs: `gc` and `fsck` work from the pending-blob journal.
    public var listsBlobs: Bool { false }
    public func digests() async throws(CofferRegistryError) -> [String]? { nil }

    // MARK: - Resumable uploads: the registry's upload sessions

    public func startUpload() async throws(CofferRegistryError) -> BlobUpload {
        let location = try await client.startUpload()
        return BlobUpload(id: UUID().uuidString.lowercased(), location: location, offset: 0)
    }

    public func append(to upload: BlobUpload, _ bytes: BlobStream) async throws(CofferRegistryError) -> BlobUpload {
        let source = SharedBlobIterator(bytes)
        var current = upload
        do {
            if let length = bytes.length {
                var left = length
                while left > 0 {
                    let count = min(left, Self.chunkLimit)
                    current.location = try await client.patch(
                        current.location,
                        start: current.offset,
                        .stream(BlobSlice(source: source, count: count))
                    )
                    current.offset += count
                    left -= count
                }
                if try await source.next(upTo: 1) != nil { throw CofferRegistryError.invalidInput("the bytes ran past the \(length) they announced") }
            } else {
                while true {
                    let piece = try await source.collect(upTo: Self.unknownLengthPiece)
                    if piece.isEmpty { break }
                    current.location = try await client.patch(current.location, start: current.offset, .bytes(piece))
                    current.offset += piece.count
                }
            }
        } catch let error as CofferRegistryError {
            // A request that failed may have left its body's reader waiting on the stream: see SharedBlobIterator.
            await source.close()
            throw error
        } catch {
            await source.close()
            throw .unavailable(
                engine: name,
                reason: "appending to upload \(upload.id): \(OCIDistributionClient.describe(error, endpoint: client.endpoint))"
            )
        }
        await source.close()
        return current
    }

    public func finish(_ upload: BlobUpload, digest: String) async throws(CofferRegistryError) -> Int {
        try await client.finishUpload(upload.location, digest: digest, start: upload.offset, body: nil)
        guard let size = try await client.blobSize(digest) else { throw missing(digest) }
        return size
    }

    public func abandon(_ upload: BlobUpload) async {
        await client.cancelUpload(upload.location)
    }

    // MARK: - Publishing and reading versions

    /// Writes the version's ModelPack manifest under its tag and its two referrer artifacts (docs/FORMAT.md, "OCI layout of
    /// a version"). Its sealed files must be in the repository already (the registry refuses a manifest naming absent
    /// blobs).
    public func publish(_ version: PublishedVersion) async throws(CofferRegistryError) {
        let layout = try OCIVersionLayout(version)
        _ = try await client.putSmallBlob(layout.config)
        _ = try await client.putSmallBlob(OCIVersionLayout.emptyJSON)
        _ = try await client.putSmallBlob(version.envelope)
        _ = try await client.putSmallBlob(version.modelSigningBundle)
        try await client.putManifest(layout.manifest, mediaType: OCIVersionLayout.manifestMediaType, reference: layout.tag)
        // Referrers before the index that lists them: a registry may refuse an index naming absent manifests (2.8 does).
        for referrer in [layout.statementManifest, layout.bundleManifest] {
            let digest = Digest.hex(Digest.sha256(referrer))
            try await client.putManifest(referrer, mediaType: OCIVersionLayout.manifestMediaType, reference: "sha256:\(digest)")
        }
        let referrersTag = OCIVersionLayout.referrersTag(manifestDigest: layout.manifestDigest)
        var existing: OCIVersionLayout.Index?
        if let current = try await client.getManifest(referrersTag, accept: [OCIVersionLayout.indexMediaType]) {
            guard let index = try? JSONDecoder().decode(OCIVersionLayout.Index.self, from: Data(current.bytes)),
                index.mediaType == nil || index.mediaType == OCIVersionLayout.indexMediaType
            else {
                throw .unavailable(engine: name, reason: "tag \(referrersTag) holds something other than a referrers index; not overwritten")
            }
            existing = index
        }
        let index = layout.referrersIndex(merging: existing)
        if existing == nil || Digest.hex(Digest.sha256(index)) != Digest.hex(Digest.sha256(OCIVersionLayout.encode(existing!))) {
            try await client.putManifest(index, mediaType: OCIVersionLayout.indexMediaType, reference: referrersTag)
        }
    }

    /// The manifest under the version's tag must be the one its statement makes, and the referrers index must list its
    /// two signed documents (docs/FORMAT.md, "OCI layout of a version").
    public func publicationProblem(_ version: PublishedVersion) async throws(CofferRegistryError) -> PublicationProblem? {
        let layout = try OCIVersionLayout(version)
        guard let found = try await client.getManifest(layout.tag, accept: [OCIVersionLayout.manifestMediaType]) else { return .missing }
        guard found.digest == layout.manifestDigest else {
            return .different(
                "tag \(layout.tag) holds manifest sha256:\(found.digest), not the one its statement makes (sha256:\(layout.manifestDigest))"
            )
        }
        let referrersTag = OCIVersionLayout.referrersTag(manifestDigest: layout.manifestDigest)
        guard let listed = try await client.getManifest(referrersTag, accept: [OCIVersionLayout.indexMediaType]) else { return .missing }
        guard let index = try? JSONDecoder().decode(OCIVersionLayout.Index.self, from: Data(listed.bytes)) else {
            return .different("tag \(referrersTag) holds something other than a referrers index")
        }
        let required = [layout.statementManifest, layout.bundleManifest].map { "sha256:\(Digest.hex(Digest.sha256($0)))" }
        return required.allSatisfy { digest in index.manifests.contains { $0.digest == digest } } ? nil : .missing
    }

    /// Attaches wrapped-key stanzas for named recipients to a version published here (`coffer export`): one more
    /// referrer of its manifest, listed in its referrers index.
    public func attachKeys(to version: PublishedVersion, stanzas: [String: [UInt8]]) async throws(CofferRegistryError) {
        let layout = try OCIVersionLayout(version)
        let (artifact, descriptor) = layout.keysArtifact(statementDigest: version.digest, stanzas: stanzas)
        _ = try await client.putSmallBlob(OCIVersionLayout.emptyJSON)
        try await client.putManifest(artifact, mediaType: OCIVersionLayout.manifestMediaType, reference: descriptor.digest)
        let referrersTag = OCIVersionLayout.referrersTag(manifestDigest: layout.manifestDigest)
        guard let current = try await client.getManifest(referrersTag, accept: [OCIVersionLayout.indexMediaType]),
            var index = try? JSONDecoder().decode(OCIVersionLayout.Index.self, from: Data(current.bytes))
        else { throw .unavailable(engine: name, reason: "tag \(referrersTag) holds no referrers index: publish the version first") }
        guard !index.manifests.contains(where: { $0.digest == descriptor.digest }) else { return }
        index.manifests.append(descriptor)
        try await client.putManifest(OCIVersionLayout.encode(index), mediaType: OCIVersionLayout.indexMediaType, reference: referrersTag)
    }

    /// Reads back the version published under `reference` (a tag or `sha256:HEX`) in this store's repository, checked for
    /// shape but not trusted: see ``OCIDistributionClient/describeVersion(_:documentLimit:)``.
    public func describeVersion(_ reference: String) async throws(CofferRegistryError) -> OCIVersionDescription {
        try await client.describeVersion(reference, documentLimit: Self.documentLimit)
    }
}

/// Pulls a blob `GET`'s body one buffer per `next()`: the socket is read only as fast as the consumer goes, so a slow
/// decryptor never makes a 256 MiB blob pile up in memory. A whole blob is hashed as it passes (SHA-256 with the CPU's
/// SHA extensions: about 0.5 ms per MiB, a fraction of what moving the MiB costs), and the last `next()` throws instead of
/// ending when the bytes were not the blob asked for.
final class ResponsePump: @unchecked Sendable {
    private var iterator: HTTPClientResponse.Body.AsyncIterator
    private let endpoint: OCIEndpoint
    private var name: String { endpoint.name }
    private let digest: String
    private var skip: Int
    private var remaining: Int?
    private var hasher: StreamingSHA256?
    private var done = false

    init(_ body: HTTPClientResponse.Body, endpoint: OCIEndpoint, digest: String, skip: Int, take: Int?, verify: Bool) {
        self.iterator = body.makeAsyncIterator()
        self.endpoint = endpoint
        self.digest = digest
        self.skip = skip
        self.remaining = take
        self.hasher = verify ? StreamingSHA256() : nil
    }

    /// `AsyncThrowingStream(unfolding:)` calls this once per element, never twice at once: hence the unchecked `Sendable`.
    @Sendable func next() async throws -> ByteBuffer? {
        guard !done else { return nil }
        while true {
            if let remaining, remaining == 0 {
                done = true
                return nil
            }
            let received: ByteBuffer?
            do {
                received = try await iterator.next()
            } catch {
                done = true
                throw CofferRegistryError.unavailable(
                    engine: name,
                    reason: "reading blob sha256:\(digest): \(OCIDistributionClient.describe(error, endpoint: endpoint))"
                )
            }
            guard var buffer = received else {
                done = true
                if let remaining, remaining > 0 {
                    throw CofferRegistryError.unavailable(engine: name, reason: "blob sha256:\(digest) ended \(remaining) bytes early")
                }
                if let hasher, Digest.hex(hasher.finalize()) != digest {
                    throw CofferRegistryError.tampered("\(name) returned a blob whose SHA-256 is not sha256:\(digest)")
                }
                return nil
            }
            if skip > 0 {
                let dropped = min(skip, buffer.readableBytes)
                buffer.moveReaderIndex(forwardBy: dropped)
                skip -= dropped
            }
            if let left = remaining, buffer.readableBytes > left { buffer = buffer.getSlice(at: buffer.readerIndex, length: left)! }
            guard buffer.readableBytes > 0 else { continue }
            if hasher != nil { buffer.withUnsafeReadableBytes { hasher!.update($0) } }
            if let left = remaining { remaining = left - buffer.readableBytes }
            return buffer
        }
    }
}
