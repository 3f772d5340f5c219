public import CofferCrypto
public import CofferRegistry
import Foundation
import NIOHTTP1
import Synchronization

extension CofferClient {
    /// `GET /v1/ledger?after=&limit=`: up to `limit` (at most 10000) signed records after record `after`.
    public func ledgerPage(after: Int64, limit: Int) async throws(CofferClientError) -> LedgerPage {
        try await call(
            .GET,
            "v1/ledger",
            query: [URLQueryItem(name: "after", value: String(after)), URLQueryItem(name: "limit", value: String(limit))],
            as: LedgerPage.self
        )
    }

    /// `GET /v1/ledger/head`: the newest state head the registry key signed (checked by ``ledger(registryKey:)``).
    public func stateHead() async throws(CofferClientError) -> DSSEEnvelope {
        let (url, body) = try await raw(.GET, "v1/ledger/head")
        do { return try DSSEEnvelope(jsonBytes: Array(body)) } catch { throw .badAnswer(url: url, reason: "not a DSSE envelope (\(error))") }
    }

    /// The registry's ledger, synced from what this client remembers and replayed here against the root it pinned
    /// (pinning it on first use, which ``notice`` reports), with its state head checked for freshness.
    ///
    /// - Parameter registryKey: a key of the registry given out of band: the replayed key chain must hold it.
    public func ledger(registryKey: PublicIdentity? = nil) async throws(CofferClientError) -> RemoteLedger {
        let location = ClientMemory.location(url: baseURL)
        let ledger = try await reading { source throws(CofferRegistryError) in
            try await RemoteLedger.sync(from: source, location: location, key: registryKey, memory: memory)
        }
        if ledger.pinnedNow, registryKey == nil {
            notice("first use of \(baseURL): pinned its root key \(ledger.state.registry) (check it with the registry's owner)")
        }
        return ledger
    }

    /// Runs a replay over this client's ledger routes. A transport failure or a server's refusal is thrown as the
    /// ``CofferClientError`` it was, not as the registry error the replay had to make of it.
    func reading<T>(_ body: (LedgerReader) async throws(CofferRegistryError) -> T) async throws(CofferClientError) -> T {
        let reader = LedgerReader(client: self)
        do { return try await body(reader) } catch {
            if let failure = reader.failure.withLock({ $0 }) { throw failure }
            throw .registry(error)
        }
    }
}

/// The client's ledger routes as the registry's ``LedgerSource``: records decoded and checked to come in order.
final class LedgerReader: LedgerSource, Sendable {
    let client: CofferClient
    /// The first failure of a request, kept so that the caller can throw it whole.
    let failure = Mutex<CofferClientError?>(nil)

    init(client: CofferClient) { self.client = client }

    private func keep(_ error: CofferClientError) -> CofferRegistryError {
        failure.withLock { if $0 == nil { $0 = error } }
        return .unavailable(engine: client.baseURL.absoluteString, reason: error.description)
    }

    func records(after seq: Int64, limit: Int) async throws(CofferRegistryError) -> [[UInt8]] {
        let page: LedgerPage
        do { page = try await client.ledgerPage(after: seq, limit: limit) } catch { throw keep(error) }
        var expected = seq
        return try page.records.map { entry throws(CofferRegistryError) in
            expected += 1
            guard entry.seq == expected, let bytes = Data(base64Encoded: entry.envelope) else {
                throw .tampered("\(client.baseURL) sent ledger records out of order or unreadable")
            }
            return Array(bytes)
        }
    }

    func stateHead() async throws(CofferRegistryError) -> DSSEEnvelope {
        do { return try await client.stateHead() } catch {
            // An envelope that does not parse is the server's tampering, not a transport failure.
            if case .badAnswer(let url, let reason) = error { throw .tampered("\(url)/v1/ledger/head: \(reason)") }
            throw keep(error)
        }
    }
}
