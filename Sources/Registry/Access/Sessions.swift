public import CofferCrypto
public import Foundation
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// A session just opened, with its token: shown once, then dropped (and wiped).
public struct OpenedSession: ~Copyable {
    public let info: SessionInfo
    public let token: SessionToken
}

struct ClaimedSession: Sendable {
    let info: SessionInfo
    let stored: StoredVersion
    /// The version's files as they are stored now (after any rekey), checked against the signed records.
    let files: [ModelStatement.File]
    let dataKey: KeyBox
}

/// A session as `session list` shows it (never its token).
public struct SessionInfo: Sendable, Equatable, Codable {
    public var id: String
    public var principal: String
    public var model: String
    public var version: String
    public var reference: String
    public var createdAt: String
    public var expiresAt: String
    public var maxUses: Int?
    public var uses: Int
    public var revokedAt: String?
}

extension Registry {
    /// Opens an inference session on `reference` for the principal `identity` acts as (it needs the inference role
    /// on the model, or on the alias named): verifies the version's signature, unwraps its data key with `identity`,
    /// and re-wraps it under the new token. The token is returned once and never stored.
    public func openSession(
        _ reference: ModelReference,
        identity: UnlockedIdentity,
        ttl: TimeInterval,
        maxUses: Int? = nil,
        now: Date = Date()
    ) async throws(CofferRegistryError) -> OpenedSession {
        let actor = try await principal(for: identity.identity)
        do {
            return try await openSession(reference, principal: actor, unwrappingWith: identity, ttl: ttl, maxUses: maxUses, now: now)
        } catch .notARecipient(let label) {
            // An inference-only principal never holds a data key (it could decrypt with it): a server opens its sessions.
            throw .refused(
                "\(actor.name) holds no key for \(label): an inference grant opens sessions through coffer serve (--registry), which holds the registry's key"
            )
        }
    }

    /// Refuses (audited) `actor` unless it holds the inference role on the model `reference` names (through its alias,
    /// when it names one): the first check of opening a session, for a server to make before it takes a slot.
    public func requireInference(_ reference: ModelReference, by actor: Principal) async throws(CofferRegistryError) {
        var alias: String? = nil
        if case .alias(let name) = reference.selector { alias = name }
        try await require(.inference, on: reference.name, alias: alias, by: actor, action: "session.open", target: reference.description)
    }

    /// Opens a session for `actor` (authenticated by other means: the server's bearer token), unwrapping the data key
    /// with `unwrappingWith` (the server's unlocked registry identity).
    public func openSession(
        _ reference: ModelReference,
        principal actor: Principal,
        unwrappingWith identity: UnlockedIdentity,
        ttl: TimeInterval,
        maxUses: Int? = nil,
        now: Date = Date()
    ) async throws(CofferRegistryError) -> OpenedSession {
        guard ttl > 0, ttl <= Self.maximumLifetime else {
            throw .sessionRefused("the session lifetime must be more than 0 and at most 365 days (31536000 s)")
        }
        if let maxUses, !(1...1_000_000_000).contains(maxUses) { throw .sessionRefused("--max-uses must be from 1 to 1000000000") }
        try await requireInference(reference, by: actor)
        var alias: String? = nil
        if case .alias(let name) = reference.selector { alias = name }
        var maxUses = maxUses
        let bound = try await sessionBound(principal: actor.name, model: reference.name, alias: alias, now: now)
        func refuse(_ reason: String) async throws(CofferRegistryError) -> Never {
            try await audit(principal: actor.name, action: "session.open", target: reference.description, outcome: .refused, reason: reason)
            throw .sessionRefused(reason)
        }
        if let seconds = bound.seconds, ttl > TimeInterval(seconds) {
            try await refuse("\(actor.name)'s inference grant allows sessions of at most \(seconds) s (asked for \(Int(ttl.rounded(.up))) s)")
        }
        var sessionCheck: UnitOfWork.HoldingCheck? = nil
        if let allowance = bound.predictions {
            let sessions = try await metadata.sessions(of: actor.name)
            if let refusal = allowance.refusal(asking: maxUses, given: sessions) { try await refuse(refusal) }
            // A session under a limited grant always has a limit: what is left, unless it asked for less.
            let asked = maxUses != nil
            let limit = maxUses ?? allowance.best(given: sessions).left
            maxUses = limit
            // Decided again inside the commit, on the sessions as they are then: two opens at once each saw room for
            // itself here (helper-46: eight parallel opens under a grant of 10 predictions got 60).
            sessionCheck = .init(principal: actor.name, rows: .sessions { allowance.refusal(holding: limit, asked: asked, given: $0) })
        }
        do {
            let stored = try await loadVersion(try await resolveForUse(reference).id)
            try stored.ensureNotErased()
            _ = try await authenticate(stored)
            let dataKey = try await unwrapDataKey(stored, identity: identity)
            let token = SessionToken(secret: SecretKey.random())
            let info = SessionInfo(
                id: Digest.hex((0..<8).map { _ in UInt8.random(in: 0...255) }),
                principal: actor.name,
                model: stored.model,
                version: stored.version,
                reference: reference.description,
                createdAt: Self.timestamp(now),
                expiresAt: Self.timestamp(now.addingTimeInterval(ttl)),
                maxUses: maxUses,
                uses: 0,
                revokedAt: nil
            )
            let wrapped = dataKey.key.wrap(under: token.keyEncryptionKey(id: info.id, expiresAt: info.expiresAt, maxUses: maxUses)).encoded
            let hash = try tokenHash(token)
            let session = SessionRecord(
                id: info.id,
                tokenHash: Data(hash),
                principal: info.principal,
                versionID: stored.id,
                reference: info.reference,
                alias: alias,
                createdAt: info.createdAt,
                expiresAt: info.expiresAt,
                maxUses: maxUses,
                uses: 0,
                wrappedKey: Data(wrapped)
            )
            // The session and its audit entry commit together: no session exists unrecorded.
            var work = UnitOfWork(
                changes: [.addSession(session), .dropExpiredSessionKeys(now: Self.timestamp(now))],
                audit: [
                    AuditDraft(
                        principal: actor.name,
                        action: "session.open",
                        target: reference.description,
                        outcome: .ok,
                        reason: "session \(info.id)"
                    )
                ]
            )
            work.holdingCheck = sessionCheck
            try await metadata.commit(work)
            return OpenedSession(info: info, token: token)
        } catch .sessionRefused(let reason) {
            try await refuse(reason)
        } catch {
            try? await audit(
                principal: actor.name,
                action: "session.open",
                target: reference.description,
                outcome: .failed,
                reason: error.description
            )
            throw error
        }
    }

    public func sessions() async throws(CofferRegistryError) -> [SessionInfo] {
        try await metadata.sessions().map(Self.info)
    }

    static func info(_ row: SessionRow) -> SessionInfo {
        SessionInfo(
            id: row.session.id,
            principal: row.session.principal,
            model: row.model,
            version: row.version,
            reference: row.session.reference,
            createdAt: row.session.createdAt,
            expiresAt: row.session.expiresAt,
            maxUses: row.session.maxUses,
            uses: row.session.uses,
            revokedAt: row.session.revokedAt
        )
    }

    /// Revokes a session (its principal or an admin): its copy of the data key is destroyed at once.
    public func revokeSession(id: String, identity: UnlockedIdentity) async throws(CofferRegistryError) {
        try await revokeSession(id: id, principal: try await principal(for: identity.identity))
    }

    /// - Parameter asAdmin: whether the caller may act as an admin at all: a server passes whether the request's token
    ///   has the admin scope, so that an admin's inference token revokes only its own sessions.
    public func revokeSession(id: String, principal actor: Principal, asAdmin: Bool = true) async throws(CofferRegistryError) {
        let owner = try await metadata.session(.id(id))?.session.principal
        // Someone else's session is unknown to anyone but an admin: the answer does not tell which ids exist.
        guard let owner else {
            try await audit(principal: actor.name, action: "session.revoke", target: id, outcome: .refused, reason: "unknown session")
            throw .unknownSession(id)
        }
        if owner != actor.name {
            guard asAdmin else {
                try await audit(principal: actor.name, action: "session.revoke", target: id, outcome: .refused, reason: "not an admin-scoped token")
                throw .unknownSession(id)
            }
            do { try await require(.admin, on: nil, by: actor, action: "session.revoke", target: id) } catch { throw .unknownSession(id) }
        }
        try await metadata.commit(
            UnitOfWork(
                changes: [.revokeSession(id: id, at: Self.now())],
                audit: [AuditDraft(principal: actor.name, action: "session.revoke", target: id, outcome: .ok, reason: "")]
            )
        )
    }

    /// The limits `principal`'s inference grants put on a new session on `model` (through `alias`): the longest
    /// lifetime, and the predictions the limited grants allow, each nil when some grant allowing the session leaves it
    /// unbounded (or the registry checks no principals).
    func sessionBound(
        principal: String,
        model: String,
        alias: String?,
        now: Date
    ) async throws(CofferRegistryError) -> (seconds: Int?, predictions: PredictionAllowance?) {
        let state = try await ledgerState()
        guard state.checksPrincipals else { return (nil, nil) }
        let allowing = state.grants.filter { $0.principal == principal && $0.allows(.inference, on: model, alias: alias) }
        guard !allowing.isEmpty else { return (nil, nil) }
        var seconds: Int? = nil
        if allowing.allSatisfy({ $0.maxSessionSeconds != nil }) { seconds = allowing.compactMap(\.maxSessionSeconds).max() }
        guard allowing.allSatisfy({ $0.maxPredictions != nil }) else { return (seconds, nil) }
        let grants = allowing.map { PredictionAllowance.Limited(grant: $0, since: state.limitsTime(of: $0) ?? "") }
        return (seconds, PredictionAllowance(principal: principal, grants: grants, at: Self.timestamp(now)))
    }

    /// Checks a token and takes one use of its session: refuses (and audits) unknown, revoked, expired and exhausted
    /// sessions, and those whose principal has lost the grant. Returns the version and its data key.
    func claimSession(_ token: borrowing SessionToken, now: Date, countingUse: Bool = true) async throws(CofferRegistryError) -> ClaimedSession {
        let hash = try tokenHash(token)
        // The log names a session by its id, an unknown token by a prefix of its keyed hash: never the token.
        guard let row = try await metadata.session(.tokenHash(Data(hash))) else {
            try await refuseSession("-", "token \(Digest.hex(hash.prefix(8)))", "unknown session token")
        }
        let session = row.session
        let id = session.id
        try await check(session: row, now: now, uses: countingUse ? 1 : 0)
        guard let wrapped = session.wrappedKey else { try await refuseSession(session.principal, id, "session \(id) holds no key any more") }
        let kek = token.keyEncryptionKey(id: id, expiresAt: session.expiresAt, maxUses: session.maxUses)
        let dataKey: KeyBox
        do { dataKey = KeyBox(try WrappedKey(encoded: Array(wrapped)).unwrap(with: kek)) } catch {
            try await refuseSession(session.principal, id, "the session's key does not open with this token")
        }
        let stored = try await loadVersion(session.versionID)
        if stored.erased != nil { try await refuseSession(session.principal, id, "\(row.model):\(row.version) was erased") }
        let (statement, _) = try await authenticate(stored)
        var info = Self.info(row)
        info.uses += countingUse ? 1 : 0
        info.revokedAt = nil
        return ClaimedSession(info: info, stored: stored, files: statement.files, dataKey: dataKey)
    }

    /// Checks, without taking a use, that a session held by `principal` may still be used: not revoked, not expired,
    /// not exhausted, its key copy not destroyed, the grant still held. Refusals are audited.
    public func checkSession(id: String, principal: String, now: Date = Date()) async throws(CofferRegistryError) {
        guard let row = try await metadata.session(.id(id)), row.session.principal == principal else {
            try await refuseSession(principal, id, "unknown session \(id)")
        }
        try await check(session: row, now: now, uses: 0)
    }

    /// Takes `uses` uses (the rows a prediction answered) of a session held by `principal` whose model is already
    /// open (a server's cache, or a command that predicted first), after the same checks as a token: not revoked, not
    /// expired, not exhausted, enough uses left, the grant still held.
    public func useSession(id: String, principal: String, uses: Int = 1, now: Date = Date()) async throws(CofferRegistryError) {
        guard let row = try await metadata.session(.id(id)), row.session.principal == principal else {
            try await refuseSession(principal, id, "unknown session \(id)")
        }
        try await check(session: row, now: now, uses: max(1, uses))
        let rows = uses == 1 ? "1 prediction" : "\(uses) predictions"
        try await audit(principal: principal, action: "infer", target: id, outcome: .ok, reason: "\(row.model):\(row.version), \(rows)")
    }

    /// Audits a prediction that failed (the model could not answer these rows): it spent no use.
    public func recordFailedPrediction(session id: String, principal: String, reason: String) async throws(CofferRegistryError) {
        try await audit(principal: principal, action: "infer", target: id, outcome: .failed, reason: reason)
    }

    /// Which of `ids` are still usable sessions (not revoked, expired or used up; their key copy kept), read without
    /// auditing: a server checks the models it holds against it, so that a revocation through another replica wipes
    /// them here too. An id the store cannot answer for counts as live until the next check.
    public func liveSessions(_ ids: [String], now: Date = Date()) async -> Set<String> {
        var live: Set<String> = []
        for id in ids {
            let found: SessionRow?
            do { found = try await metadata.session(.id(id)) } catch {
                live.insert(id)
                continue
            }
            guard let row = found else { continue }
            let session = row.session
            if session.revokedAt == nil, session.wrappedKey != nil, session.expiresAt > Self.timestamp(now) { live.insert(id) }
        }
        return live
    }

    /// Takes one token of a session's rate bucket, shared by every server over the registry's metadata store: nil
    /// when taken, else the seconds to wait.
    public func takeRateToken(session: String, rate: Double, burst: Int, now: Date = Date()) async throws(CofferRegistryError) -> Double? {
        try await metadata.takeRateToken(session: session, rate: rate, burst: burst, now: now.timeIntervalSince1970)
    }

    /// Refuses (and audits) a revoked, expired or exhausted session, or one whose principal lost the grant; takes a use.
    private func check(session row: SessionRow, now: Date, uses: Int) async throws(CofferRegistryError) {
        let session = row.session
        let id = session.id
        let principal = session.principal
        if let revoked = session.revokedAt { try await refuseSession(principal, id, "session \(id) was revoked at \(revoked)") }
        if Self.timestamp(now) >= session.expiresAt {
            try await metadata.commit(UnitOfWork(changes: [.dropSessionKeys(ids: [id])]))
            try await refuseSession(principal, id, "session \(id) expired at \(session.expiresAt)")
        }
        let state = try await ledgerState()
        if state.checksPrincipals, !state.holds(principal, .inference, on: row.model, alias: session.alias) {
            try await refuseSession(principal, id, "\(principal) no longer holds the inference role on \(row.model)")
        }
        if let max = session.maxUses, session.uses >= max {
            try await refuseSession(principal, id, "session \(id) has used all \(max) of its uses")
        }
        if let max = session.maxUses, session.uses + uses > max {
            try await refuseSession(principal, id, "session \(id) has \(max - session.uses) of its \(max) uses left, and this call needs \(uses)")
        }
        if session.wrappedKey == nil { try await refuseSession(principal, id, "session \(id) holds no key any more (revoked, expired or used up)") }
        guard uses > 0 else { return }
        if try await !metadata.takeSessionUses(id: id, count: uses) {
            try await refuseSession(principal, id, "session \(id) has used all \(session.maxUses ?? 0) of its uses")
        }
    }

    private func refuseSession(_ principal: String, _ target: String, _ reason: String) async throws(CofferRegistryError) -> Never {
        try await audit(principal: principal, action: "infer", target: target, outcome: .refused, reason: reason)
        throw .sessionRefused(reason)
    }

    /// The longest a session (or a bearer token) may live: a year, as docs/openapi.yaml states.
    public static let maximumLifetime: TimeInterval = 31_536_000

    /// Parses a lifetime such as 90s, 15m, 2h or 7d, as the command line and the pages take it.
    ///
    /// At most 100 years, so that every caller can convert it to whole seconds (`1e300s` trapped in `UInt64(_:)`).
    public static func duration(_ text: String) throws(CofferRegistryError) -> TimeInterval {
        let units: [Character: Double] = ["s": 1, "m": 60, "h": 3600, "d": 86400]
        guard let unit = text.last.flatMap({ units[$0] }), let value = Double(text.dropLast()), value > 0, value.isFinite else {
            throw .invalidInput("invalid duration '\(text)': use a positive number with s, m, h or d (e.g. 15m)")
        }
        guard value * unit <= longestDuration else { throw .invalidInput("invalid duration '\(text)': longer than 100 years") }
        return value * unit
    }

    /// 100 years of 365 days, in seconds.
    static let longestDuration: TimeInterval = 3_153_600_000

    /// The open sessions of `principal` that its grants in `state` no longer allow: their key copies are to be destroyed.
    func sessionsNoLongerGranted(to principal: String, state: LedgerState) async throws(CofferRegistryError) -> [String] {
        // Not marked revoked: a later use is refused for the reason that ended it (the grant is gone).
        try await metadata.sessions().filter { row in
            row.session.principal == principal && row.session.wrappedKey != nil && state.checksPrincipals
                && !state.holds(principal, .inference, on: row.model, alias: row.session.alias)
        }.map(\.session.id)
    }

    static func timestamp(_ date: Date) -> String { Timestamp.string(date) }
}
