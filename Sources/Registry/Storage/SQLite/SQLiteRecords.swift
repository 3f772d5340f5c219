import Foundation
import GRDB

// GRDB's side of the records: table names and typed columns (as GRDB's demo apps declare them). Codable supplies the
// row coding; [Data] columns are BLOBs.

extension SessionRateRecord: FetchableRecord, PersistableRecord {
    static let databaseTableName = "session_rates"
}

extension WebSessionRecord: FetchableRecord, PersistableRecord {
    static let databaseTableName = "web_sessions"
    enum Columns {
        static let idHash = Column(CodingKeys.idHash)
        static let principal = Column(CodingKeys.principal)
        static let createdAt = Column(CodingKeys.createdAt)
        static let expiresAt = Column(CodingKeys.expiresAt)
    }
}

extension LedgerRow: FetchableRecord, PersistableRecord {
    static let databaseTableName = "ledger"
    enum Columns {
        static let seq = Column(CodingKeys.seq)
        static let kind = Column(CodingKeys.kind)
        static let object = Column(CodingKeys.object)
    }
}

extension VersionRecord: FetchableRecord, MutablePersistableRecord {
    static let databaseTableName = "versions"
    enum Columns {
        static let id = Column(CodingKeys.id)
        static let modelID = Column(CodingKeys.modelID)
        static let version = Column(CodingKeys.version)
        static let number = Column(CodingKeys.number)
        static let digest = Column(CodingKeys.digest)
        static let createdAt = Column(CodingKeys.createdAt)
    }

    mutating func didInsert(_ inserted: InsertionSuccess) { id = inserted.rowID }
}

extension FileRecord: FetchableRecord, PersistableRecord {
    static let databaseTableName = "files"
    enum Columns {
        static let versionID = Column(CodingKeys.versionID)
        static let path = Column(CodingKeys.path)
        static let sealedSHA256 = Column(CodingKeys.sealedSHA256)
    }
}

extension WrappedKeyRecord: FetchableRecord, PersistableRecord {
    static let databaseTableName = "wrapped_keys"
    enum Columns {
        static let versionID = Column(CodingKeys.versionID)
        static let recipientKeyID = Column(CodingKeys.recipientKeyID)
    }
}

extension RekeyedFileRecord: FetchableRecord, PersistableRecord {
    static let databaseTableName = "rekeyed_files"
    enum Columns {
        static let versionID = Column(CodingKeys.versionID)
        static let path = Column(CodingKeys.path)
    }
}

extension RegistryKeyRecord: FetchableRecord, PersistableRecord {
    static let databaseTableName = "registry_keys"
    enum Columns {
        static let keyID = Column(CodingKeys.keyID)
        static let retiredAt = Column(CodingKeys.retiredAt)
    }
}

extension PrincipalRecord: FetchableRecord, PersistableRecord {
    static let databaseTableName = "principals"
    enum Columns {
        static let name = Column(CodingKeys.name)
        static let keyID = Column(CodingKeys.keyID)
    }
}

extension GrantRecord: FetchableRecord, PersistableRecord {
    static let databaseTableName = "grants"
    enum Columns {
        static let principal = Column(CodingKeys.principal)
        static let role = Column(CodingKeys.role)
        static let scope = Column(CodingKeys.scope)
        static let alias = Column(CodingKeys.alias)
    }
}

extension TrustedSignerRecord: FetchableRecord, PersistableRecord {
    static let databaseTableName = "trusted_signers"
    enum Columns {
        static let keyID = Column(CodingKeys.keyID)
    }
}

extension RecipientIdentityRecord: FetchableRecord, PersistableRecord {
    static let databaseTableName = "recipient_identities"
}

extension PolicyRecord: FetchableRecord, PersistableRecord {
    static let databaseTableName = "policies"
    enum Columns {
        static let model = Column(CodingKeys.model)
        static let alias = Column(CodingKeys.alias)
    }
}

extension BudgetRecord: FetchableRecord, PersistableRecord {
    static let databaseTableName = "budgets"
}

extension APITokenRecord: FetchableRecord, PersistableRecord {
    static let databaseTableName = "api_tokens"
    enum Columns {
        static let id = Column(CodingKeys.id)
        static let tokenHash = Column(CodingKeys.tokenHash)
        static let principal = Column(CodingKeys.principal)
        static let revokedAt = Column(CodingKeys.revokedAt)
        static let createdAt = Column(CodingKeys.createdAt)
    }
}

extension SessionRecord: FetchableRecord, PersistableRecord {
    static let databaseTableName = "sessions"
    enum Columns {
        static let id = Column(CodingKeys.id)
        static let tokenHash = Column(CodingKeys.tokenHash)
        static let principal = Column(CodingKeys.principal)
        static let versionID = Column(CodingKeys.versionID)
        static let wrappedKey = Column(CodingKeys.wrappedKey)
        static let revokedAt = Column(CodingKeys.revokedAt)
        static let expiresAt = Column(CodingKeys.expiresAt)
    }
}

extension AuditEntryRecord: FetchableRecord, PersistableRecord {
    static let databaseTableName = "audit_log"
    enum Columns {
        static let seq = Column(CodingKeys.seq)
        static let at = Column(CodingKeys.at)
        static let principal = Column(CodingKeys.principal)
        static let action = Column(CodingKeys.action)
    }
}

extension AuditHeadRecord: FetchableRecord, PersistableRecord {
    static let databaseTableName = "audit_heads"
    enum Columns {
        static let seq = Column(CodingKeys.seq)
    }
}

extension UploadRecord: FetchableRecord, PersistableRecord {
    static let databaseTableName = "uploads"
}
