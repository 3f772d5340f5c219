public import CofferCrypto
public import CofferRegistry
import Foundation
import NIOCore

#if canImport(Glibc)
import Glibc
#endif

extension CofferClient {
    /// Bytes per `PATCH` of an upload.
    public static let uploadPiece = 4 << 20

    /// Pushes `request`: its files sealed here (the server never sees plaintext), the statement signed by
    /// `publisher`, the data key wrapped for the current key of the registry's key chain as this client replays it
    /// (whatever key the server says it has), the ciphertext uploaded in resumable pieces, then the version
    /// committed. The version number comes from the replay too, and the push is done only once the client has seen
    /// the version's record, with the statement it signed, in the ledger: a server's word alone commits nothing.
    ///
    /// Interrupted, the same push run again resumes from `outbox` (``PushOutbox/directory(for:request:environment:)``):
    /// blobs uploaded are not sent again, a blob part-uploaded continues where the server says it stands.
    ///
    /// - Parameters:
    ///   - registryKey: a key of the registry given out of band: the replayed key chain must hold it.
    ///   - pieceSize: bytes per `PATCH`.
    ///   - progress: told after each piece the server took: the blob's digest, bytes uploaded, its size.
    public func push(
        _ request: PushRequest,
        publisher: borrowing Identity,
        registryKey: PublicIdentity? = nil,
        outbox: String,
        pieceSize: Int = CofferClient.uploadPiece,
        progress: (@Sendable (String, Int, Int) -> Void)? = nil
    ) async throws(CofferClientError) -> CommitAnswer {
        var ledger = try await ledger(registryKey: registryKey)
        guard let currentKey = ledger.state.currentKey else { throw .registry(.tampered("\(baseURL) has no registry key in its ledger")) }
        let state = "\(outbox)/prepared.json"
        var prepared: PreparedPush
        let saved = FileManager.default.contents(atPath: state).flatMap { try? JSONDecoder().decode(PreparedPush.self, from: $0) }
        // A prepared push is resumed only if it is this push: the same inputs (by content), request and keys.
        let mismatch = saved.flatMap { $0.mismatch(with: request, publisher: publisher.publicIdentity, registryKey: currentKey, outbox: outbox) }
        do throws(CofferRegistryError) {
            if let saved, mismatch == nil {
                prepared = saved
                notice("resuming the push of \(prepared.model):\(prepared.version) from \(outbox)")
            } else {
                if let mismatch {
                    notice("the outbox \(outbox) holds another push (\(mismatch)): preparing anew")
                    for name in (try? FileManager.default.contentsOfDirectory(atPath: outbox)) ?? [] { unlink("\(outbox)/\(name)") }
                }
                prepared = try PreparedPush.prepare(
                    request,
                    publisher: publisher,
                    registryKey: currentKey,
                    version: Self.nextVersion(request, ledger.state),
                    outbox: outbox
                )
                try Self.save(prepared, to: state)
            }
        } catch {
            throw .registry(error)
        }
        for file in prepared.files {
            try await upload(file.sealedSHA256, size: file.sealedSize, outbox: outbox, pieceSize: pieceSize, progress: progress)
        }
        for _ in 0..<5 {
            let answer: CommitAnswer
            do { answer = try await commit(prepared) } catch {
                guard error.status == 409, request.version == nil else { throw error }
                // The number was taken meanwhile: sign again for the next one; the blobs stay as they are.
                ledger = try await self.ledger(registryKey: registryKey)
                do throws(CofferRegistryError) {
                    try prepared.sign(request, version: Self.nextVersion(request, ledger.state), publisher: publisher)
                    try Self.save(prepared, to: state)
                } catch {
                    throw .registry(error)
                }
                continue
            }
            // The version is committed when the ledger says so, with the statement this client signed.
            let digest: String
            do { digest = try prepared.statementDigest() } catch { throw .registry(error) }
            let after = try await self.ledger(registryKey: registryKey)
            let committed = try await reading { source throws(CofferRegistryError) in
                try await RemoteLedger.versionRecord(prepared.model, prepared.version, from: source, in: after.state)
            }
            guard let committed, committed.digest == digest, answer.digest == digest else {
                throw .registry(
                    .tampered("\(baseURL) answered that it committed \(prepared.model):\(prepared.version), but its ledger holds no such version")
                )
            }
            try? FileManager.default.removeItem(atPath: outbox)
            return CommitAnswer(model: prepared.model, version: prepared.version, digest: digest)
        }
        throw .registry(.unavailable(engine: baseURL.absoluteString, reason: "could not allocate a version number: too many concurrent pushes"))
    }

    /// The version to sign for: the one asked for, else one more than the highest integer version the ledger holds.
    static func nextVersion(_ request: PushRequest, _ state: LedgerState) throws(CofferRegistryError) -> String {
        if let version = request.version { return version }
        return try Registry.automaticVersion(after: state.latest[request.model]?.number, model: request.model)
    }

    private static func save(_ prepared: PreparedPush, to path: String) throws(CofferRegistryError) {
        let bytes: [UInt8]
        do { bytes = Array(try JSONEncoder().encode(prepared)) } catch { throw .io(path: path, reason: "\(error)") }
        // Synced, and its temporary file removed on an interrupt: Foundation's atomic write does neither.
        do { try FileBytes.write(bytes, to: path, mode: 0o600, overwrite: true) } catch { throw .crypto(error) }
    }

    /// Uploads one sealed blob from the outbox, resuming where the server says an earlier attempt stopped.
    private func upload(
        _ digest: String,
        size: Int,
        outbox: String,
        pieceSize: Int,
        progress: (@Sendable (String, Int, Int) -> Void)?
    ) async throws(CofferClientError) {
        let done = "\(outbox)/\(digest).done"
        guard !FileManager.default.fileExists(atPath: done) else { return }
        let idFile = "\(outbox)/\(digest).upload"
        var offset = 0
        var id: String?
        // An offset the server answers: within the blob, and just past a piece it was sent (a PATCH appends its whole
        // body): a server taking a byte per piece would otherwise have the client send the blob again for every byte.
        func answered(_ offset: Int, after piece: (start: Int, count: Int)? = nil) throws(CofferClientError) -> Int {
            guard offset >= 0, offset <= size, piece.map({ offset == $0.start + $0.count }) ?? true else {
                let sent = piece.map { ", after a piece of \($0.count) bytes sent from byte \($0.start)" } ?? ""
                throw .badAnswer(
                    url: baseURL.absoluteString,
                    reason: "the upload of blob \(digest.prefix(12)) stands at byte \(offset)\(sent), of \(size)"
                )
            }
            return offset
        }
        if let known = (try? String(contentsOfFile: idFile, encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines) {
            do {
                offset = try answered(try await upload(known).offset)
                id = known
                notice("resuming the upload of blob \(digest.prefix(12)) at byte \(offset) of \(size)")
            } catch {
                // Gone (finished, expired, collected): start again. Anything else is this push's failure.
                guard error.status == 404 else { throw error }
            }
        }
        if id == nil {
            let started = try await startUpload()
            do { try FileBytes.write(Array(started.id.utf8), to: idFile, mode: 0o600, overwrite: true) } catch {
                throw .invalidInput("cannot write \(idFile): \(error)")
            }
            id = started.id
        }
        guard let id else { return }
        let path = PreparedPush.blobPath(outbox, digest)
        guard let handle = FileHandle(forReadingAtPath: path) else { throw .invalidInput("the sealed blob \(path) is missing from the outbox") }
        defer { try? handle.close() }
        var conflicts = 0  // 409s for this blob: a server may rewind it only so often
        while offset < size {
            let piece: Data
            do {
                try Task.checkCancellation()
                try handle.seek(toOffset: UInt64(offset))
                piece = try handle.read(upToCount: min(pieceSize, size - offset)) ?? Data()
            } catch is CancellationError {
                throw .unreachable(url: baseURL.absoluteString, reason: "the push was cancelled")
            } catch {
                throw .invalidInput("cannot read \(path): \(error.localizedDescription)")
            }
            guard !piece.isEmpty else { throw .invalidInput("the sealed blob \(path) is shorter than its \(size) bytes") }
            do {
                offset = try answered(try await append(to: id, at: offset, ByteBuffer(bytes: piece)).offset, after: (offset, piece.count))
            } catch {
                // Another offset (an earlier attempt's piece did arrive): continue from where the upload stands, a few
                // times per blob at most (a server answering 409 and rewinding would keep the push going forever).
                guard error.status == 409, conflicts < 3 else { throw error }
                conflicts += 1
                offset = try answered(try await upload(id).offset)
            }
            progress?(digest, offset, size)
        }
        try await finishUpload(id, digest: digest)
        _ = FileManager.default.createFile(atPath: done, contents: nil)
    }
}
