public import CofferCrypto
public import CofferRegistry
import Foundation
import NIOCore

extension CofferClient {
    /// Pulls a version, trusting the server for nothing: `reference` is resolved on this client's replay of the
    /// registry's ledger, the publisher's signature is checked against `trusted` (by default the ledger's trusted
    /// signers), and each blob is decrypted as it streams in, every chunk authenticated and every plaintext digest
    /// checked, into `directory`: nothing is placed there unless every file passed.
    ///
    /// - Parameters:
    ///   - identity: a recipient of the version; its key id is sent so the server hands over its wrapped key.
    ///   - registryKey: a key of the registry given out of band: the replayed key chain must hold it.
    public func pull(
        _ reference: ModelReference,
        identity: borrowing Identity,
        into directory: String,
        trusting trusted: [PublicIdentity]? = nil,
        registryKey: PublicIdentity? = nil
    ) async throws(CofferClientError) -> PullResult {
        var expected = try await expectation(reference, registryKey: registryKey)
        let package = try await package(for: &expected, keyID: identity.publicIdentity.keyID)
        do {
            return try await RemotePull.pull(package, expected: expected, fetcher: self, identity: identity, trusting: trusted, into: directory)
        } catch {
            throw .registry(error)
        }
    }

    /// Verifies a version without trusting the server: reference, ledger record, signature and every blob's SHA-256,
    /// checked here (plaintext digests need a pull).
    public func verify(
        _ reference: ModelReference,
        trusting trusted: [PublicIdentity]? = nil,
        registryKey: PublicIdentity? = nil
    ) async throws(CofferClientError) -> VerifyReport {
        var expected = try await expectation(reference, registryKey: registryKey)
        let package = try await package(for: &expected)
        do { return try await RemotePull.verify(package, expected: expected, fetcher: self, trusting: trusted) } catch {
            throw .registry(error)
        }
    }

    /// A version as this client checks it (the shape of `coffer show --json`): resolved on the replayed ledger, every
    /// signed field from the statement verified here; when it cannot be verified, the server's description marked
    /// `"verified": false` with the reason.
    public func show(_ reference: ModelReference) async throws(CofferClientError) -> JSONValue {
        var expected = try await expectation(reference, registryKey: nil)
        let reported = try await version(expected.reference)
        func unverified(_ error: CofferRegistryError) throws(CofferClientError) -> JSONValue {
            guard case .object(var fields) = reported else { throw .registry(error) }
            fields["verified"] = .bool(false)
            fields["verification"] = .string(error.description)
            return .object(fields)
        }
        do {
            let package = try await package(for: &expected)
            let (statement, signer, _) = try RemotePull.verifiedStatement(package, expected: expected, trusting: nil)
            var tags: [String: String] = [:]
            if case .object(let reportedTags)? = reported["tags"] { tags = reportedTags.compactMapValues(\.stringValue) }
            return VersionSummary(verified: statement, digest: package.digest, signer: signer, ledger: expected.ledger, reportedTags: tags).json
        } catch let error as CofferRegistryError {
            return try unverified(error)
        } catch CofferClientError.registry(let error) {
            return try unverified(error)  // the package's ledger record is not the one replayed
        } catch let error as CofferClientError {
            throw error
        } catch {
            throw .badAnswer(url: baseURL.absoluteString, reason: "\(error)")
        }
    }

    /// The package of the version `expected` names, its ledger record confirmed (``RemotePull/confirmedDigest``).
    func package(for expected: inout RemoteExpectation, keyID: String? = nil) async throws(CofferClientError) -> VersionPackage {
        let package = try await package(expected.reference, keyID: keyID)
        // An explicit version committed after this client's sync has a record beyond its replay: sync again, once. A
        // `NAME` or `NAME@ALIAS` read asked for a version this replay already holds.
        if expected.digest == nil, let text = package.record, let envelope = Data(base64Encoded: text),
            let seq = try? LedgerRecord(envelope: Array(envelope)).seq, seq > expected.ledger.seq
        {
            expected.ledger = try await ledger().state
        }
        let asked = expected
        expected.digest = try await reading { source throws(CofferRegistryError) in
            try await RemotePull.confirmedDigest(package, expected: asked, from: source)
        }
        return package
    }

    /// What `reference` names on this client's replay of the ledger.
    func expectation(_ reference: ModelReference, registryKey: PublicIdentity?) async throws(CofferClientError) -> RemoteExpectation {
        let ledger = try await ledger(registryKey: registryKey)
        do { return try RemoteExpectation(reference, ledger: ledger) } catch { throw .registry(error) }
    }
}

extension CofferClient: BlobFetcher {
    /// A blob's ciphertext as the registry's blocking ``ByteSource``, for the decrypting pipeline's threads: the
    /// request is made at the first read, and must offer exactly the `size` bytes the publisher signed.
    public func blob(_ digest: String, size: Int) throws(CofferRegistryError) -> any ByteSource {
        let name = url("v1/blobs/\(Self.pathSegment(digest))")
        return BlockingByteSource(length: size, name: name) { [self] in
            let stream = try await self.openBlob(digest, name: name)
            guard stream.length == size else {
                let offered = stream.length.map(String.init) ?? "an unknown number of"
                throw CofferRegistryError.io(path: name, reason: "the server offers \(offered) bytes; the publisher signed \(size)")
            }
            return BlobStream(length: size, DescribedFailures(base: stream, name: name))
        }
    }

    private func openBlob(_ digest: String, name: String) async throws(CofferRegistryError) -> BlobStream {
        do { return try await blob(digest, range: nil) } catch { throw .io(path: name, reason: Self.reason(error)) }
    }

    /// A client error without the URL a blob's name already carries.
    static func reason(_ error: CofferClientError) -> String {
        switch error {
        case .server(_, let status, let message): "answered \(status): \(message)"
        case .unreachable(_, let reason), .badAnswer(_, let reason): reason
        default: error.description
        }
    }
}

/// A blob's bytes whose transport failure (a server that died mid-download) is said in words, naming the blob.
struct DescribedFailures: AsyncSequence, Sendable {
    typealias Element = ByteBuffer
    let base: BlobStream
    let name: String

    struct AsyncIterator: AsyncIteratorProtocol {
        var base: BlobStream.AsyncIterator
        let name: String

        mutating func next() async throws -> ByteBuffer? {
            do { return try await base.next() } catch let error as CofferRegistryError {
                throw error
            } catch {
                throw CofferRegistryError.io(path: name, reason: "the download broke off: \(CofferClient.describe(error))")
            }
        }
    }

    func makeAsyncIterator() -> AsyncIterator { AsyncIterator(base: base.makeAsyncIterator(), name: name) }
}
