import Foundation

// The ledger's rows, and the tables fsck compares with the ledger's replay.
// How columns and values are written: VersionRecords.swift.

/// A row of `ledger`: one signed record (its envelope), with the look-up columns derived from it.
struct LedgerRow: Codable, Sendable, Equatable {
    var seq: Int64
    var kind: String
    var object: String
    var envelope: Data
    var hash: String

    enum CodingKeys: String, CodingKey { case seq, kind, object, envelope, hash }

    init(seq: Int64, kind: String, object: String, envelope: Data, hash: String) {
        self.seq = seq
        self.kind = kind
        self.object = object
        self.envelope = envelope
        self.hash = hash
    }
}

/// The tables fsck compares with the ledger's replay.
struct MaterializedTables: Sendable {
    struct Alias: Sendable {
        var model: String
        var alias: String
        var version: String
    }

    struct Charge: Sendable {
        var dataset: String
        var model: String
        var version: String
    }

    var principals: [PrincipalRecord] = []
    var grants: [GrantRecord] = []
    var trusted: [TrustedSignerRecord] = []
    var aliases: [Alias] = []
    var policies: [PolicyRecord] = []
    var budgets: [BudgetRecord] = []
    var charges: [Charge] = []
    var erasures: [VersionHead] = []
    var keys: [RegistryKeyRecord] = []
    var tokens: [APITokenRecord] = []
    var versions: [VersionHead] = []

    init() {}
}
