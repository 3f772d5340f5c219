public import CofferCrypto
public import CofferTraining
public import Foundation
import GRDB
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// An inference session's token: `cfs_` and 64 lower-case hex digits (32 random bytes), held in sodium memory.
/// It is shown once at open; the registry keeps only a keyed hash of it, and the version's data key wrapped
/// under a key derived from it, so the token alone is what opens the model.
public struct SessionToken: ~Copyable {
    /// Session tokens (`cfs_`) and, with the same construction, HTTP bearer tokens (`cft_`).
    public static let sessionPrefix = Array("cfs_".utf8)
    public static let apiPrefix = Array("cft_".utf8)
    static let textLength = 4 + 64
    let secret: SecretKey
    let prefix: [UInt8]

    init(secret: consuming SecretKey, prefix: [UInt8] = sessionPrefix) {
        self.secret = secret
        self.prefix = prefix
    }

    /// Parses a token's text (e.g. from the command line), refusing anything but the prefix and 64 hex digits.
    public init(text: borrowing SecureBytes, prefix: [UInt8] = sessionPrefix) throws(CofferRegistryError) {
        let secret = SecureBytes(count: SecretKey.byteCount)
        let valid = text.withUnsafeBytes { t in
            secret.withUnsafeMutableBytes { out in
                guard t.count == Self.textLength, Array(t[0..<4]) == prefix else { return false }
                for i in 0..<SecretKey.byteCount {
                    guard let high = Self.nibble(t[4 + 2 * i]), let low = Self.nibble(t[5 + 2 * i]) else { return false }
                    out[i] = high << 4 | low
                }
                return true
            }
        }
        let name = String(decoding: prefix, as: UTF8.self)
        guard valid else { throw .sessionRefused("malformed session token (expected \(name) and 64 lower-case hex digits)") }
        self.secret = SecretKey(bytes: secret)
        self.prefix = prefix
    }

    private static func nibble(_ c: UInt8) -> UInt8? {
        switch c {
        case 0x30...0x39: c - 0x30
        case 0x61...0x66: c - 0x61 + 10
        default: nil
        }
    }

    /// The token's text, in sodium memory, for printing once.
    public func text() -> SecureBytes {
        let out = SecureBytes(count: Self.textLength)
        let digits = Array("0123456789abcdef".utf8)
        secret.withUnsafeBytes { s in
            out.withUnsafeMutableBytes { o in
                for i in 0..<4 { o[i] = prefix[i] }
                for i in 0..<s.count {
                    o[4 + 2 * i] = digits[Int(s[i] >> 4)]
                    o[5 + 2 * i] = digits[Int(s[i] & 0x0F)]
                }
            }
        }
        return out
    }

    /// A public value that identifies the token without revealing it; the registry stores it keyed-hashed.
    var lookup: [UInt8] { secret.mac(Array("coffer/v1/session-lookup".utf8)) }
    /// The key-encryption key the session's copy of the data key is wrapped under, bound to the session's id and
    /// limits: editing a session's expiry or use limit in the database makes its key copy unopenable.
    func keyEncryptionKey(id: String, expiresAt: String, maxUses: Int?) -> SecretKey {
        secret.derive(label: "coffer/v1/session-kek", context: Array("\n\(id)\n\(expiresAt)\n\(maxUses.map(String.init) ?? "-")".utf8))
    }
}

/// A session just opened, with its token: shown once, then dropped (and wiped).
public struct OpenedSession: ~Copyable {
    public let info: SessionInfo
    public let token: SessionToken
}

struct ClaimedSession: ~Copyable {
    let info: SessionInfo
    let stored: StoredVersion
    /// The version's files as they are stored now (after any rekey), checked against the signed records.
    let files: [ModelStatement.File]
    let dataKey: SecretKey
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
    static let sessionHashKeyName = "session-hash.key"

    /// The key token hashes are computed under: 32 random bytes in their own file (0600) beside the database, so
    /// a copy of the database alone does not let anyone test guessed tokens. Created on first use.
    func sessionHashKey() throws(CofferRegistryError) -> SecretKey {
        let path = "\(home)/\(Self.sessionHashKeyName)"
        if access(path, F_OK) != 0 {
            let fresh = SecureBytes.random(count: SecretKey.byteCount)
            let created: Bool = fresh.withUnsafeBytes { bytes in
                let fd = Glibc.open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
                guard fd >= 0 else { return false }
                defer { close(fd) }
                return write(fd, bytes.baseAddress, bytes.count) == bytes.count && fsync(fd) == 0
            }
            if !created && access(path, F_OK) != 0 { throw .io(path: path, reason: "cannot create the session hash key") }
        }
        let key = SecureBytes(count: SecretKey.byteCount)
        let ok: Bool = key.withUnsafeMutableBytes { out in
            let fd = Glibc.open(path, O_RDONLY | O_CLOEXEC)
            guard fd >= 0 else { return false }
            defer { close(fd) }
            return read(fd, out.baseAddress, out.count) == out.count
        }
        guard ok else { throw .io(path: path, reason: "cannot read the session hash key") }
        return SecretKey(bytes: key)
    }

    func tokenHash(_ token: borrowing SessionToken) throws(CofferRegistryError) -> [UInt8] {
        var key = hashKey.withLock { $0 }
        if key == nil {
            let loaded = KeyBox(try sessionHashKey())
            hashKey.withLock { $0 = loaded }
            key = loaded
        }
        return key!.key.mac(token.lookup)
    }

    /// Opens an inference session on `reference` for the principal `identity` acts as (it needs the inference role
    /// on the model, or on the alias named): verifies the version's signature, unwraps its data key with `identity`,
    /// and re-wraps it under the new token. The token is returned once and never stored.
    public func openSession(
        _ reference: ModelReference,
        identity: borrowing Identity,
        ttl: TimeInterval,
        maxUses: Int? = nil,
        now: Date = Date()
    ) throws(CofferRegistryError) -> OpenedSession {
        try openSession(reference, principal: try principal(for: identity), unwrappingWith: identity, ttl: ttl, maxUses: maxUses, now: now)
    }

    /// Opens a session for `actor` (authenticated by other means: the server's bearer token), unwrapping the data key
    /// with `unwrappingWith` (the server's unlocked registry identity).
    public func openSession(
        _ reference: ModelReference,
        principal actor: Principal,
        unwrappingWith identity: borrowing Identity,
        ttl: TimeInterval,
        maxUses: Int? = nil,
        now: Date = Date()
    ) throws(CofferRegistryError) -> OpenedSession {
        guard ttl > 0, ttl <= Self.maximumLifetime else {
            throw .sessionRefused("the session lifetime must be more than 0 and at most 365 days (31536000 s)")
        }
        if let maxUses, !(1...1_000_000_000).contains(maxUses) { throw .sessionRefused("--max-uses must be from 1 to 1000000000") }
        var alias: String? = nil
        if case .alias(let name) = reference.selector { alias = name }
        try require(.inference, on: reference.name, alias: alias, by: actor, action: "session.open", target: reference.description)
        do {
            let stored = try loadVersion(try resolveForUse(reference).id)
            try stored.ensureNotErased()
            _ = try authenticate(stored)
            let dataKey = try unwrapDataKey(stored, identity: identity)
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
            let wrapped = dataKey.wrap(under: token.keyEncryptionKey(id: info.id, expiresAt: info.expiresAt, maxUses: maxUses)).encoded
            let hash = try tokenHash(token)
            try database.write { db in
                try db.execute(
                    sql: """
                        INSERT INTO sessions (id, token_hash, principal, version_id, reference, alias, created_at, expires_at, max_uses, wrapped_key)
                        VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                        """,
                    arguments: [
                        info.id, Data(hash), info.principal, stored.id, info.reference, alias, info.createdAt, info.expiresAt, maxUses, Data(wrapped),
                    ]
                )
                try Self.destroyExpiredSessionKeys(db, now: now)
                // The session and its audit entry commit together: no session exists unrecorded.
                try Self.appendAudit(
                    db,
                    principal: actor.name,
                    action: "session.open",
                    target: reference.description,
                    outcome: .ok,
                    reason: "session \(info.id)"
                )
            }
            return OpenedSession(info: info, token: token)
        } catch {
            try? audit(principal: actor.name, action: "session.open", target: reference.description, outcome: .failed, reason: error.description)
            throw error
        }
    }

    public func sessions() throws(CofferRegistryError) -> [SessionInfo] {
        try database.read { db in
            try Row.fetchAll(
                db.cachedStatement(
                    sql: """
                        SELECT s.*, m.name AS model, v.version AS version FROM sessions s
                        JOIN versions v ON v.id = s.version_id JOIN models m ON m.id = v.model_id ORDER BY s.created_at
                        """
                )
            ).map { row in
                SessionInfo(
                    id: row["id"],
                    principal: row["principal"],
                    model: row["model"],
                    version: row["version"],
                    reference: row["reference"],
                    createdAt: row["created_at"],
                    expiresAt: row["expires_at"],
                    maxUses: row["max_uses"],
                    uses: row["uses"],
                    revokedAt: row["revoked_at"]
                )
            }
        }
    }

    /// Revokes a session (its principal or an admin): its copy of the data key is destroyed at once.
    public func revokeSession(id: String, identity: borrowing Identity) throws(CofferRegistryError) {
        try revokeSession(id: id, principal: try principal(for: identity))
    }

    public func revokeSession(id: String, principal actor: Principal) throws(CofferRegistryError) {
        let owner = try database.read { db in
            try String.fetchOne(db.cachedStatement(sql: "SELECT principal FROM sessions WHERE id = ?"), arguments: [id])
        }
        // Someone else's session is unknown to anyone but an admin: the answer does not tell which ids exist.
        guard let owner else {
            try audit(principal: actor.name, action: "session.revoke", target: id, outcome: .refused, reason: "unknown session")
            throw .unknownSession(id)
        }
        if owner != actor.name {
            do { try require(.admin, on: nil, by: actor, action: "session.revoke", target: id) } catch { throw .unknownSession(id) }
        }
        try database.write { db in
            try db.execute(
                sql: "UPDATE sessions SET revoked_at = coalesce(revoked_at, ?), wrapped_key = NULL WHERE id = ?",
                arguments: [Self.now(), id]
            )
        }
        try audit(principal: actor.name, action: "session.revoke", target: id, outcome: .ok, reason: "")
    }

    /// Checks a token and takes one use of its session: refuses (and audits) unknown, revoked, expired and exhausted
    /// sessions, and those whose principal has lost the grant. Returns the version and its data key.
    func claimSession(_ token: borrowing SessionToken, now: Date, countingUse: Bool = true) throws(CofferRegistryError) -> ClaimedSession {
        let hash = try tokenHash(token)
        let row = try sessionRow(sql: "s.token_hash = ?", argument: Data(hash))
        // The log names a session by its id, an unknown token by a prefix of its keyed hash: never the token.
        guard let row else { try refuseSession("-", "token \(Digest.hex(hash.prefix(8)))", "unknown session token") }
        try check(session: row, now: now, countingUse: countingUse)
        let id: String = row["id"]
        let principal: String = row["principal"]
        let model: String = row["model"]
        let expires: String = row["expires_at"]
        guard let wrapped: Data = row["wrapped_key"] else { try refuseSession(principal, id, "session \(id) holds no key any more") }
        let stored = try loadVersion(row["version_id"])
        if stored.erased != nil { try refuseSession(principal, id, "\(model):\(row["version"] as String) was erased") }
        let (statement, _) = try authenticate(stored)
        let dataKey: SecretKey
        let kek = token.keyEncryptionKey(id: id, expiresAt: expires, maxUses: row["max_uses"])
        do { dataKey = try WrappedKey(encoded: Array(wrapped)).unwrap(with: kek) } catch {
            try refuseSession(principal, id, "the session's key does not open with this token")
        }
        let info = SessionInfo(
            id: id,
            principal: principal,
            model: model,
            version: row["version"],
            reference: row["reference"],
            createdAt: row["created_at"],
            expiresAt: expires,
            maxUses: row["max_uses"],
            uses: (row["uses"] as Int) + (countingUse ? 1 : 0),
            revokedAt: nil
        )
        return ClaimedSession(info: info, stored: stored, files: statement.files, dataKey: dataKey)
    }

    /// Checks, without taking a use, that a session held by `principal` may still be used: not revoked, not expired,
    /// not exhausted, its key copy not destroyed, the grant still held. Refusals are audited.
    public func checkSession(id: String, principal: String, now: Date = Date()) throws(CofferRegistryError) {
        guard let row = try sessionRow(sql: "s.id = ?", argument: id), row["principal"] as String == principal else {
            try refuseSession(principal, id, "unknown session \(id)")
        }
        try check(session: row, now: now, countingUse: false)
    }

    /// Takes one use of a session held by `principal` whose model is already open (the server's cache), after the
    /// same checks as a token: not revoked, not expired, not exhausted, the grant still held.
    public func useSession(id: String, principal: String, now: Date = Date()) throws(CofferRegistryError) {
        guard let row = try sessionRow(sql: "s.id = ?", argument: id), row["principal"] as String == principal else {
            try refuseSession(principal, id, "unknown session \(id)")
        }
        try check(session: row, now: now, countingUse: true)
        try audit(principal: principal, action: "infer", target: id, outcome: .ok, reason: "\(row["model"] as String):\(row["version"] as String)")
    }

    private func sessionRow(sql condition: String, argument: some DatabaseValueConvertible & Sendable) throws(CofferRegistryError) -> Row? {
        try database.read { db in
            try Row.fetchOne(
                db.cachedStatement(
                    sql: """
                        SELECT s.*, m.name AS model, v.version AS version FROM sessions s
                        JOIN versions v ON v.id = s.version_id JOIN models m ON m.id = v.model_id WHERE \(condition)
                        """
                ),
                arguments: [argument]
            )
        }
    }

    /// Refuses (and audits) a revoked, expired or exhausted session, or one whose principal lost the grant; takes a use.
    private func check(session row: Row, now: Date, countingUse: Bool) throws(CofferRegistryError) {
        let id: String = row["id"]
        let principal: String = row["principal"]
        let model: String = row["model"]
        if let revoked: String = row["revoked_at"] { try refuseSession(principal, id, "session \(id) was revoked at \(revoked)") }
        let expires: String = row["expires_at"]
        if Self.timestamp(now) >= expires {
            try database.write { db in try db.execute(sql: "UPDATE sessions SET wrapped_key = NULL WHERE id = ?", arguments: [id]) }
            try refuseSession(principal, id, "session \(id) expired at \(expires)")
        }
        let alias: String? = row["alias"]
        let state = try ledgerState()
        if state.checksPrincipals, !state.holds(principal, .inference, on: model, alias: alias) {
            try refuseSession(principal, id, "\(principal) no longer holds the inference role on \(model)")
        }
        if let max: Int = row["max_uses"], (row["uses"] as Int) >= max {
            try refuseSession(principal, id, "session \(id) has used all \(max) of its uses")
        }
        if row["wrapped_key"] == nil { try refuseSession(principal, id, "session \(id) holds no key any more (revoked, expired or used up)") }
        guard countingUse else { return }
        let claimed = try database.write { db in
            try db.execute(
                sql: "UPDATE sessions SET uses = uses + 1 WHERE id = ? AND revoked_at IS NULL AND (max_uses IS NULL OR uses < max_uses)",
                arguments: [id]
            )
            guard db.changesCount == 1 else { return false }
            // The last use destroys the key copy: an exhausted session opens nothing, even from a copy of the database.
            try db.execute(sql: "UPDATE sessions SET wrapped_key = NULL WHERE id = ? AND max_uses IS NOT NULL AND uses >= max_uses", arguments: [id])
            return true
        }
        if !claimed { try refuseSession(principal, id, "session \(id) has used all \(row["max_uses"] as Int? ?? 0) of its uses") }
    }

    private func refuseSession(_ principal: String, _ target: String, _ reason: String) throws(CofferRegistryError) -> Never {
        try audit(principal: principal, action: "infer", target: target, outcome: .refused, reason: reason)
        throw .sessionRefused(reason)
    }

    /// The longest a session (or a bearer token) may live: a year, as docs/openapi.yaml states.
    public static let maximumLifetime: TimeInterval = 31_536_000

    /// Ends the open sessions of `principal` that its grants in `state` no longer allow, destroying their key copies.
    static func endSessionsNoLongerGranted(to principal: String, state: LedgerState, db: Database) throws {
        let open = try Row.fetchAll(
            db,
            sql: """
                SELECT s.id, s.alias, m.name AS model FROM sessions s JOIN versions v ON v.id = s.version_id JOIN models m ON m.id = v.model_id
                WHERE s.principal = ? AND s.wrapped_key IS NOT NULL
                """,
            arguments: [principal]
        )
        // Not marked revoked: a later use is refused for the reason that ended it (the grant is gone).
        for row in open where state.checksPrincipals && !state.holds(principal, .inference, on: row["model"], alias: row["alias"]) {
            try db.execute(sql: "UPDATE sessions SET wrapped_key = NULL WHERE id = ?", arguments: [row["id"] as String])
        }
    }

    /// Destroys the key copies of sessions that expired, whoever finds them: a session's copy does not outlive it.
    static func destroyExpiredSessionKeys(_ db: Database, now: Date) throws {
        try db.cachedStatement(sql: "UPDATE sessions SET wrapped_key = NULL WHERE wrapped_key IS NOT NULL AND expires_at <= ?")
            .execute(arguments: [timestamp(now)])
    }

    static func timestamp(_ date: Date) -> String {
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        return formatter.string(from: date)
    }
}
