import CofferCrypto
import CofferRegistry
import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// `coffer push --registry URL`: seal locally, upload ciphertext in resumable pieces, commit. An interrupted push
/// run again with the same inputs resumes: the sealed blobs, the signed statement and the upload ids wait in an
/// outbox folder (ciphertext and public material only) until the version is committed.
struct RemotePusher {
    let client: RemoteClient
    let url: URL
    static let piece = 4 << 20

    /// The outbox of this push: one folder per registry, model and set of inputs (paths, sizes, modification times),
    /// under this user's private cache (`$COFFER_OUTBOX`, else `$XDG_CACHE_HOME/coffer/outbox`, else
    /// `~/.cache/coffer/outbox`), never a shared temporary directory another user could have prepared.
    static func outbox(url: URL, request: PushRequest) throws -> String {
        var key = "\(url.absoluteString)|\(request.model)|\(request.version ?? "")"
        for path in request.paths.sorted() {
            let walker = FileManager.default.enumerator(atPath: path)
            var entries = [path]
            while let next = walker?.nextObject() as? String { entries.append("\(path)/\(next)") }
            for entry in entries.sorted() {
                let attributes = try? FileManager.default.attributesOfItem(atPath: entry)
                key += "|\(entry)|\(attributes?[.size] ?? 0)|\((attributes?[.modificationDate] as? Date)?.timeIntervalSince1970 ?? 0)"
            }
        }
        let environment = ProcessInfo.processInfo.environment
        let base =
            environment["COFFER_OUTBOX"].flatMap { $0.isEmpty ? nil : $0 }
            ?? environment["XDG_CACHE_HOME"].flatMap { $0.hasPrefix("/") ? "\($0)/coffer/outbox" : nil }
            ?? "\(environment["HOME"] ?? NSHomeDirectory())/.cache/coffer/outbox"
        try privateDirectory(base)
        let outbox = "\(base)/\(Digest.hex(Digest.sha256(Array(key.utf8)).prefix(12)))"
        try privateDirectory(outbox)
        return outbox
    }

    /// Creates `path` (mode 0700) if needed and refuses one that is a symbolic link, is owned by another user, or
    /// that others may write or read: what waits there is resumed as this user's push.
    static func privateDirectory(_ path: String) throws {
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        var status = stat()
        guard lstat(path, &status) == 0 else { throw CLIError("\(path): \(String(cString: strerror(errno)))") }
        guard status.st_mode & S_IFMT == S_IFDIR else { throw CLIError("the push outbox \(path) is not a directory (a link?): refusing it") }
        guard status.st_uid == getuid() else { throw CLIError("the push outbox \(path) belongs to another user: refusing it (set COFFER_OUTBOX)") }
        guard status.st_mode & 0o077 == 0 else {
            throw CLIError("the push outbox \(path) is open to other users (mode \(String(status.st_mode & 0o777, radix: 8))): chmod 700 it")
        }
    }

    /// Pushes `request`, its data key wrapped for the current key of the registry's key chain as this client replays it
    /// (whatever key the server says it has). The version number comes from that replay too, and "pushed" is said only
    /// once the client has seen the version's record in the ledger: a server's word alone commits nothing.
    func push(_ request: PushRequest, publisher: borrowing Identity, given: PublicIdentity?) async throws -> (String, String, String) {
        var ledger = try await client.ledger(key: given)
        guard let registryKey = ledger.state.currentKey else { throw CLIError("\(url) has no registry key") }
        let outbox = try Self.outbox(url: url, request: request)
        let state = "\(outbox)/prepared.json"
        var prepared: PreparedPush
        let saved = FileManager.default.contents(atPath: state).flatMap { try? JSONDecoder().decode(PreparedPush.self, from: $0) }
        // A prepared push is resumed only if it is this push: the same inputs (by content), request and keys.
        let mismatch = saved.flatMap { $0.mismatch(with: request, publisher: publisher.publicIdentity, registryKey: registryKey, outbox: outbox) }
        if let saved, mismatch == nil {
            prepared = saved
            FileDescriptorStream.standardError.writeLine("coffer: resuming the push of \(prepared.model):\(prepared.version) from \(outbox)")
        } else {
            if let mismatch {
                FileDescriptorStream.standardError.writeLine("coffer: the outbox \(outbox) holds another push (\(mismatch)): preparing anew")
                for name in (try? FileManager.default.contentsOfDirectory(atPath: outbox)) ?? [] { unlink("\(outbox)/\(name)") }
            }
            prepared = try PreparedPush.prepare(
                request,
                publisher: publisher,
                registryKey: registryKey,
                version: Self.nextVersion(request, ledger.state),
                outbox: outbox
            )
            try JSONEncoder().encode(prepared).write(to: URL(fileURLWithPath: state), options: .atomic)
        }
        for file in prepared.files { try upload(file.sealedSHA256, size: file.sealedSize, outbox: outbox) }
        for _ in 0..<5 {
            let (status, body) = try client.send(
                "POST",
                "v1/versions",
                headers: ["Content-Type": "application/json"],
                body: try JSONEncoder().encode(prepared)
            )
            if status == 409, request.version == nil {
                // The number was taken meanwhile: sign again for the next one; the blobs stay as they are.
                ledger = try await client.ledger(key: given)
                try prepared.sign(request, version: Self.nextVersion(request, ledger.state), publisher: publisher)
                try JSONEncoder().encode(prepared).write(to: URL(fileURLWithPath: state), options: .atomic)
                continue
            }
            _ = try RemoteClient.check(body, status: status, base: url)
            // The version is committed when the ledger says so, with the statement this client signed.
            let digest = try prepared.statementDigest()
            let after = try await client.ledger(key: given)
            guard let committed = try await RemoteLedger.versionRecord(prepared.model, prepared.version, from: client, in: after.state),
                committed.digest == digest
            else {
                throw CLIError("\(url) answered that it committed \(prepared.model):\(prepared.version), but its ledger holds no such version")
            }
            try? FileManager.default.removeItem(atPath: outbox)
            return (prepared.model, prepared.version, digest)
        }
        throw CLIError("could not allocate a version number on \(url): too many concurrent pushes")
    }

    /// The version to sign for: the one asked for, else one more than the highest integer version the ledger holds.
    static func nextVersion(_ request: PushRequest, _ state: LedgerState) -> String {
        if let version = request.version { return version }
        return String((state.latest[request.model]?.number ?? 0) + 1)
    }

    /// Uploads one sealed blob, resuming where the server says an earlier attempt stopped.
    private func upload(_ digest: String, size: Int, outbox: String) throws {
        let done = "\(outbox)/\(digest).done"
        guard !FileManager.default.fileExists(atPath: done) else { return }
        let idFile = "\(outbox)/\(digest).upload"
        var id = (try? String(contentsOfFile: idFile, encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines)
        var offset = 0
        if let known = id {
            let (status, body) = try client.send("GET", "v1/uploads/\(known)")
            if status == 200, let object = try JSONSerialization.jsonObject(with: body) as? [String: Any], let at = object["offset"] as? Int {
                offset = at
                FileDescriptorStream.standardError.writeLine("coffer: resuming the upload of blob \(digest.prefix(12)) at byte \(offset) of \(size)")
            } else {
                id = nil
            }
        }
        if id == nil {
            let body = try client.expect("POST", "v1/uploads")
            id = (try JSONSerialization.jsonObject(with: body) as? [String: Any])?["id"] as? String
            guard let id else { throw CLIError("\(url) did not start an upload") }
            try id.write(toFile: idFile, atomically: true, encoding: .utf8)
        }
        let handle = try FileHandle(forReadingFrom: URL(fileURLWithPath: PreparedPush.blobPath(outbox, digest)))
        defer { try? handle.close() }
        try handle.seek(toOffset: UInt64(offset))
        while offset < size {
            let piece = try handle.read(upToCount: Self.piece) ?? Data()
            guard !piece.isEmpty else { break }
            let (status, body) = try client.send("PATCH", "v1/uploads/\(id!)", headers: ["Upload-Offset": String(offset)], body: piece)
            if status == 409, let object = try? JSONSerialization.jsonObject(with: body) as? [String: Any], object["offset"] != nil {
                offset = object["offset"] as? Int ?? offset
                try handle.seek(toOffset: UInt64(offset))
                continue
            }
            _ = try RemoteClient.check(body, status: status, base: url)
            offset += piece.count
        }
        _ = try client.expect("PUT", "v1/uploads/\(id!)", query: [URLQueryItem(name: "digest", value: digest)])
        _ = FileManager.default.createFile(atPath: done, contents: nil)
    }
}
