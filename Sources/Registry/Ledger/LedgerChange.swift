public import CofferCrypto
public import CofferTraining
import Foundation

/// One change to a registry's governance state, as a ledger record states it (docs/FORMAT.md, "Signed registry
/// records"). Every decision the registry takes is made on the state these changes build, never on the tables
/// that copy it.
public enum LedgerChange: Sendable, Equatable {
    /// The most scopes a budget names (docs/FORMAT.md, "Budgets").
    public static let maximumBudgetModels = 64

    case genesis(key: PublicIdentity, owner: Owner?, adoption: Adoption? = nil)
    case keyRotate(key: PublicIdentity, proof: [UInt8], approval: [UInt8]?)
    case principalAdd(name: String, identity: PublicIdentity, roles: [Role])
    case principalRemove(name: String)
    case grant(Grant)
    case revoke(Grant)
    case trustAdd(name: String, identity: PublicIdentity)
    case trustRemove(keyID: String)
    case policySet(model: String, alias: String?, rules: PolicyRules)
    /// `models`: the scopes whose versions may be charged to the budget; `nil` for any model.
    case budgetSet(dataset: String, epsilon: Double, delta: Double, models: [String]?)
    case version(VersionFacts)
    case aliasSet(model: String, alias: String, version: String, digest: String, facts: AliasFacts)
    case aliasRemove(model: String, alias: String)
    case erase(model: String, version: String, digest: String)
    case rekey(model: String, version: String, digest: String, attestation: String)
    case auditHead(seq: Int64, hash: String)
    case tokenCreate(TokenFacts)
    case tokenRevoke(id: String)

    /// What the genesis record of a registry that predates the ledger says of its past: how many records after it
    /// restate that past (the registry key signs them alone, as vouched by whoever adopted it), and the registry keys
    /// it had retired by then (the audit heads they signed before the adoption still verify).
    public struct Adoption: Sendable, Equatable {
        public var records: Int64
        public var legacyKeys: [PublicIdentity]
    }

    /// The principal a registry is created with.
    public struct Owner: Sendable, Equatable {
        public var name: String
        public var identity: PublicIdentity
    }

    /// What a `version` record says of a version: enough to resolve "latest" and to recompute budgets.
    public struct VersionFacts: Sendable, Equatable {
        public var model: String
        public var version: String
        /// `MODEL:VERSION`: how the ledger names a version (its records' `object`, the state's recorded versions).
        public static func label(model: String, version: String) -> String { "\(model):\(version)" }
        public var label: String { Self.label(model: model, version: version) }
        public var digest: String
        /// The publisher's public identity: in a registry without principals, any key may record a version, so the
        /// record carries the key its signature is checked with.
        public var publisher: PublicIdentity
        public var dataset: String?
        public var mechanism: String?
        public var segments: [PrivacySegment]
        public var charged: Bool
        public var overrideBy: String?
        /// The statement's `standardisation` (docs/FORMAT.md, "Checkpoints"): `nonprivate` may not be charged. Absent from
        /// records of versions that do not say, and from every record made before 2026-12-06, which read the same.
        public var standardisation: String? = nil
        /// The statement's `batch_sampling`: `seeded` may not be charged. Absent as `standardisation` is.
        public var batchSampling: String? = nil
    }

    /// A bearer token as its `token.create` record states it: the token itself is never recorded, only its keyed hash.
    public struct TokenFacts: Sendable, Equatable, Codable {
        public var id: String
        public var principal: String
        public var scope: TokenScope
        public var expires: String
        /// Hex of the token's keyed hash (docs/FORMAT.md, "HTTP server").
        public var hash: String
    }

    /// The signed facts of the version an alias is set to, as the policies in force judge them.
    public struct AliasFacts: Sendable, Equatable, Codable {
        public var epsilon: Double?
        public var delta: Double?
        public var pruningRatio: Double?
        /// The signer's key ID.
        public var signer: String
        public var charged: Bool
        /// The signed evidence's audit bound and membership AUC; absent from records of versions without them (and
        /// from every record made before evidence existed, which therefore reads the same).
        public var auditEpsilon: Double? = nil
        public var membershipAUC: Double? = nil

        enum CodingKeys: String, CodingKey {
            case epsilon, delta, signer, charged
            case pruningRatio = "pruning_ratio"
            case auditEpsilon = "audit_epsilon"
            case membershipAUC = "membership_auc"
        }
    }

    var kind: String {
        switch self {
        case .genesis: "genesis"
        case .keyRotate: "key.rotate"
        case .principalAdd: "principal.add"
        case .principalRemove: "principal.remove"
        case .grant: "grant"
        case .revoke: "revoke"
        case .trustAdd: "trust.add"
        case .trustRemove: "trust.remove"
        case .policySet: "policy.set"
        case .budgetSet: "budget.set"
        case .version: "version"
        case .aliasSet: "alias.set"
        case .aliasRemove: "alias.remove"
        case .erase: "erase"
        case .rekey: "rekey"
        case .auditHead: "audit.head"
        case .tokenCreate: "token.create"
        case .tokenRevoke: "token.revoke"
        }
    }

    /// What the record is about, for indexed look-ups (not trusted: the payload is).
    var object: String {
        switch self {
        case .genesis, .keyRotate: "registry-key"
        case .principalAdd(let name, _, _), .principalRemove(let name): "principal:\(name)"
        case .grant(let grant), .revoke(let grant): "principal:\(grant.principal)"
        case .trustAdd(_, let identity): "trust:\(identity.keyID)"
        case .trustRemove(let keyID): "trust:\(keyID)"
        case .policySet(let model, let alias, _): "policy:\(model)@\(alias ?? "")"
        case .budgetSet(let dataset, _, _, _): "dataset:\(dataset)"
        case .version(let facts): "version:\(facts.label)"
        case .aliasSet(let model, let alias, _, _, _), .aliasRemove(let model, let alias): "alias:\(model)@\(alias)"
        case .erase(let model, let version, _), .rekey(let model, let version, _, _): "version:\(VersionFacts.label(model: model, version: version))"
        case .auditHead: "audit"
        case .tokenCreate(let facts): "token:\(facts.id)"
        case .tokenRevoke(let id): "token:\(id)"
        }
    }

    /// The kind's members of the payload.
    var fields: [String: JSONValue] {
        func s(_ v: String?) -> JSONValue { v.map { .string($0) } ?? .null }
        func n(_ v: Double?) -> JSONValue { v.map { .number($0) } ?? .null }
        switch self {
        case .genesis(let key, let owner, let adoption):
            var fields: [String: JSONValue] = [
                "key": key.json, "owner": owner.map { .object(["name": .string($0.name), "identity": $0.identity.json]) } ?? .null,
            ]
            if let adoption {
                fields["adopts"] = .number(Double(adoption.records))
                fields["legacy_keys"] = .array(adoption.legacyKeys.map(\.json))
            }
            return fields
        case .keyRotate(let key, let proof, let approval):
            return [
                "key": key.json, "proof": .string(Data(proof).base64EncodedString()),
                "approval": approval.map { .string(Data($0).base64EncodedString()) } ?? .null,
            ]
        case .principalAdd(let name, let identity, let roles):
            return ["name": .string(name), "identity": identity.json, "roles": .array(roles.map { .string($0.rawValue) })]
        case .principalRemove(let name):
            return ["name": .string(name)]
        case .grant(let grant), .revoke(let grant):
            var fields: [String: JSONValue] = [
                "principal": .string(grant.principal), "role": .string(grant.role.rawValue), "scope": .string(grant.scope), "alias": s(grant.alias),
            ]
            // Only when set: a grant without limits is the same bytes as before limits existed.
            if let seconds = grant.maxSessionSeconds { fields["max_session_seconds"] = .number(Double(seconds)) }
            if let predictions = grant.maxPredictions { fields["max_predictions"] = .number(Double(predictions)) }
            return fields
        case .trustAdd(let name, let identity):
            return ["name": .string(name), "identity": identity.json]
        case .trustRemove(let keyID):
            return ["key_id": .string(keyID)]
        case .policySet(let model, let alias, let rules):
            return ["model": .string(model), "alias": s(alias), "rules": rules.json]
        case .budgetSet(let dataset, let epsilon, let delta, let models):
            var fields: [String: JSONValue] = ["dataset": .string(dataset), "epsilon": .number(epsilon), "delta": .number(delta)]
            // Only when set: a budget any model may be charged to is the same bytes as before budgets named models.
            if let models { fields["models"] = .array(models.map { .string($0) }) }
            return fields
        case .version(let facts):
            var fields: [String: JSONValue] = [
                "model": .string(facts.model), "version": .string(facts.version), "digest": .string(facts.digest),
                "publisher": facts.publisher.json, "dataset": s(facts.dataset), "mechanism": s(facts.mechanism),
                "segments": PrivacyMetadata.segmentsJSON(facts.segments), "charged": .bool(facts.charged), "override_by": s(facts.overrideBy),
            ]
            if let standardisation = facts.standardisation { fields["standardisation"] = .string(standardisation) }
            if let batchSampling = facts.batchSampling { fields["batch_sampling"] = .string(batchSampling) }
            return fields
        case .aliasSet(let model, let alias, let version, let digest, let facts):
            var judged: [String: JSONValue] = [
                "epsilon": n(facts.epsilon), "delta": n(facts.delta), "pruning_ratio": n(facts.pruningRatio),
                "signer": .string(facts.signer), "charged": .bool(facts.charged),
            ]
            // Only when the version has them, so that records of versions without evidence read as before.
            if let bound = facts.auditEpsilon { judged["audit_epsilon"] = .number(bound) }
            if let auc = facts.membershipAUC { judged["membership_auc"] = .number(auc) }
            return [
                "model": .string(model), "alias": .string(alias), "version": .string(version), "digest": .string(digest),
                "facts": .object(judged),
            ]
        case .aliasRemove(let model, let alias):
            return ["model": .string(model), "alias": .string(alias)]
        case .erase(let model, let version, let digest):
            return ["model": .string(model), "version": .string(version), "digest": .string(digest)]
        case .rekey(let model, let version, let digest, let attestation):
            return ["model": .string(model), "version": .string(version), "digest": .string(digest), "attestation": .string(attestation)]
        case .auditHead(let seq, let hash):
            return ["audit_seq": .number(Double(seq)), "audit_hash": .string(hash)]
        case .tokenCreate(let facts):
            return [
                "id": .string(facts.id), "principal": .string(facts.principal), "scope": .string(facts.scope.rawValue),
                "expires": .string(facts.expires), "hash": .string(facts.hash),
            ]
        case .tokenRevoke(let id):
            return ["id": .string(id)]
        }
    }

    /// Reads a kind and its members back; anything missing or of the wrong type is a malformed record.
    init(kind: String, fields f: [String: JSONValue]) throws(LedgerError) {
        func string(_ key: String) throws(LedgerError) -> String {
            guard let value = f[key]?.stringValue else { throw .malformed("\(kind) needs a string \(key)") }
            return value
        }
        func optionalString(_ key: String) throws(LedgerError) -> String? {
            guard let value = f[key], value != .null else { return nil }
            guard let text = value.stringValue else { throw .malformed("\(kind): \(key) must be a string or null") }
            return text
        }
        func number(_ key: String) throws(LedgerError) -> Double {
            guard let value = f[key]?.numberValue, value.isFinite else { throw .malformed("\(kind) needs a number \(key)") }
            return value
        }
        func identity(_ value: JSONValue?) throws(LedgerError) -> PublicIdentity {
            guard let value, case .object = value, let parsed = try? PublicIdentity(json: value) else {
                throw .malformed("\(kind) needs a public identity")
            }
            return parsed
        }
        func decode<T: Decodable>(_ type: T.Type, _ key: String) throws(LedgerError) -> T {
            guard let value = f[key], let data = try? JSONEncoder().encode(value), let decoded = try? JSONDecoder().decode(T.self, from: data) else {
                throw .malformed("\(kind): \(key) is malformed")
            }
            return decoded
        }
        func role(_ text: String) throws(LedgerError) -> Role {
            guard let role = Role(rawValue: text) else { throw .malformed("\(kind): unknown role \(text)") }
            return role
        }
        switch kind {
        case "genesis":
            var owner: Owner? = nil
            if let value = f["owner"], value != .null {
                guard let name = value["name"]?.stringValue else { throw .malformed("genesis owner needs a name") }
                owner = Owner(name: name, identity: try identity(value["identity"]))
            }
            var adoption: Adoption? = nil
            if let count = f["adopts"] {
                guard let records = count.integerValue, records >= 0, case .array(let keys)? = f["legacy_keys"] else {
                    throw .malformed("genesis adopts needs a whole number and legacy_keys")
                }
                var legacy: [PublicIdentity] = []
                for key in keys { legacy.append(try identity(key)) }
                adoption = Adoption(records: Int64(records), legacyKeys: legacy)
            }
            self = .genesis(key: try identity(f["key"]), owner: owner, adoption: adoption)
        case "key.rotate":
            guard let proof = Data(base64Encoded: try string("proof")) else { throw .malformed("key.rotate proof is not base64") }
            var approval: [UInt8]? = nil
            if let text = try optionalString("approval") {
                guard let bytes = Data(base64Encoded: text) else { throw .malformed("key.rotate approval is not base64") }
                approval = Array(bytes)
            }
            self = .keyRotate(key: try identity(f["key"]), proof: Array(proof), approval: approval)
        case "principal.add":
            guard case .array(let roles)? = f["roles"] else { throw .malformed("principal.add needs roles") }
            var parsed: [Role] = []
            for item in roles {
                guard let text = item.stringValue else { throw .malformed("principal.add roles must be strings") }
                parsed.append(try role(text))
            }
            self = .principalAdd(name: try string("name"), identity: try identity(f["identity"]), roles: parsed)
        case "principal.remove":
            self = .principalRemove(name: try string("name"))
        case "grant", "revoke":
            func limit(_ key: String) throws(LedgerError) -> Int? {
                guard let value = f[key], value != .null else { return nil }
                guard let whole = value.integerValue, whole >= 1 else { throw .malformed("\(kind): \(key) must be a whole number from 1") }
                return Int(whole)
            }
            let grant = Grant(
                principal: try string("principal"),
                role: try role(try string("role")),
                scope: try string("scope"),
                alias: try optionalString("alias"),
                maxSessionSeconds: try limit("max_session_seconds"),
                maxPredictions: try limit("max_predictions")
            )
            self = kind == "grant" ? .grant(grant) : .revoke(grant)
        case "trust.add":
            self = .trustAdd(name: try string("name"), identity: try identity(f["identity"]))
        case "trust.remove":
            self = .trustRemove(keyID: try string("key_id"))
        case "policy.set":
            self = .policySet(model: try string("model"), alias: try optionalString("alias"), rules: try decode(PolicyRules.self, "rules"))
        case "budget.set":
            var models: [String]? = nil
            if let value = f["models"], value != .null {
                guard case .array(let items) = value, (1...Self.maximumBudgetModels).contains(items.count) else {
                    throw .malformed("budget.set models must be 1 to \(Self.maximumBudgetModels) scopes")
                }
                models = []
                for item in items {
                    guard let scope = item.stringValue else { throw .malformed("budget.set models must be strings") }
                    models?.append(scope)
                }
            }
            self = .budgetSet(dataset: try string("dataset"), epsilon: try number("epsilon"), delta: try number("delta"), models: models)
        case "version":
            guard case .bool(let charged)? = f["charged"] else { throw .malformed("version needs charged") }
            self = .version(
                VersionFacts(
                    model: try string("model"),
                    version: try string("version"),
                    digest: try string("digest"),
                    publisher: try identity(f["publisher"]),
                    dataset: try optionalString("dataset"),
                    mechanism: try optionalString("mechanism"),
                    segments: try decode([PrivacySegment].self, "segments"),
                    charged: charged,
                    overrideBy: try optionalString("override_by"),
                    standardisation: try optionalString("standardisation"),
                    batchSampling: try optionalString("batch_sampling")
                )
            )
        case "alias.set":
            self = .aliasSet(
                model: try string("model"),
                alias: try string("alias"),
                version: try string("version"),
                digest: try string("digest"),
                facts: try decode(AliasFacts.self, "facts")
            )
        case "alias.remove":
            self = .aliasRemove(model: try string("model"), alias: try string("alias"))
        case "erase":
            self = .erase(model: try string("model"), version: try string("version"), digest: try string("digest"))
        case "rekey":
            self = .rekey(
                model: try string("model"),
                version: try string("version"),
                digest: try string("digest"),
                attestation: try string("attestation")
            )
        case "audit.head":
            let seq = try number("audit_seq")
            guard seq >= 0, seq.rounded() == seq, seq < 9e15 else { throw .malformed("audit.head audit_seq must be a whole number") }
            self = .auditHead(seq: Int64(seq), hash: try string("audit_hash"))
        case "token.create":
            guard let scope = TokenScope(rawValue: try string("scope")) else { throw .malformed("token.create: unknown scope") }
            self = .tokenCreate(
                TokenFacts(
                    id: try string("id"),
                    principal: try string("principal"),
                    scope: scope,
                    expires: try string("expires"),
                    hash: try string("hash")
                )
            )
        case "token.revoke":
            self = .tokenRevoke(id: try string("id"))
        default:
            throw .malformed("unknown record kind '\(kind)'")
        }
    }
}
