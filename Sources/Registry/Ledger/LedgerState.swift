public import CofferCrypto
import CofferTraining
import Foundation

/// A registry's governance state as its ledger builds it, record by record: the registry's keys, principals and
/// grants, trusted signers, aliases, policies, budgets and their charges, each model's latest version, erasures.
///
/// ``apply(_:)`` is the one place where a record is judged (signature, link, authority, meaning): the registry
/// calls it before appending a record, and every reader calls it replaying the chain, so writers and readers
/// cannot disagree about what is allowed. The state is small (of versions it keeps their names and budget charges),
/// so a client remembers it between commands and replays only what is new.
public struct LedgerState: Sendable, Equatable, Codable {
    public struct RegistryKey: Sendable, Equatable, Codable {
        public var identity: PublicIdentity
        /// The record that made it current, and the one that retired it (with its time), if any.
        public var since: Int64
        public var retiredBy: Int64?
        public var retiredAt: String?

        enum CodingKeys: String, CodingKey {
            case identity, since
            case retiredBy = "retired_by"
            case retiredAt = "retired_at"
        }
    }

    public struct TrustedSigner: Sendable, Equatable, Codable {
        public var name: String
        public var identity: PublicIdentity
    }

    public struct AliasTarget: Sendable, Equatable, Codable {
        public var version: String
        public var digest: String
        public var seq: Int64
    }

    /// The version `NAME` alone resolves to: the highest integer version, else the last one recorded.
    public struct Latest: Sendable, Equatable, Codable {
        public var version: String
        public var number: Int64?
        public var digest: String
        public var seq: Int64
    }

    public struct Erasure: Sendable, Equatable, Codable {
        public var model: String
        public var version: String
        public var at: String
        public var by: String
    }

    public struct AuditMark: Sendable, Equatable, Codable {
        public var seq: Int64
        public var hash: String
    }

    /// The root key's ID: names the registry.
    public private(set) var registry: String
    public private(set) var seq: Int64 = 0
    /// The last record's hash (hex).
    public private(set) var hash: String = LedgerRecord.zeroHash
    public private(set) var keys: [RegistryKey] = []
    public private(set) var principals: [String: PublicIdentity] = [:]
    public private(set) var grants: [Grant] = []
    /// By key ID.
    public private(set) var trusted: [String: TrustedSigner] = [:]
    /// By `model@alias`.
    public private(set) var aliases: [String: AliasTarget] = [:]
    /// By `model@alias`, `model@` for the rules on every alias of the model.
    public private(set) var policies: [String: PolicyRules] = [:]
    public private(set) var budgets: [String: Budget] = [:]
    public private(set) var latest: [String: Latest] = [:]
    /// By version digest.
    public private(set) var erased: [String: Erasure] = [:]
    /// By version digest: SHA-256 of the registry-signed rekey attestation now in force.
    public private(set) var rekeys: [String: String] = [:]
    public private(set) var auditHead: AuditMark?
    /// When the last `audit.head` record was signed (its `at`): a server marks the audit log in the ledger at most every
    /// few minutes. Kept from the replay (helper-73: it was read from the newest such row, which whoever can write the
    /// database could replace with one dated 2100, and the marks stopped). `nil` in a state remembered before it.
    public private(set) var auditMarkedAt: String?
    /// The last record of an adoption's restatement of the past (1: none).
    public private(set) var adoptedThrough: Int64 = 1
    /// Bearer tokens by id: a token authenticates only if an admin's record minted it and none revoked it.
    public private(set) var tokens: [String: Token] = [:]
    /// When each grant with limits was last recorded (its record's `at`), by ``Grant/limitKey``: a grant's prediction
    /// limit counts the sessions opened from then on. Optional so that a state remembered before limits still decodes.
    public private(set) var limitsSince: [String: String]? = nil
    /// The hashes of records 1024, 2048, ...: a record a server sends later (an explicit version's, with its package) is
    /// checked to be the one replayed at its place by walking at most 1,023 links to the next of them. About 70 bytes
    /// per 1,024 records in a remembered state. `nil` in a state remembered before them, until filled in
    /// (``RemoteLedger/sync(from:location:key:memory:now:)``).
    public private(set) var waypoints: [String]? = []
    public static let waypointInterval: Int64 = 1024
    /// Every version a `version` record named (`MODEL:VERSION`). A second record for one is refused, so that a version
    /// has one record, the one every reader takes (helper-73: readers took the first by an unsigned column, and the
    /// replay had accepted a second). About 22 bytes a version in a remembered state (``RecordedVersions``); `nil` in
    /// a state remembered before it (or with the names themselves, as on 2026-12-07), until filled in with the waypoints.
    public private(set) var recordedVersionKeys: RecordedVersions? = RecordedVersions()

    public struct Token: Sendable, Equatable, Codable {
        public var facts: LedgerChange.TokenFacts
        public var revoked: Bool
    }

    /// Names a principal may not take: the registry's own name in records, and the audit log's "nobody".
    static let reservedNames: Set<String> = ["registry", "-"]

    /// An empty state for the registry whose root key has `registry` as key ID; record 1 must be its genesis.
    public init(registry: String) { self.registry = registry }

    /// The current registry key.
    public var currentKey: PublicIdentity? { keys.last?.identity }
    public var checksPrincipals: Bool { !principals.isEmpty }

    public func key(_ keyID: String) -> RegistryKey? { keys.first { $0.identity.keyID == keyID } }

    /// The principal whose key is `keyID`.
    public func principal(keyID: String) -> String? { principals.first { $0.value.keyID == keyID }?.key }

    /// When `grant`'s limits took effect (nil for a grant without limits).
    public func limitsTime(of grant: Grant) -> String? { limitsSince?[grant.limitKey] }

    /// Whether `principal` holds `role` on `model` (through `alias`). `model` nil: on every model (`*`).
    public func holds(_ principal: String, _ role: Role, on model: String?, alias: String? = nil) -> Bool {
        grants.contains { $0.principal == principal && $0.allows(role, on: model, alias: alias) }
    }

    /// The policies that apply to `alias` of `model`: the alias's own, then the model-wide ones.
    public func policies(model: String, alias: String) -> [(alias: String?, rules: PolicyRules)] {
        [(alias, policies["\(model)@\(alias)"]), (nil, policies["\(model)@"])].compactMap { entry in entry.1.map { (entry.0, $0) } }
    }

    /// Every policy of `model`, the every-alias ones (alias nil) first.
    public func policies(model: String) -> [(alias: String?, rules: PolicyRules)] {
        policies.filter { $0.key.hasPrefix("\(model)@") && $0.key.count > model.count }
            .map { (key, rules) in
                let alias = String(key.dropFirst(model.count + 1))
                return (alias.isEmpty ? nil : alias, rules)
            }
            .sorted { ($0.alias ?? "") < ($1.alias ?? "") }
    }

    /// The trusted signers' public identities, each carrying the name the ledger trusts it under (a key's own
    /// declared name is not what `signed by` shows or what a policy's `signer` matches).
    public var trustedIdentities: [PublicIdentity] {
        trusted.values.sorted { $0.name < $1.name }.compactMap { signer in
            try? PublicIdentity(name: signer.name, ed25519: signer.identity.ed25519, x25519: signer.identity.x25519, p256: signer.identity.p256)
        }
    }

    public func alias(_ alias: String, of model: String) -> AliasTarget? { aliases["\(model)@\(alias)"] }

    // MARK: - Applying a record

    /// Checks `record` against everything before it (link, signature, authority, meaning) and applies it.
    /// - Throws: ``LedgerError/broken(seq:_:)`` naming what is wrong; the state is then unchanged.
    public mutating func apply(_ record: LedgerRecord) throws(LedgerError) {
        func fail(_ why: String) -> LedgerError { .broken(seq: record.seq, why) }
        guard record.registry == registry else { throw fail("belongs to registry \(record.registry), not \(registry)") }
        guard record.seq == seq + 1 else { throw fail("follows record \(seq): a record is missing, inserted or reordered") }
        guard record.prev == hash else { throw fail("does not link to record \(seq) (rewritten, inserted or reordered)") }
        try checkSignature(record)
        var versions = recordedVersionKeys
        var recorded: String? = nil
        if case .version(let facts) = record.change { recorded = facts.label }
        if let recorded, versions?.contains(recorded) == true { throw fail("records \(recorded) a second time: a version has one record") }
        // The set leaves `self` while `next` is built, so that adding a name does not copy it: a copy per version
        // record (helper-74) would make a replay quadratic in the number of versions.
        recordedVersionKeys = nil
        var next = self
        do { try next.change(record, recorded: versions) } catch {
            recordedVersionKeys = versions
            throw error
        }
        next.seq = record.seq
        next.hash = record.hash
        if record.seq % Self.waypointInterval == 0 { next.waypoints?.append(record.hash) }
        if let recorded { versions?.insert(recorded) }
        next.recordedVersionKeys = versions
        self = next
    }

    /// This state with `waypoints`, the hashes of its records 1024, 2048, ..., and the versions recorded, found by the
    /// caller on the chain that ends at `hash` (a state remembered before them).
    func withIndexes(waypoints: [String], versions: RecordedVersions) -> LedgerState {
        var state = self
        state.waypoints = waypoints
        state.recordedVersionKeys = versions
        return state
    }

    /// What each kind of record means.
    /// - Parameter recorded: the versions recorded before `record` (nil in a state remembered before the set).
    private mutating func change(_ record: LedgerRecord, recorded: RecordedVersions?) throws(LedgerError) {
        func fail(_ why: String) -> LedgerError { .broken(seq: record.seq, why) }
        // What an adoption restates copies what an older Coffer accepted (dataset ids were free text before
        // 2026-11-28): its names are taken as they are, as when it was first read.
        let restated = record.seq <= adoptedThrough
        switch record.change {
        case .genesis(let key, let owner, let adoption):
            keys = (adoption?.legacyKeys ?? []).map { RegistryKey(identity: $0, since: 0, retiredBy: 1, retiredAt: record.at) }
            keys.append(RegistryKey(identity: key, since: record.seq))
            adoptedThrough = 1 + (adoption?.records ?? 0)
            if let owner {
                principals[owner.name] = owner.identity
                grants = [Grant(principal: owner.name, role: .admin)]
                trusted[owner.identity.keyID] = TrustedSigner(name: owner.name, identity: owner.identity)
            }
        case .keyRotate(let key, let proof, _):
            guard let old = currentKey else { throw fail("rotates before there is a key") }
            guard !keys.contains(where: { $0.identity.keyID == key.keyID }) else { throw fail("rotates to a key the registry already had") }
            let message = Self.rotationMessage(registry: registry, seq: record.seq, old: old.keyID, new: key.keyID)
            guard SignatureVerifier.verifyEd25519(signature: proof, message: message, publicKey: key.ed25519) else {
                throw fail("the new key \(key.keyID) did not sign its rotation (proof of possession)")
            }
            keys[keys.count - 1].retiredBy = record.seq
            keys[keys.count - 1].retiredAt = record.at
            keys.append(RegistryKey(identity: key, since: record.seq))
        case .principalAdd(let name, let identity, let roles):
            guard (try? ModelReference.validate(name: name)) != nil, !Self.reservedNames.contains(name) else {
                throw fail("invalid principal name \(name)")
            }
            guard principals[name] == nil else { throw fail("principal \(name) already exists") }
            guard !principals.values.contains(where: { $0.keyID == identity.keyID }) else {
                throw fail("key \(identity.keyID) is already another principal's")
            }
            let first = principals.isEmpty
            principals[name] = identity
            for role in (first ? [Role.admin] : []) + roles { insert(Grant(principal: name, role: role)) }
        case .principalRemove(let name):
            guard principals[name] != nil else { throw fail("removes \(name), who is not a principal") }
            let admins = Set(grants.filter { $0.role == .admin && $0.scope == "*" && $0.alias == nil }.map(\.principal))
            guard admins != [name] else { throw fail("removes \(name), the last admin of the registry") }
            principals[name] = nil
            grants.removeAll { $0.principal == name }
            for (id, token) in tokens where token.facts.principal == name { tokens[id]!.revoked = true }
        case .grant(let grant):
            guard principals[grant.principal] != nil else { throw fail("grants to \(grant.principal), who is not a principal") }
            guard Self.validScope(grant.scope) else { throw fail("grants on an invalid scope \(grant.scope)") }
            guard restated || grant.alias.map(Self.validAlias) ?? true else { throw fail("grants through an invalid alias name") }
            if grant.hasLimits {
                guard grant.role == .inference else { throw fail("puts session limits on a \(grant.role.rawValue) grant") }
                guard (grant.maxSessionSeconds ?? 1) <= 31_536_000, (grant.maxPredictions ?? 1) <= 1_000_000_000 else {
                    throw fail("grants limits beyond 365 days or 10^9 predictions")
                }
            }
            // The same grant with other limits replaces them; the same grant with the same limits changes nothing.
            if !grants.contains(grant) {
                grants.removeAll { $0.names(grant) }
                grants.append(grant)
                var since = limitsSince ?? [:]
                since[grant.limitKey] = grant.hasLimits ? record.at : nil
                limitsSince = since.isEmpty ? nil : since
            }
        case .revoke(let grant):
            guard let index = grants.firstIndex(of: grant) else {
                throw fail("revokes \(grant.summary) from \(grant.principal), who does not hold it")
            }
            grants.remove(at: index)
        case .trustAdd(let name, let identity):
            guard (try? PublicIdentity.validate(name: name)) != nil else { throw fail("invalid signer name \(name)") }
            if let holder = trusted.values.first(where: { $0.name == name }) {
                throw fail("the name \(name) is already bound to the trusted key \(holder.identity.keyID)")
            }
            if let existing = trusted[identity.keyID] { throw fail("key \(identity.keyID) is already trusted as \(existing.name)") }
            trusted[identity.keyID] = TrustedSigner(name: name, identity: identity)
        case .trustRemove(let keyID):
            guard trusted[keyID] != nil else { throw fail("stops trusting \(keyID), which was not trusted") }
            trusted[keyID] = nil
        case .policySet(let model, let alias, let rules):
            guard restated || ((try? ModelReference.validate(name: model)) != nil && alias.map(Self.validAlias) ?? true) else {
                throw fail("sets a policy on an invalid model or alias name")
            }
            let key = "\(model)@\(alias ?? "")"
            policies[key] = rules.isEmpty ? nil : rules
        case .budgetSet(let dataset, let epsilon, let delta, let models):
            guard restated || (try? ModelReference.validate(datasetID: dataset)) != nil else {
                throw fail("sets a budget on an invalid dataset id")
            }
            guard epsilon > 0, epsilon.isFinite, delta > 0, delta < 1 else { throw fail("a budget needs epsilon > 0 and delta in (0, 1)") }
            if let models, let bad = models.first(where: { !Self.validScope($0) }) {
                throw fail("names an invalid scope \(bad) for budget \(dataset)")
            }
            budgets[dataset, default: Budget(epsilon: epsilon, delta: delta, charges: [], rdp: Self.rdp([]))].epsilon = epsilon
            budgets[dataset]!.delta = delta
            budgets[dataset]!.models = models
        case .version(let facts):
            try recordVersion(facts, record: record)
        case .aliasSet(let model, let alias, let version, let digest, let facts):
            guard restated || Self.validAlias(alias) else { throw fail("sets an invalid alias name on \(model)") }
            guard latest[model] != nil else { throw fail("sets an alias of \(model), which has no version") }
            guard recorded?.contains(LedgerChange.VersionFacts.label(model: model, version: version)) != false else {
                throw fail("points \(model)@\(alias) at \(version), which has no version record")
            }
            guard erased[digest] == nil else { throw fail("points \(model)@\(alias) at an erased version") }
            guard facts.charged == isCharged(digest) else { throw fail("states a budget charge the ledger does not hold") }
            for (_, rules) in policies(model: model, alias: alias) {
                if let why = rules.violation(facts: facts, signerName: trusted[facts.signer]?.name) {
                    throw fail("alias \(alias) of \(model) \(why)")
                }
            }
            aliases["\(model)@\(alias)"] = AliasTarget(version: version, digest: digest, seq: record.seq)
        case .aliasRemove(let model, let alias):
            guard aliases.removeValue(forKey: "\(model)@\(alias)") != nil else { throw fail("removes \(model)@\(alias), which is not set") }
        case .erase(let model, let version, let digest):
            guard erased[digest] == nil else { throw fail("erases \(model):\(version) a second time") }
            erased[digest] = Erasure(model: model, version: version, at: record.at, by: record.by)
            aliases = aliases.filter { $0.value.digest != digest }
        case .rekey(_, _, let digest, let attestation):
            guard erased[digest] == nil else { throw fail("re-encrypts an erased version") }
            rekeys[digest] = attestation
        case .tokenCreate(let facts):
            guard principals[facts.principal] != nil else { throw fail("mints a token for \(facts.principal), who is not a principal") }
            guard tokens[facts.id] == nil else { throw fail("mints token \(facts.id) a second time") }
            tokens[facts.id] = Token(facts: facts, revoked: false)
        case .tokenRevoke(let id):
            guard tokens[id] != nil else { throw fail("revokes token \(id), which was never minted") }
            tokens[id]!.revoked = true
        case .auditHead(let auditSeq, let auditHash):
            if let auditHead, auditSeq < auditHead.seq { throw fail("marks audit entry \(auditSeq), before the marked \(auditHead.seq)") }
            auditHead = AuditMark(seq: auditSeq, hash: auditHash)
            auditMarkedAt = record.at
        }
    }

    private mutating func recordVersion(_ facts: LedgerChange.VersionFacts, record: LedgerRecord) throws(LedgerError) {
        func fail(_ why: String) -> LedgerError { .broken(seq: record.seq, why) }
        guard (try? ModelReference.validate(name: facts.model)) != nil, (try? ModelReference.validate(version: facts.version)) != nil else {
            throw fail("names an invalid version \(facts.label)")
        }
        if record.seq > adoptedThrough, let dataset = facts.dataset, (try? ModelReference.validate(datasetID: dataset)) == nil {
            throw fail("names an invalid dataset id")
        }
        if let problem = PrivacyMetadata.problem(facts.segments) { throw fail("its history is out of bounds: \(problem)") }
        let budget = facts.dataset.flatMap { budgets[$0] }
        guard facts.charged == (budget != nil) else {
            throw fail("charged must say whether dataset \(facts.dataset ?? "-") has a budget (it \(budget == nil ? "has none" : "has one"))")
        }
        if let dataset = facts.dataset, let budget {
            guard budget.admits(model: facts.model) else {
                throw fail("charges \(facts.model) to dataset \(dataset), whose budget is for \(budget.models?.joined(separator: ", ") ?? "*") only")
            }
            guard facts.chargeRefusal == nil else {
                throw fail("a version charged to \(dataset) needs its accountant history, and differential privacy (its statistics' too)")
            }
            if facts.overrideBy == nil, let spent = spent(dataset, adding: facts.segments), spent > budget.epsilon {
                throw fail(String(format: "takes dataset %@ to epsilon %.4f, past its budget of %g", dataset, spent, budget.epsilon))
            }
            budgets[dataset]!.charges.append(
                .init(model: facts.model, version: facts.version, digest: facts.digest, segments: facts.segments, overrideBy: facts.overrideBy)
            )
            budgets[dataset]!.rdp = Self.sum(budgets[dataset]!.rdp, Self.rdp(facts.segments))
        }
        let number = Int64(facts.version)
        let candidate = Latest(version: facts.version, number: number, digest: facts.digest, seq: record.seq)
        if let current = latest[facts.model] {
            // An integer version outranks every name; among integers the highest, among names the last recorded.
            let replaces: Bool =
                switch (current.number, number) {
                case (let a?, let b?): b > a
                case (nil, _?): true
                case (_?, nil): false
                case (nil, nil): true
                }
            if replaces { latest[facts.model] = candidate }
        } else {
            latest[facts.model] = candidate
        }
    }

    private mutating func insert(_ grant: Grant) {
        if !grants.contains(grant) { grants.append(grant) }
    }

    /// Aliases follow the version syntax. A name that fails is not repeated in the message: it could hold anything.
    static func validAlias(_ alias: String) -> Bool { (try? ModelReference.validate(version: alias)) != nil }

    static func validScope(_ scope: String) -> Bool {
        scope == "*" || (try? ModelReference.validate(name: scope.hasSuffix("/") ? String(scope.dropLast()) : scope)) != nil
    }
}
