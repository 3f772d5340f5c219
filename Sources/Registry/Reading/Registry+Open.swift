import CofferCrypto
import Foundation

/// Opening a version's data: its data key for an identity, and each blob decrypted with its signed digests checked.
extension Registry {
    /// The version's data key, unwrapped from the stanza for `identity`.
    func unwrapDataKey(_ stored: StoredVersion, identity: UnlockedIdentity) async throws(CofferRegistryError) -> KeyBox {
        let keyID = identity.publicIdentity.keyID
        guard let stanza = try await metadata.wrappedKey(version: stored.id, recipient: keyID) else {
            throw .notARecipient("\(stored.model):\(stored.version)")
        }
        do {
            return KeyBox(try WrappedKey(encoded: Array(stanza)).unwrap(with: identity.identity))
        } catch {
            throw .tampered("the wrapped data key for \(identity.publicIdentity.name) does not open: \(error)")
        }
    }

    /// A blob as a blocking source for the chunk pipeline (to read on a thread of its own): straight from disk when the
    /// blob store keeps it there, else streamed from the store. `what` names it in errors.
    func blobSource(_ digest: String, what: String) async throws(CofferRegistryError) -> Unchecked<any ByteSource> {
        if let path = blobs.localPath(of: digest) {
            do { return Unchecked(try FileDescriptorStream(readingFrom: path)) } catch { throw .tampered("blob of \(what) is missing") }
        }
        guard let size = try await blobs.size(of: digest) else { throw .tampered("blob of \(what) is missing from the \(blobs.name)") }
        let store = blobs
        // As a range, which a remote store does not hash on the way: every caller checks what it reads itself (the
        // plaintext digest, or the blob's when it has no key), as it does reading from a directory. Hashing twice was
        // a SHA-256 pass over every byte of every pull from an OCI registry.
        let whole = size > 0 ? 0..<size : nil
        return Unchecked(BlockingByteSource(length: size, name: "blob of \(what)") { try await store.read(digest, range: whole) })
    }

    /// Decrypts one file's blob into `sink`, checking the plaintext's signed digest (and, with `checkingBlobDigest`,
    /// the blob's) in the same pass, on a thread of its own.
    ///
    /// Releasing plaintext needs only the plaintext digest: every chunk is authenticated under the version's key
    /// before it reaches `sink`, and the whole is compared with the signed subject before anyone sees it, so a blob
    /// altered by anyone, the key holders included, cannot pass. Re-hashing the ciphertext adds nothing to that and
    /// costs a third of the work; it is what `verify` (no key) and a rekey (which re-signs blob digests) check.
    func open(
        _ file: ModelStatement.File,
        dataKey: KeyBox,
        into sink: any ByteSink,
        checkingBlobDigest: Bool,
        progress: (@Sendable (Int) -> Void)? = nil
    ) async throws(CofferRegistryError) {
        let source = try await blobSource(file.sealedSHA256, what: file.path)
        let output = Unchecked(sink as any ByteSink)
        try await Offload.run { () throws(CofferRegistryError) in
            try Self.openBlob(
                from: source.value,
                file,
                dataKey: dataKey.key,
                into: output.value,
                checkingBlobDigest: checkingBlobDigest,
                progress: progress
            )
        }
    }

    /// Decrypts a sealed file read from `source` (a blob on disk, or one streamed from a server) as `file` of a
    /// version. A failure to read is reported as such; anything else that fails is tampering.
    static func openBlob(
        from source: any ByteSource,
        _ file: ModelStatement.File,
        dataKey: borrowing SecretKey,
        into sink: any ByteSink,
        checkingBlobDigest: Bool,
        progress: ((Int) -> Void)? = nil
    )
        throws(CofferRegistryError)
    {
        let summary: SealedFile.Summary
        do {
            let (header, length) = try SealedFileHeader.read(from: source)
            summary = try SealedFile.openPayload(
                from: source,
                to: sink,
                header: header,
                headerLength: length,
                dataKey: dataKey,
                digests: true,
                sealedDigest: checkingBlobDigest,
                progress: progress
            )
        } catch {
            if case .io(let path, let reason) = error { throw .io(path: path, reason: reason) }
            throw .tampered("\(file.path): \(error)")
        }
        guard !checkingBlobDigest || Digest.hex(summary.sealedSHA256!) == file.sealedSHA256, summary.sealedLength == file.sealedSize else {
            throw .tampered("blob of \(file.path) does not match its signed SHA-256")
        }
        guard Digest.hex(summary.plaintextSHA256!) == file.plaintextSHA256, summary.plaintextLength == file.size else {
            throw .tampered("\(file.path) does not match its signed SHA-256")
        }
    }
}

/// A value handed to the one thread that uses it next (an ``Offload``), never used by two at once: a byte source, a
/// sink, a file being written.
struct Unchecked<Value>: @unchecked Sendable {
    let value: Value
    init(_ value: Value) { self.value = value }
}

extension Unchecked where Value == any ByteSource {
    /// Whether reading failed because the store found the bytes wrong (an OCI registry's stream hashes what it sends
    /// and fails at its end): tampering, not an unreadable blob.
    var failedTampered: Bool { Registry.foundTampered((value as? BlockingByteSource)?.failure) }
}

extension Registry {
    /// Whether `error` (a store's, or a blocking source's recorded failure) says a blob's bytes are not its digest's.
    static func foundTampered(_ error: (any Error)?) -> Bool {
        guard let error = error as? CofferRegistryError, case .tampered = error else { return false }
        return true
    }
}

/// A sink that keeps nothing: for verifying plaintext digests in memory.
final class DiscardingSink: ByteSink {
    func write(_ bytes: UnsafeRawBufferPointer) throws(CofferCryptoError) {}
}
