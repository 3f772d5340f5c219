public import CofferCrypto
public import Foundation

/// A change only an admin's own key may sign (a token, a grant, a revocation), asked for on a web page: the server
/// signs the request, never the record, and an admin approves it with `coffer approve`, which signs the record with
/// the admin's key (docs/FORMAT.md, "Change requests"). Stateless: the text carries everything.
public struct ChangeRequest: Sendable, Equatable {
    public static let payloadType = "application/vnd.coffer.request.v1+json"
    static let type = "coffer/request/v1"
    static let prefix = "cfr1."
    /// Long enough for an admin to be reached the same day, short enough that a forgotten request dies.
    static let lifetime: TimeInterval = 24 * 3600

    public var registry: String
    /// 16 random hex digits: approved once only (the `request.approve` audit entry names it).
    public var id: String
    public var filedBy: String
    public var filedAt: String
    public var expires: String
    public var change: LedgerChange
    /// What `coffer approve` takes: `cfr1.` and the base64url of the signed envelope.
    public var text: String
    var envelope: DSSEEnvelope

    /// The kinds a request may carry: what the pages may ask for and only an admin may sign.
    static func isRequestable(_ change: LedgerChange) -> Bool {
        switch change {
        case .tokenCreate, .grant, .revoke: true
        default: false
        }
    }

    /// Signs a request for `change` with the registry's current key.
    static func file(
        _ change: LedgerChange,
        registry: String,
        by principal: String,
        key: UnlockedIdentity,
        now: Date
    ) -> ChangeRequest {
        let filedAt = Registry.timestamp(now)
        let expires = Registry.timestamp(now.addingTimeInterval(lifetime))
        let id = Digest.hex((0..<8).map { _ in UInt8.random(in: 0...255) })
        let payload = JSONValue.object([
            "type": .string(type), "registry": .string(registry), "id": .string(id), "filed_by": .string(principal),
            "filed_at": .string(filedAt), "expires": .string(expires), "kind": .string(change.kind), "change": .object(change.fields),
        ]).canonicalBytes
        let envelope = DSSEEnvelope.sign(payload: payload, payloadType: payloadType, identity: key.identity)
        return ChangeRequest(
            registry: registry,
            id: id,
            filedBy: principal,
            filedAt: filedAt,
            expires: expires,
            change: change,
            text: prefix + Self.base64url(envelope.jsonBytes),
            envelope: envelope
        )
    }

    private init(
        registry: String,
        id: String,
        filedBy: String,
        filedAt: String,
        expires: String,
        change: LedgerChange,
        text: String,
        envelope: DSSEEnvelope
    ) {
        self.registry = registry
        self.id = id
        self.filedBy = filedBy
        self.filedAt = filedAt
        self.expires = expires
        self.change = change
        self.text = text
        self.envelope = envelope
    }

    /// Reads a request's text. The signature is not checked here: only the registry's ledger knows its current key
    /// (``Registry/approve(_:registryIdentity:by:now:)`` checks it).
    public init(text: String) throws(CofferRegistryError) {
        func malformed(_ why: String) -> CofferRegistryError { .refused("not a change request: \(why)") }
        let trimmed = text.trimmingCharacters(in: .whitespacesAndNewlines)
        guard trimmed.hasPrefix(Self.prefix), let bytes = Self.base64urlDecoded(trimmed.dropFirst(Self.prefix.count)) else {
            throw malformed("expected cfr1. and base64url, as the page showed it")
        }
        let envelope: DSSEEnvelope
        let payload: [UInt8]
        do {
            envelope = try DSSEEnvelope(jsonBytes: bytes)
            payload = try envelope.payloadBytes()
        } catch { throw malformed("its envelope does not parse") }
        guard envelope.payloadType == Self.payloadType, envelope.signatures.count == 1 else {
            throw malformed("its envelope is not a Coffer request's (one signature, \(Self.payloadType))")
        }
        if let reason = AmbiguousJSON.reason(in: payload) { throw malformed(reason) }
        guard case .object(let object)? = try? JSONDecoder().decode(JSONValue.self, from: Data(payload)),
            object["type"]?.stringValue == Self.type, let registry = object["registry"]?.stringValue,
            let id = object["id"]?.stringValue, let filedBy = object["filed_by"]?.stringValue,
            let filedAt = object["filed_at"]?.stringValue, let expires = object["expires"]?.stringValue,
            let kind = object["kind"]?.stringValue, case .object(let fields)? = object["change"]
        else { throw malformed("its payload lacks type, registry, id, filed_by, filed_at, expires, kind or change") }
        let change: LedgerChange
        do throws(LedgerError) { change = try LedgerChange(kind: kind, fields: fields) } catch { throw malformed(Registry.refusal(error)) }
        guard Self.isRequestable(change) else { throw malformed("a \(kind) change is not one a page may ask for") }
        // What approve prints and signs is only what a page could have asked for: names, hex, times it can parse. A
        // string holding a terminal's control sequence, a token living past a year, a request living past a day are
        // refused before anything is shown.
        guard Self.isHex(registry, count: 32) || Self.isHex(registry, count: 64), Self.isHex(id, count: 16) else {
            throw malformed("its registry or id is not hex")
        }
        guard (try? ModelReference.validate(name: filedBy)) != nil else { throw malformed("filed_by is not a principal's name") }
        guard let filed = Registry.date(filedAt), let until = Registry.date(expires), until > filed,
            until <= filed.addingTimeInterval(Self.lifetime)
        else { throw malformed("filed_at and expires are not two times at most 24 hours apart") }
        switch change {
        case .tokenCreate(let facts):
            guard Self.isHex(facts.id, count: 16), Self.isHex(facts.hash, count: 64), (try? ModelReference.validate(name: facts.principal)) != nil,
                let tokenExpires = Registry.date(facts.expires), tokenExpires > filed,
                tokenExpires <= filed.addingTimeInterval(Registry.maximumLifetime)
            else { throw malformed("its token is not a 16-digit id and a hash for a principal, living at most 365 days") }
        case .grant(let grant), .revoke(let grant):
            guard (try? ModelReference.validate(name: grant.principal)) != nil,
                grant.scope == "*"
                    || (try? ModelReference.validate(name: grant.scope.hasSuffix("/") ? String(grant.scope.dropLast()) : grant.scope)) != nil,
                grant.alias.map({ (try? ModelReference.validate(name: $0)) != nil && !$0.contains("/") }) ?? true
            else { throw malformed("its grant names no principal, scope or alias Coffer takes") }
        default: break
        }
        self.init(
            registry: registry,
            id: id,
            filedBy: filedBy,
            filedAt: filedAt,
            expires: expires,
            change: change,
            text: trimmed,
            envelope: envelope
        )
    }

    static func isHex(_ text: String, count: Int) -> Bool {
        text.utf8.count == count && text.utf8.allSatisfy { (0x30...0x39).contains($0) || (0x61...0x66).contains($0) }
    }

    /// What the request asks for, in words: what `coffer approve` prints before it signs.
    public var summary: String {
        switch change {
        case .tokenCreate(let facts): "a \(facts.scope.rawValue) token \(facts.id) for \(facts.principal), until \(facts.expires)"
        case .grant(let grant): "grant \(grant.principal) \(grant.summary)"
        case .revoke(let grant): "revoke \(grant.principal)'s \(grant.summary)"
        default: change.kind
        }
    }

    static func base64url(_ bytes: [UInt8]) -> String {
        Data(bytes).base64EncodedString().replacingOccurrences(of: "+", with: "-").replacingOccurrences(of: "/", with: "_")
            .replacingOccurrences(of: "=", with: "")
    }

    static func base64urlDecoded(_ text: Substring) -> [UInt8]? {
        guard text.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "-" || $0 == "_") }) else { return nil }
        var standard = text.replacingOccurrences(of: "-", with: "+").replacingOccurrences(of: "_", with: "/")
        standard += String(repeating: "=", count: (4 - standard.count % 4) % 4)
        return Data(base64Encoded: standard).map(Array.init)
    }
}

/// A token request just filed: the request, and the token it will mint, shown once beside it.
public struct FiledTokenRequest: ~Copyable {
    public let request: ChangeRequest
    public let token: SessionToken
}

extension Registry {
    /// Files a request for a token (docs/FORMAT.md, "Change requests") for the holder of an admin token, signed with
    /// the registry's key: the token is drawn now and opens nothing until an admin approves the request.
    public func requestToken(
        principal name: String,
        scope: TokenScope,
        ttl: TimeInterval,
        filedBy holder: Principal,
        key: UnlockedIdentity,
        now: Date = Date()
    ) async throws(CofferRegistryError) -> FiledTokenRequest {
        try await require(.admin, on: nil, by: holder, action: "request.file", target: "token:\(name)")
        let draft = try await draftToken(principal: name, scope: scope, ttl: ttl, in: try await ledgerState(), now: now)
        let request = try await file(.tokenCreate(draft.facts), by: holder, key: key, now: now)
        return FiledTokenRequest(request: request, token: draft.token)
    }

    /// Files a request to grant (or, with `revoking`, to revoke) `grant`, for the holder of an admin token.
    public func requestGrant(
        _ grant: Grant,
        revoking: Bool,
        filedBy holder: Principal,
        key: UnlockedIdentity,
        now: Date = Date()
    ) async throws(CofferRegistryError) -> ChangeRequest {
        try await require(.admin, on: nil, by: holder, action: "request.file", target: "principal:\(grant.principal)")
        let state = try await ledgerState()
        guard state.principals[grant.principal] != nil else { throw .unknownPrincipal(grant.principal) }
        if revoking {
            guard let held = state.grants.first(where: { $0.names(grant) }) else {
                throw .refused("\(grant.principal) holds no \(grant.summary) grant")
            }
            return try await file(.revoke(held), by: holder, key: key, now: now)
        }
        if grant.hasLimits, grant.role != .inference { throw .refused("session and prediction limits apply to inference grants only") }
        return try await file(.grant(grant), by: holder, key: key, now: now)
    }

    private func file(
        _ change: LedgerChange,
        by holder: Principal,
        key: UnlockedIdentity,
        now: Date
    ) async throws(CofferRegistryError) -> ChangeRequest {
        let state = try await ledgerState()
        guard key.publicIdentity.keyID == state.currentKey?.keyID else {
            throw .registryKeyRetired(held: key.publicIdentity.keyID, current: state.currentKey?.keyID ?? "-")
        }
        let request = ChangeRequest.file(change, registry: state.registry, by: holder.name, key: key, now: now)
        try await audit(principal: holder.name, action: "request.file", target: change.object, outcome: .ok, reason: request.summary)
        return request
    }

    /// Approves a request with an admin's own key: checks the server's signature under the registry's current key,
    /// the registry, the expiry, and then makes the change exactly as `token create`, `grant` or `revoke` would (their
    /// checks made again on today's state). Returns the versions to rekey after a revocation, as ``revokeReporting``.
    @discardableResult
    public func approve(
        _ request: ChangeRequest,
        registryIdentity: UnlockedIdentity? = nil,
        by signer: Signer,
        now: Date = Date()
    ) async throws(CofferRegistryError) -> [String] {
        let state = try await ledgerState()
        guard request.registry == state.registry else {
            throw .refused("the request was filed for registry \(request.registry), not this one (\(state.registry))")
        }
        guard let current = state.currentKey, (try? request.envelope.verify(trusting: [current])) != nil else {
            throw .refused("the request is not signed by this registry's current key \(state.currentKey?.keyID ?? "-"): file it again")
        }
        guard let expires = Self.date(request.expires), now < expires else {
            throw .refused("the request expired at \(request.expires): file it again")
        }
        // The request speaks for whoever filed it: someone no longer an admin has nothing left to ask for.
        guard state.principals[request.filedBy] != nil, state.holds(request.filedBy, .admin, on: nil) else {
            throw .refused("the request was filed by \(request.filedBy), who is no longer an admin")
        }
        // Once only: a grant approved, then revoked, does not come back from the same request.
        let approvals = try await metadata.auditEntries(before: nil, principal: nil, action: "request.approve", limit: Int.max)
        guard !approvals.contains(where: { $0.target == "request:\(request.id)" }) else {
            throw .refused("request \(request.id) was approved already")
        }
        let actor = try acting(signer, in: state).principal.name
        var toRekey: [String] = []
        switch request.change {
        case .tokenCreate(let facts):
            try await require(signer, .admin, on: nil, action: "token.create", target: facts.principal)
            guard state.tokens[facts.id] == nil, !state.tokens.values.contains(where: { $0.facts.hash == facts.hash }) else {
                throw .refused("token \(facts.id) was minted already: this request was approved before")
            }
            guard let tokenExpires = Self.date(facts.expires), now < tokenExpires else {
                throw .refused("the token would have expired at \(facts.expires)")
            }
            try Self.checkTokenScope(principal: facts.principal, scope: facts.scope, in: state)
            try await record(
                .tokenCreate(facts),
                signer: signer,
                action: "token.create",
                target: facts.id,
                reason: "\(facts.principal) \(facts.scope.rawValue) until \(facts.expires)"
            )
        case .grant(let grant):
            _ = try await grantWrapping(grant, registryIdentity: registryIdentity, by: signer)
        case .revoke(let grant):
            guard let removed = try await revokeReporting(grant, by: signer) else {
                throw .refused("\(grant.principal) no longer holds \(grant.summary)")
            }
            toRekey = removed
        default:
            throw .refused("a \(request.change.kind) change is not one a page may ask for")
        }
        try await audit(
            principal: actor,
            action: "request.approve",
            target: "request:\(request.id)",
            outcome: .ok,
            reason: "\(request.summary), filed by \(request.filedBy) at \(request.filedAt)"
        )
        return toRekey
    }
}
