import CofferCrypto
public import CofferRegistry
public import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// Where an HTTP push keeps what it prepared (sealed blobs, the signed statement, upload ids: ciphertext and public
/// material only) until the version is committed, so that the same push run again resumes.
public enum PushOutbox {
    /// The outbox of one push: a folder per registry, model and set of inputs (paths, sizes, modification times;
    /// in-memory contents by digest), under this user's private cache (`$COFFER_OUTBOX`, else
    /// `$XDG_CACHE_HOME/coffer/outbox`, else `~/.cache/coffer/outbox`), never a shared temporary directory another
    /// user could have prepared.
    public static func directory(
        for url: URL,
        request: PushRequest,
        environment: [String: String] = ProcessInfo.processInfo.environment
    ) throws(CofferClientError) -> String {
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
        for content in request.contents { key += "|memory:\(content.path)|\(Digest.hex(Digest.sha256(content.bytes)))" }
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
    public static func privateDirectory(_ path: String) throws(CofferClientError) {
        do {
            try FileBytes.makePrivateDirectory(path)
        } catch {
            throw .invalidInput("cannot create the push outbox: \(error)")
        }
        var status = stat()
        guard lstat(path, &status) == 0 else { throw .invalidInput("\(path): \(String(cString: strerror(errno)))") }
        guard status.st_mode & S_IFMT == S_IFDIR else { throw .invalidInput("the push outbox \(path) is not a directory (a link?): refusing it") }
        guard status.st_uid == getuid() else {
            throw .invalidInput("the push outbox \(path) belongs to another user: refusing it (set COFFER_OUTBOX)")
        }
        guard status.st_mode & 0o077 == 0 else {
            throw .invalidInput("the push outbox \(path) is open to other users (mode \(String(status.st_mode & 0o777, radix: 8))): chmod 700 it")
        }
    }
}
