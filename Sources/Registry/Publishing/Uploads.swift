import CofferCrypto
public import Foundation
import NIOCore

/// Where a resumable upload stands, as its client sees it.
public struct UploadState: Sendable, Equatable {
    public var id: String
    /// Bytes received so far: where the next append starts.
    public var offset: Int
}

extension UploadRecord {
    var state: UploadState { UploadState(id: id, offset: received) }
}

extension Registry {
    /// Unfinished uploads one principal may hold at once.
    public static let maximumOpenUploads = 64
    /// How long an unfinished upload is kept before gc reclaims it.
    public static let uploadLifetime: TimeInterval = 86_400

    /// Starts a resumable upload of a blob for a remote push (docs/FORMAT.md, "Replicas"): a row any server over this
    /// registry continues, and the blob store's own upload. Only a publisher (somewhere) may upload, at most
    /// ``maximumOpenUploads`` at once.
    public func startUpload(by principal: Principal, now: Date = Date()) async throws(CofferRegistryError) -> UploadState {
        try await requirePublisherSomewhere(principal, action: "upload", target: "-")
        let name = principal.name
        let current = Self.timestamp(now)
        @Sendable func refusal(_ uploads: [UploadRecord]) -> String? {
            let open = uploads.filter { $0.expiresAt > current }.count
            return open < Self.maximumOpenUploads ? nil : "\(name) has \(open) unfinished uploads, the most one may hold: finish them, or wait for gc"
        }
        // Counted before the blob store is asked, and again inside the commit that adds the upload: counted only
        // before, 69 uploads started at once had all fit.
        if let reason = refusal(try await metadata.uploads(principal: name)) { throw .tooManyUploads(reason) }
        let started = try await blobs.startUpload()
        let record = UploadRecord(
            id: Digest.hex((0..<16).map { _ in UInt8.random(in: 0...255) }),
            principal: principal.name,
            location: started.location,
            received: 0,
            createdAt: Self.timestamp(now),
            expiresAt: Self.timestamp(now.addingTimeInterval(Self.uploadLifetime))
        )
        do {
            var work = UnitOfWork(changes: [.putUpload(record)])
            work.holdingCheck = UnitOfWork.HoldingCheck(principal: name, rows: .uploads(refusal))
            try await metadata.commit(work)
        } catch {
            await blobs.abandon(started)
            throw error
        }
        return record.state
    }

    /// `principal`'s upload `id`; another principal's upload is unknown to them.
    public func upload(_ id: String, of principal: Principal) async throws(CofferRegistryError) -> UploadState {
        try await uploadRecord(id, of: principal).state
    }

    func uploadRecord(_ id: String, of principal: Principal) async throws(CofferRegistryError) -> UploadRecord {
        guard id.utf8.count == 32, id.utf8.allSatisfy({ (0x30...0x39).contains($0) || (0x61...0x66).contains($0) }),
            let record = try await metadata.upload(id: id), record.principal == principal.name
        else { throw .unknownUpload(id) }
        return record
    }

    /// Appends `bytes` to `principal`'s upload `id` at `offset` (where it stands, or refused with the offset to
    /// resume from); refuses an upload growing past `limit` bytes.
    public func appendUpload(
        _ id: String,
        at offset: Int,
        _ bytes: BlobStream,
        limit: Int,
        by principal: Principal
    ) async throws(CofferRegistryError) -> UploadState {
        var record = try await uploadRecord(id, of: principal)
        guard offset == record.received else { throw .uploadOffset(current: record.received, asked: offset) }
        let bounded = BlobStream(length: bytes.length, Limited(base: bytes, remaining: limit - offset, limit: limit))
        let advanced: BlobUpload
        do {
            advanced = try await blobs.append(to: BlobUpload(id: id, location: record.location, offset: offset), bounded)
        } catch {
            guard case .uploadSessionLost = error else { throw error }
            // A replica that died between the store's answer and this commit leaves the record behind the store's
            // session, which no older Location reaches again: the upload begins again in a new one.
            let restarted = try await blobs.startUpload()
            record.location = restarted.location
            record.received = 0
            try await metadata.commit(UnitOfWork(changes: [.putUpload(record)]))
            throw .uploadRestarted(error.description)
        }
        record.location = advanced.location
        record.received = advanced.offset
        try await metadata.commit(UnitOfWork(changes: [.putUpload(record)]))
        return record.state
    }

    /// Makes `principal`'s upload `id` the blob `digest` (refused, and the upload dropped, when its bytes hash to
    /// anything else); audited as an upload: the blob belongs to no version until a push names it.
    public func finishUpload(_ id: String, digest: String, by principal: Principal) async throws(CofferRegistryError) {
        let record = try await uploadRecord(id, of: principal)
        guard digest.utf8.count == 64, Digest.bytes(fromHex: digest) != nil else {
            throw .invalidInput("the digest must be the blob's SHA-256: 64 lower-case hex digits")
        }
        let upload = BlobUpload(id: id, location: record.location, offset: record.received)
        if !blobs.listsBlobs { try await metadata.commit(UnitOfWork(changes: [.addPendingBlobs([digest], at: Self.now())])) }
        do {
            _ = try await blobs.finish(upload, digest: digest)
        } catch {
            await blobs.abandon(upload)
            try? await metadata.commit(UnitOfWork(changes: [.removeUpload(id: id)]))
            try? await audit(principal: principal.name, action: "upload", target: digest, outcome: .failed, reason: error.description)
            throw error
        }
        try await metadata.commit(
            UnitOfWork(
                changes: [.removeUpload(id: id)],
                audit: [AuditDraft(principal: principal.name, action: "upload", target: digest, outcome: .ok, reason: "blob stored, no version yet")]
            )
        )
    }
}

/// A request body cut off with an error once it grows past the upload limit.
private struct Limited: AsyncSequence, Sendable {
    typealias Element = ByteBuffer
    let base: BlobStream
    let remaining: Int
    let limit: Int

    struct AsyncIterator: AsyncIteratorProtocol {
        var base: BlobStream.AsyncIterator
        var remaining: Int
        let limit: Int

        mutating func next() async throws -> ByteBuffer? {
            guard let buffer = try await base.next() else { return nil }
            remaining -= buffer.readableBytes
            guard remaining >= 0 else { throw CofferRegistryError.uploadTooLarge(limit: limit) }
            return buffer
        }
    }

    func makeAsyncIterator() -> AsyncIterator { AsyncIterator(base: base.makeAsyncIterator(), remaining: remaining, limit: limit) }
}
