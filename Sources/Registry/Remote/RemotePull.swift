public import CofferCrypto
public import Foundation
import GRDB

#if canImport(Glibc)
import Glibc
#endif

/// What a server hands a client for one version: the publisher's signed documents, the registry's rekey record if
/// any, and the caller's own wrapped data key. A client trusts none of it until it has verified it itself.
/// (`GET /v1/package?ref=...&key_id=...`; documents base64.)
public struct VersionPackage: Sendable, Equatable, Codable {
    public var model: String
    public var version: String
    public var digest: String
    public var dsse: String
    public var modelSigning: String
    public var rekey: String?
    /// The stanza wrapped for `key_id`, when the caller may decrypt and a key was wrapped for it.
    public var stanza: String?

    enum CodingKeys: String, CodingKey {
        case model, version, digest, dsse, rekey, stanza
        case modelSigning = "model_signing"
    }
}

/// The HTTP client's side of `GET /v1/blobs/{digest}`: a blob's ciphertext as a stream of `size` bytes (the size
/// the publisher signed; a server that sends more or fewer is an error of the stream).
public protocol BlobFetcher {
    func blob(_ digest: String, size: Int) throws(CofferRegistryError) -> any ByteSource
}

extension Registry {
    /// The package of a version for a remote client (`keyID`'s stanza only when `includeKey`), audited as a pull by
    /// `principal`: the release of a wrapped key is what lets a client decrypt.
    public func package(
        _ reference: ModelReference,
        keyID: String?,
        includeKey: Bool,
        for principal: String
    ) throws(CofferRegistryError) -> VersionPackage {
        let stored = try loadVersion(try resolve(reference).id)
        try stored.ensureNotErased()
        guard let envelope = stored.envelope, let bundle = stored.modelSignature else {
            throw .tampered("\(stored.model):\(stored.version) has no signed statement")
        }
        var stanza: Data? = nil
        if includeKey, let keyID {
            stanza = try database.read { db in
                try Data.fetchOne(
                    db,
                    sql: "SELECT stanza FROM wrapped_keys WHERE version_id = ? AND recipient_key_id = ?",
                    arguments: [stored.id, keyID]
                )
            }
        }
        let released = stanza != nil ? "wrapped key \(keyID ?? "") released" : "signed documents only"
        try audit(principal: principal, action: "pull", target: "\(stored.model):\(stored.version)", outcome: .ok, reason: "remote: \(released)")
        return VersionPackage(
            model: stored.model,
            version: stored.version,
            digest: stored.digest,
            dsse: envelope.base64EncodedString(),
            modelSigning: bundle.base64EncodedString(),
            rekey: stored.rekeyEnvelope?.base64EncodedString(),
            stanza: stanza?.base64EncodedString()
        )
    }
}

/// Pulling from a registry served over HTTP: the server is not trusted for integrity. The client verifies the
/// publisher's signature against its own trusted signers (and a rekey record against the registry key it was
/// given), unwraps its own key, and decrypts each blob's ciphertext as it arrives (every chunk authenticated, the
/// plaintext digest checked) into the staging folder of a local pull: nothing is placed in `directory` unless
/// every file passed, and no ciphertext is written anywhere.
public enum RemotePull {
    /// The publisher's signature checked against `trusted`, a rekey record against `registryKeys`: the files as
    /// they are stored now, with the signer and the model-signing bundle.
    static func verifiedFiles(
        _ package: VersionPackage,
        trusting trusted: [PublicIdentity],
        registryKeys: [PublicIdentity]
    ) throws(CofferRegistryError) -> (files: [ModelStatement.File], signer: PublicIdentity, bundle: Data) {
        let label = "\(package.model):\(package.version)"
        guard let document = Data(base64Encoded: package.dsse), let bundle = Data(base64Encoded: package.modelSigning) else {
            throw .tampered("\(label): the server sent unreadable documents")
        }
        let (statement, signer) = try Registry.verifySigned(
            envelope: document,
            bundle: bundle,
            trusting: trusted,
            model: package.model,
            version: package.version,
            digest: package.digest
        )
        var files = statement.files.sorted { $0.path < $1.path }
        if let rekey = package.rekey {
            guard let record = Data(base64Encoded: rekey), !registryKeys.isEmpty else {
                throw .refused("\(label) was re-encrypted by the registry: pass the registry's public key (--registry-key registry.pub) to check it")
            }
            files = try Registry.verifyRekey(
                record,
                registryKeys: registryKeys,
                model: package.model,
                version: package.version,
                digest: package.digest,
                signed: files
            )
        }
        return (files, signer, bundle)
    }

    public static func pull(
        _ package: VersionPackage,
        fetcher: any BlobFetcher,
        identity: borrowing Identity,
        trusting trusted: [PublicIdentity],
        registryKeys: [PublicIdentity],
        into directory: String
    ) throws(CofferRegistryError) -> PullResult {
        let label = "\(package.model):\(package.version)"
        let (files, signer, bundle) = try verifiedFiles(package, trusting: trusted, registryKeys: registryKeys)
        guard let text = package.stanza, let stanza = Data(base64Encoded: text) else { throw .notARecipient(label) }
        let dataKey: KeyBox
        do { dataKey = KeyBox(try WrappedKey(encoded: Array(stanza)).unwrap(with: identity)) } catch {
            throw .notARecipient(label)
        }
        let done = try Registry.place(files, into: directory, modelSignature: bundle) {
            (file: ModelStatement.File, output: AtomicOutputFile, _: Int) throws(CofferRegistryError) in
            let source = try fetcher.blob(file.sealedSHA256, size: file.sealedSize)
            try Registry.openBlob(from: source, file, dataKey: dataKey.key, into: output, checkingBlobDigest: false)
        }
        return PullResult(
            model: package.model,
            version: package.version,
            digest: package.digest,
            signer: signer.name,
            files: files.map(\.path),
            bytes: done
        )
    }

    /// Verifies a version served remotely without trusting the server: the publisher's signature against
    /// `trusted`, a rekey record against `registryKeys`, and each blob streamed and checked against its signed
    /// SHA-256 and size.
    public static func verify(
        _ package: VersionPackage,
        fetcher: any BlobFetcher,
        trusting trusted: [PublicIdentity],
        registryKeys: [PublicIdentity]
    ) throws(CofferRegistryError) -> VerifyReport {
        let (files, signer, _) = try verifiedFiles(package, trusting: trusted, registryKeys: registryKeys)
        for file in files {
            let source = try fetcher.blob(file.sealedSHA256, size: file.sealedSize)
            let (digest, size): ([UInt8], Int)
            do { (digest, size) = try Digest.sha256(of: source) } catch {
                if case .io(let path, let reason) = error { throw .io(path: path, reason: reason) }
                throw .crypto(error)
            }
            guard Digest.hex(digest) == file.sealedSHA256, size == file.sealedSize else {
                throw .tampered("blob of \(file.path) does not match its signed SHA-256")
            }
        }
        return VerifyReport(
            model: package.model,
            version: package.version,
            digest: package.digest,
            signer: signer.name,
            signerKeyID: signer.keyID,
            files: files.count,
            readData: false
        )
    }
}
