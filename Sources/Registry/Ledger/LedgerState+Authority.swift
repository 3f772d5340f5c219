import CofferCrypto

/// Who may sign what, at a point of the chain: the rules ``LedgerState/apply(_:)`` checks before a record's meaning.
extension LedgerState {
    /// The signature, and the signer's authority for the change at this point of the chain.
    func checkSignature(_ record: LedgerRecord) throws(LedgerError) {
        func fail(_ why: String) -> LedgerError { .broken(seq: record.seq, why) }
        func verify(_ identity: PublicIdentity) throws(LedgerError) {
            guard record.isSigned(by: identity) else { throw fail("its signature by \(record.signerKeyID) does not verify") }
        }
        if case .genesis(let key, _, _) = record.change {
            guard record.seq == 1, key.keyID == registry else { throw fail("a genesis record is only record 1, by the root key \(registry)") }
            return try verify(key)
        }
        guard let current = currentKey else { throw fail("precedes the genesis record") }
        if record.signerKeyID == current.keyID {
            try verify(current)
            // Without principals, and while an adoption restates a registry's past, the registry's key makes every
            // change. With them, it is an online key (a server holds it unlocked): in its own name it only marks the
            // audit log, and for a principal (the holder of a bearer token) it makes only what the server's routes
            // make, with that principal's roles. Principals, grants, trust, policies, minting tokens and erasures need
            // an admin's own signature; a rotation, an admin's approval. Revoking a token only takes power away (and a
            // compromised server can refuse service anyway), so the pages may do it at once.
            guard checksPrincipals, record.seq > adoptedThrough else { return }
            if record.by == "registry" {
                guard case .auditHead = record.change else {
                    throw fail(
                        "the registry's key signs a \(record.change.kind) record in its own name, but this registry has principals: an admin signs it"
                    )
                }
                return
            }
            guard principals[record.by] != nil else { throw fail("is made for \(record.by), who is not a principal") }
            switch record.change {
            case .version, .aliasSet, .aliasRemove, .budgetSet, .rekey, .keyRotate, .tokenRevoke: break
            default: throw fail("the registry's key signs a \(record.change.kind) record for \(record.by): only \(record.by)'s own key can")
            }
            if case .tokenRevoke(let id) = record.change, tokens[id]?.facts.principal == record.by { return }
            let (role, model) = Self.authority(for: record.change)
            guard holds(record.by, role, on: model) else {
                throw fail("\(record.by) did not hold the \(role.rawValue) role\(model.map { " on \($0)" } ?? "") for a \(record.change.kind) record")
            }
            if case .version(let facts) = record.change, let override = facts.overrideBy {
                guard override == record.by, holds(override, .admin, on: facts.model) else {
                    throw fail("overrides a budget for \(override), who is not an admin of \(facts.model)")
                }
            }
            if case .keyRotate(let key, _, let approval) = record.change {
                let message = Self.approvalMessage(registry: registry, seq: record.seq, old: current.keyID, new: key.keyID)
                guard let approval, let admin = principals[record.by],
                    SignatureVerifier.verifyEd25519(signature: approval, message: message, publicKey: admin.ed25519)
                else { throw fail("a rotation of the registry's key needs the approval of an admin's own key (\(record.by)'s does not verify)") }
            }
            return
        }
        switch record.change {
        case .keyRotate, .rekey, .auditHead, .genesis:
            throw fail("a \(record.change.kind) record is signed only by the current registry key \(current.keyID)")
        default: break
        }
        guard checksPrincipals else {
            // A registry without principals: any key records a version (trust decides at pull), trusted signers move aliases.
            switch record.change {
            case .version(let facts):
                guard facts.publisher.keyID == record.signerKeyID else { throw fail("a version record is signed by its publisher") }
                return try verify(facts.publisher)
            case .aliasSet, .aliasRemove:
                guard let signer = trusted[record.signerKeyID] else {
                    throw fail("its signer \(record.signerKeyID) is neither the registry key nor a trusted signer")
                }
                return try verify(signer.identity)
            default:
                throw fail("in a registry without principals a \(record.change.kind) record is signed by the registry key")
            }
        }
        guard let identity = principals[record.by], identity.keyID == record.signerKeyID else {
            throw fail("is signed by \(record.signerKeyID), which is not the key of principal \(record.by)")
        }
        try verify(identity)
        // A principal may revoke its own tokens.
        if case .tokenRevoke(let id) = record.change, tokens[id]?.facts.principal == record.by { return }
        let (role, model) = Self.authority(for: record.change)
        guard holds(record.by, role, on: model) else {
            throw fail("\(record.by) did not hold the \(role.rawValue) role\(model.map { " on \($0)" } ?? "") for a \(record.change.kind) record")
        }
        if case .version(let facts) = record.change, let override = facts.overrideBy {
            guard override == record.by, holds(record.by, .admin, on: facts.model) else {
                throw fail("a budget override is made by an admin of \(facts.model) in their own name")
            }
        }
    }

    /// The role a principal needs to sign a change, and on which model (nil: every model).
    static func authority(for change: LedgerChange) -> (Role, String?) {
        switch change {
        case .policySet(let model, _, _), .erase(let model, _, _): (.admin, model)
        case .version(let facts): (.publisher, facts.model)
        case .aliasSet(let model, _, _, _, _), .aliasRemove(let model, _): (.publisher, model)
        default: (.admin, nil)
        }
    }

    /// The message an admin signs to approve a rotation of the registry's key, in a registry with principals.
    static func approvalMessage(registry: String, seq: Int64, old: String, new: String) -> [UInt8] {
        Array("coffer/v1/key-rotate-approval\n\(registry)\n\(seq)\n\(old)\n\(new)".utf8)
    }

    /// The message a new registry key signs to show it holds its private half.
    static func rotationMessage(registry: String, seq: Int64, old: String, new: String) -> [UInt8] {
        Array("coffer/v1/key-rotate\n\(registry)\n\(seq)\n\(old)\n\(new)".utf8)
    }
}
