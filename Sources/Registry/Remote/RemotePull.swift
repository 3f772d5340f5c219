public import CofferCrypto
public import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// What a remote client asked for and what its own replay of the ledger says of it: the server's package must match.
public struct RemoteExpectation: Sendable {
    public var model: String
    public var version: String
    /// The digest the ledger recorded (for `NAME` and `NAME@ALIAS`), when known before the package arrives.
    public var digest: String?
    /// The alias the version was reached through: its policies are checked here too.
    public var alias: String?
    public var ledger: LedgerState

    public init(_ reference: ModelReference, ledger: RemoteLedger) throws(CofferRegistryError) {
        let (version, digest) = try ledger.resolve(reference)
        model = reference.name
        self.version = version
        self.digest = digest
        if case .alias(let name) = reference.selector { alias = name }
        self.ledger = ledger.state
    }

    /// The explicit reference to ask the server for.
    public var reference: String { "\(model):\(version)" }
}

/// The HTTP client's side of `GET /v1/blobs/{digest}`: a blob's ciphertext as a stream of `size` bytes (the size
/// the publisher signed; a server that sends more or fewer is an error of the stream).
public protocol BlobFetcher: Sendable {
    func blob(_ digest: String, size: Int) throws(CofferRegistryError) -> any ByteSource
}

extension Registry {
    /// The package of a version for a remote client (`keyID`'s stanza only when `includeKey`), audited as a pull by
    /// `principal`: the release of a wrapped key is what lets a client decrypt. A server passes the registry key it
    /// holds as `registryIdentity`: a principal allowed to decrypt (`includeKey`) who holds no key for the version yet
    /// (granted without the registry key, or a version older than its grant) gets one wrapped for its own registered
    /// key now, and kept.
    public func package(
        _ reference: ModelReference,
        keyID: String?,
        includeKey: Bool,
        for principal: String,
        registryIdentity: UnlockedIdentity? = nil
    ) async throws(CofferRegistryError) -> VersionPackage {
        let stored = try await loadVersion(try await resolveForUse(reference).id)
        try stored.ensureNotErased()
        guard let envelope = stored.envelope, let bundle = stored.modelSignature else {
            throw .tampered("\(stored.model):\(stored.version) has no signed statement")
        }
        var stanza: Data? = nil
        var madeNow = false
        if includeKey, let keyID {
            stanza = try await metadata.wrappedKey(version: stored.id, recipient: keyID)
            // Only for the principal's own key as the ledger names it: a caller cannot have a key wrapped for another.
            if stanza == nil, let registryIdentity, let grantee = try await ledgerState().principals[principal], grantee.keyID == keyID {
                try await requireCurrentRegistryKey(registryIdentity)
                let head = VersionHead(id: stored.id, model: stored.model, version: stored.version, digest: stored.digest)
                // Committed on the ledger's end, and only while the principal still holds decrypt there: a revocation
                // that lands first leaves no key behind it.
                let made = try await commitOnLedger { (state, work) async throws(CofferRegistryError) -> WrappedKeyRecord? in
                    guard state.holds(principal, .decrypt, on: stored.model),
                        let made = try await self.wrapWithRegistryKey([head], for: grantee, registryIdentity: registryIdentity).first
                    else { return nil }
                    work.changes.append(.putWrappedKeys([made]))
                    return made
                }
                if let made {
                    stanza = made.stanza
                    madeNow = true
                }
            }
        }
        let record = try await metadata.firstLedgerRecord(kind: "version", object: "version:\(stored.model):\(stored.version)")?.envelope
        // Honest entries: a package asked for without a key is a remote verify (or show); one asked for with a key that
        // is not released is a pull that fails, since the client cannot decrypt.
        let action = keyID == nil ? "verify" : "pull"
        let reason: String
        if let keyID {
            reason =
                stanza != nil
                ? "remote: wrapped key \(keyID) \(madeNow ? "wrapped on demand and " : "")released"
                : "remote: no wrapped key released for \(keyID) (\(includeKey ? "not a recipient of this version" : "no decrypt role"))"
        } else {
            reason = "remote: signed documents only"
        }
        try await audit(
            principal: principal,
            action: action,
            target: "\(stored.model):\(stored.version)",
            outcome: keyID != nil && stanza == nil ? .failed : .ok,
            reason: reason
        )
        return VersionPackage(
            model: stored.model,
            version: stored.version,
            digest: stored.digest,
            dsse: envelope.base64EncodedString(),
            modelSigning: bundle.base64EncodedString(),
            rekey: stored.rekeyEnvelope?.base64EncodedString(),
            stanza: stanza?.base64EncodedString(),
            record: record?.base64EncodedString()
        )
    }
}

/// Pulling from a registry served over HTTP: the server is not trusted for integrity. The client verifies the
/// publisher's signature against its own trusted signers (and a rekey record against the registry key it was
/// given), unwraps its own key, and decrypts each blob's ciphertext as it arrives (every chunk authenticated, the
/// plaintext digest checked) into the staging folder of a local pull: nothing is placed in `directory` unless
/// every file passed, and no ciphertext is written anywhere.
public enum RemotePull {
    /// Everything checked before a byte of ciphertext is fetched: the package is the version asked for (model,
    /// version, and the digest the client's own ledger replay names), committed to this registry (its `version`
    /// record), not erased, signed by a publisher in `trusted` (by default the ledger's trusted signers), within the
    /// policies of the alias it was reached through, and a rekey only under the registry's key chain. Returns the
    /// files as stored now, the signer and the model-signing bundle.
    static func verifiedFiles(
        _ package: VersionPackage,
        expected: RemoteExpectation,
        trusting trusted: [PublicIdentity]?
    ) throws(CofferRegistryError) -> (files: [ModelStatement.File], signer: PublicIdentity, bundle: Data) {
        let (statement, signer, bundle) = try verifiedStatement(package, expected: expected, trusting: trusted)
        return (statement.files, signer, bundle)
    }

    /// The digest of the version `expected` names, from the ledger record sent with `package` once it is confirmed to be
    /// the record replayed at its place (``RemoteLedger/confirmedVersion(_:in:from:)``): the reader then judges that
    /// record and the version's charges against its statement (``Registry/checkRecord(_:of:in:label:)``), and a server
    /// holding the registry key could otherwise sign a record that never entered the ledger. For an explicit version
    /// the replay gives no digest and the confirmed record's binds the package; for `NAME` and `NAME@ALIAS` the record
    /// must name the digest the replay gave (helper-72: an alias read took a forged record).
    public static func confirmedDigest(
        _ package: VersionPackage,
        expected: RemoteExpectation,
        from source: any LedgerSource
    ) async throws(CofferRegistryError) -> String {
        guard let text = package.record, let envelope = Data(base64Encoded: text) else {
            throw .tampered("\(expected.reference): the server sent no ledger record for it")
        }
        let confirmed = try await RemoteLedger.confirmedVersion(Array(envelope), in: expected.ledger, from: source)
        guard confirmed.model == expected.model, confirmed.version == expected.version, expected.digest ?? confirmed.digest == confirmed.digest
        else { throw .tampered("\(expected.reference): the ledger record the server sent names another version than the ledger") }
        return confirmed.digest
    }

    /// ``verifiedFiles(_:expected:trusting:)`` with the whole verified statement (its files as stored now): what a
    /// remote `show` prints instead of the server's description.
    public static func verifiedStatement(
        _ package: VersionPackage,
        expected: RemoteExpectation,
        trusting trusted: [PublicIdentity]?
    ) throws(CofferRegistryError) -> (statement: ModelStatement, signer: PublicIdentity, bundle: Data) {
        let label = "\(expected.model):\(expected.version)"
        let ledger = expected.ledger
        guard package.model == expected.model, package.version == expected.version else {
            throw .tampered("asked for \(label), the server sent \(package.model):\(package.version)")
        }
        if let digest = expected.digest, package.digest != digest {
            throw .tampered(
                "\(label): the server sent a version with digest \(package.digest.prefix(12))..., the ledger names \(digest.prefix(12))..."
            )
        }
        guard let document = Data(base64Encoded: package.dsse), let bundle = Data(base64Encoded: package.modelSigning) else {
            throw .tampered("\(label): the server sent unreadable documents")
        }
        let (statement, signer) = try Registry.verifySigned(
            envelope: document,
            bundle: bundle,
            trusting: trusted ?? ledger.trustedIdentities,
            model: expected.model,
            version: expected.version,
            digest: package.digest
        )
        guard let text = package.record, let envelope = Data(base64Encoded: text) else {
            throw .tampered("\(label): the server sent no ledger record for it")
        }
        // The record binds the statement to this registry: its digest, and the publisher who signed the statement (a
        // record any other key signed for another registry's genuine statement is refused).
        let facts = try Registry.checkVersionRecord(
            try Registry.parse(Array(envelope)),
            model: expected.model,
            version: expected.version,
            state: ledger
        )
        guard facts.digest == package.digest, facts.publisher.keyID == signer.keyID else {
            throw .tampered("\(label): the ledger record the server sent names another version or publisher")
        }
        try Registry.checkRecord(facts, of: statement, in: ledger, label: label)
        if let erasure = ledger.erased[package.digest] { throw .erased("\(label) was erased at \(erasure.at) by \(erasure.by)") }
        if let alias = expected.alias {
            let facts = LedgerChange.AliasFacts(privacy: statement.privacy, signer: signer.keyID, charged: ledger.isCharged(package.digest))
            for (_, rules) in ledger.policies(model: expected.model, alias: alias) {
                if let why = rules.violation(facts: facts, signerName: ledger.trusted[signer.keyID]?.name) {
                    throw .policyViolation("alias \(alias) of \(expected.model) \(why)")
                }
            }
        }
        var files = statement.files.sorted { $0.path < $1.path }
        let recordedRekey = ledger.rekeys[package.digest]
        if let rekey = package.rekey {
            guard let attestation = Data(base64Encoded: rekey), recordedRekey == Digest.hex(Digest.sha256(Array(attestation))) else {
                throw .tampered("\(label): the rekey attestation the server sent is not the one the ledger records")
            }
            files = try Registry.verifyRekey(
                attestation,
                registryKeys: ledger.keys.map(\.identity),
                model: package.model,
                version: package.version,
                digest: package.digest,
                signed: files
            )
        } else if recordedRekey != nil {
            throw .tampered("\(label) was re-encrypted, but the server withheld the record of its new blobs")
        }
        var current = statement
        current.files = files
        return (current, signer, bundle)
    }

    public static func pull(
        _ package: VersionPackage,
        expected: RemoteExpectation,
        fetcher: any BlobFetcher,
        identity: borrowing Identity,
        trusting trusted: [PublicIdentity]?,
        into directory: String
    ) async throws(CofferRegistryError) -> PullResult {
        let label = "\(package.model):\(package.version)"
        let (files, signer, bundle) = try verifiedFiles(package, expected: expected, trusting: trusted)
        guard let text = package.stanza, let stanza = Data(base64Encoded: text) else { throw .notARecipient(label) }
        let dataKey: KeyBox
        do { dataKey = KeyBox(try WrappedKey(encoded: Array(stanza)).unwrap(with: identity)) } catch {
            throw .notARecipient(label)
        }
        // Fetching blocks on the network and decrypting on the CPU: neither on Swift's cooperative pool.
        let done = try await Offload.run { () throws(CofferRegistryError) -> Int in
            try Registry.place(files, into: directory, modelSignature: bundle) {
                (file: ModelStatement.File, output: AtomicOutputFile, _: Int) throws(CofferRegistryError) in
                let source = try fetcher.blob(file.sealedSHA256, size: file.sealedSize)
                try Registry.openBlob(from: source, file, dataKey: dataKey.key, into: output, checkingBlobDigest: false)
            }
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
        expected: RemoteExpectation,
        fetcher: any BlobFetcher,
        trusting trusted: [PublicIdentity]?
    ) async throws(CofferRegistryError) -> VerifyReport {
        let (files, signer, _) = try verifiedFiles(package, expected: expected, trusting: trusted)
        for file in files {
            let source = Unchecked(try fetcher.blob(file.sealedSHA256, size: file.sealedSize))
            let hashed = await Offload.run { () -> Result<([UInt8], Int), CofferCryptoError> in
                Result { () throws(CofferCryptoError) in try Digest.sha256(of: source.value) }
            }
            let (digest, size): ([UInt8], Int)
            do { (digest, size) = try hashed.get() } catch {
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
