import AsyncHTTPClient
public import CofferCrypto
public import CofferRegistry
import Foundation
import NIOCore
import NIOHTTP1

extension CofferClient {
    // MARK: - Versions

    /// `GET /v1/versions`: versions newest first, as the server reports them (the shape of `coffer list --json`).
    ///
    /// - Parameters:
    ///   - model: only this model.
    ///   - filter: a `where` expression, e.g. `epsilon<=3 and mechanism='dp-sgd'`.
    ///   - limit: at most this many (the server allows 1 to 100000).
    public func versions(model: String? = nil, where filter: String? = nil, limit: Int = 100) async throws(CofferClientError) -> [JSONValue] {
        var query = [URLQueryItem(name: "limit", value: String(limit))]
        if let model { query.append(URLQueryItem(name: "model", value: model)) }
        if let filter { query.append(URLQueryItem(name: "where", value: filter)) }
        // Decoded as JSONValue, which takes about 40 times its bytes: a server's answer is held to 16 KiB a version asked
        // for (a 32 MB answer drove `coffer list` to 1.2 GB, helper-38).
        return try await call(
            .GET,
            "v1/versions",
            query: query,
            limit: min(Self.answerLimit, (1 << 20) + min(max(0, limit), 100_000) * (16 << 10)),
            as: [JSONValue].self
        )
    }

    /// `GET /v1/version?ref=`: one version with its files, as the server describes it (`coffer show --json`'s shape).
    public func version(_ reference: String) async throws(CofferClientError) -> JSONValue {
        try await call(.GET, "v1/version", query: [URLQueryItem(name: "ref", value: reference)], limit: 16 << 20, as: JSONValue.self)
    }

    /// `GET /v1/verify?ref=`: the server's own check of a version (a client that pulls checks again itself).
    public func serverVerify(_ reference: String) async throws(CofferClientError) -> VerifyAnswer {
        try await call(.GET, "v1/verify", query: [URLQueryItem(name: "ref", value: reference)], as: VerifyAnswer.self)
    }

    /// `GET /v1/package?ref=&key_id=`: a version's signed documents, and the data key wrapped for `keyID` when the
    /// token's principal may decrypt.
    public func package(_ reference: String, keyID: String? = nil) async throws(CofferClientError) -> VersionPackage {
        var query = [URLQueryItem(name: "ref", value: reference)]
        if let keyID { query.append(URLQueryItem(name: "key_id", value: keyID)) }
        return try await call(.GET, "v1/package", query: query, as: VersionPackage.self)
    }

    /// `GET /v1/registry`: the identity the server says is the registry's (clients pin the ledger's root instead).
    public func registryIdentity() async throws(CofferClientError) -> PublicIdentity {
        let (url, body) = try await raw(.GET, "v1/registry")
        do { return try PublicIdentity(jsonBytes: Array(body)) } catch { throw .badAnswer(url: url, reason: "not a public identity (\(error))") }
    }

    // MARK: - Blobs

    /// `GET /v1/blobs/{sha256}`, whole or `range` of it (`Range: bytes=a-b`, answered 206): the ciphertext as it
    /// arrives, read from the socket only as fast as the caller consumes it.
    ///
    /// - Throws: ``CofferClientError/server(url:status:message:)`` (404, 416 for a range outside the blob), or
    ///   ``CofferClientError/badAnswer(url:reason:)`` when the server sends other bytes than asked for.
    public func blob(_ digest: String, range: Range<Int>? = nil) async throws(CofferClientError) -> BlobStream {
        var headers: [(String, String)] = []
        if let range {
            guard !range.isEmpty, range.lowerBound >= 0 else { throw .invalidInput("a blob range must hold at least one byte") }
            headers.append(("Range", "bytes=\(range.lowerBound)-\(range.upperBound - 1)"))
        }
        let (url, response) = try await exchange(.GET, "v1/blobs/\(Self.pathSegment(digest))", headers: headers, accepting: [200, 206])
        let length = response.headers.first(name: "Content-Length").flatMap(Int.init)
        if let range {
            let expected = "bytes \(range.lowerBound)-\(range.upperBound - 1)/"
            guard response.status == .partialContent, response.headers.first(name: "Content-Range")?.hasPrefix(expected) == true,
                length == range.count
            else { throw .badAnswer(url: url, reason: "asked for bytes \(range.lowerBound)..<\(range.upperBound), it sent others") }
        } else if response.status != .ok {
            throw .badAnswer(url: url, reason: "asked for the whole blob, it answered \(response.status.code)")
        }
        return BlobStream(length: length, response.body)
    }

    /// A whole blob or a range of it, collected in memory (for small blobs and ranges; ``blob(_:range:)`` streams).
    public func blobBytes(_ digest: String, range: Range<Int>? = nil, limit: Int = 64 << 20) async throws(CofferClientError) -> [UInt8] {
        let stream = try await blob(digest, range: range)
        var bytes: [UInt8] = []
        do {
            for try await piece in stream {
                guard bytes.count + piece.readableBytes <= limit else {
                    throw CofferClientError.invalidInput("blob \(digest) is over \(limit) bytes")
                }
                bytes += piece.readableBytesView
            }
        } catch let error as CofferClientError {
            throw error
        } catch {
            throw .unreachable(url: baseURL.absoluteString, reason: "blob \(digest) broke off: \(Self.describe(error))")
        }
        return bytes
    }

    // MARK: - Aliases, budgets, audit

    /// `PUT /v1/alias?ref=NAME@ALIAS`: points the alias at `version` (publisher role; the model's policies apply).
    @discardableResult
    public func setAlias(_ alias: String, of model: String, to version: String) async throws(CofferClientError) -> AliasAnswer {
        try await call(
            .PUT,
            "v1/alias",
            query: [URLQueryItem(name: "ref", value: "\(model)@\(alias)")],
            json: SetAliasRequest(version: version),
            as: AliasAnswer.self
        )
    }

    /// `DELETE /v1/alias?ref=NAME@ALIAS`.
    public func removeAlias(_ alias: String, of model: String) async throws(CofferClientError) {
        _ = try await raw(.DELETE, "v1/alias", query: [URLQueryItem(name: "ref", value: "\(model)@\(alias)")])
    }

    /// `GET /v1/budgets/{dataset}`.
    public func budget(dataset: String) async throws(CofferClientError) -> BudgetStatus {
        try await call(.GET, "v1/budgets/\(Self.pathSegment(dataset))", as: BudgetStatus.self)
    }

    /// `PUT /v1/budgets/{dataset}` (admins only); answers the budget as it is now.
    @discardableResult
    public func setBudget(dataset: String, epsilon: Double, delta: Double, models: [String]? = nil) async throws(CofferClientError) -> BudgetStatus {
        try await call(
            .PUT,
            "v1/budgets/\(Self.pathSegment(dataset))",
            json: SetBudgetRequest(epsilon: epsilon, delta: delta, models: models),
            as: BudgetStatus.self
        )
    }

    /// `GET /v1/audit?since=`: the audit log, oldest first (admin tokens only).
    public func audit(since: String? = nil) async throws(CofferClientError) -> [AuditEntry] {
        try await call(.GET, "v1/audit", query: since.map { [URLQueryItem(name: "since", value: $0)] } ?? [], as: [AuditEntry].self)
    }
}
