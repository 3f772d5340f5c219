import CofferCrypto
import Foundation

/// Where a registry keeps its metadata (docs/FORMAT.md, "Metadata stores"): SQLite (``SQLiteMetadataStore``, the
/// embedded default) or PostgreSQL. The tables of `schema/` and `schema/postgres/`, as typed records.
///
/// A store persists; it decides nothing. Every decision is taken by the registry on its verified ledger state, and a
/// change is committed as one ``UnitOfWork``: the ledger records it appends, the rows they imply and their audit
/// entries, all or nothing. The ledger's last sequence number is the one order of changes: a unit built on an older
/// end is refused with ``CofferRegistryError/ledgerMoved`` and rebuilt by the registry (another writer, process or
/// replica, appended first). Reads are not one snapshot across calls; each call is consistent on its own.
protocol MetadataStore: Sendable {
    /// How errors name the store: `SQLite database /srv/registry/registry.sqlite`, `PostgreSQL at 10.0.0.5:5432/coffer`.
    var name: String { get }

    /// Commits `work` in one transaction.
    func commit(_ work: UnitOfWork) async throws(CofferRegistryError)

    /// Stops the store's connections (a PostgreSQL client's); the store is unusable afterwards.
    func close() async

    /// Whether this process is the one that signs audit heads for every server over the store (docs/FORMAT.md,
    /// "Metadata stores"): taken when free, kept while its holder lives. A SQLite registry has one machine's servers,
    /// each of which may sign (a head already signed is not signed again).
    func leadsAuditHeads() async -> Bool

    // MARK: Ledger and registry facts

    /// The sequence number of the ledger's last record, 0 when empty.
    func ledgerEnd() async throws(CofferRegistryError) -> Int64
    /// Records after `seq`, in order, at most `limit`.
    func ledgerRecords(after seq: Int64, limit: Int?) async throws(CofferRegistryError) -> [LedgerRow]
    /// The first record of `kind` about `object` (e.g. the `version` record of `version:NAME:VERSION`).
    func firstLedgerRecord(kind: String, object: String) async throws(CofferRegistryError) -> LedgerRow?
    /// A `registry_meta` value (`identity_key_id`, `state_head`).
    func meta(_ key: String) async throws(CofferRegistryError) -> String?

    // MARK: Versions

    func modelExists(_ name: String) async throws(CofferRegistryError) -> Bool
    /// Every model that has a version: its number of versions and its newest (by creation, then row id), the model
    /// with the newest version first. One query over the (model, created) index, not a row per version.
    func modelOverviews() async throws(CofferRegistryError) -> [ModelOverview]
    /// The row id and statement digest of `model:version`.
    func version(model: String, version: String) async throws(CofferRegistryError) -> (id: Int64, digest: String)?
    /// The row id of `model`'s version whose statement digest is `digest`.
    func versionID(model: String, digest: String) async throws(CofferRegistryError) -> Int64?
    /// The largest integer version of `model`.
    func highestVersionNumber(model: String) async throws(CofferRegistryError) -> Int64?
    /// Every version of `model` (erasing a model), or the versions with these row ids, by id.
    func versionHeads(model: String) async throws(CofferRegistryError) -> [VersionHead]
    func versionHeads(ids: [Int64]) async throws(CofferRegistryError) -> [VersionHead]
    /// Every version of every model, by id (fsck).
    func allVersionHeads() async throws(CofferRegistryError) -> [VersionHead]
    /// Everything stored about one version: its row, privacy history, files, attestations, erasure, re-encrypted files.
    func storedVersion(id: Int64) async throws(CofferRegistryError) -> StoredVersionRows?
    /// Versions with their model, parent, aliases, tags and erasure, newest first (`list`, `show`).
    func summaries(_ query: VersionQuery) async throws(CofferRegistryError) -> [VersionSummaryRow]
    /// The `dsse` attestations of these versions, by version id.
    func statements(versionIDs: [Int64]) async throws(CofferRegistryError) -> [Int64: Data]
    /// The names of the models whose versions name blob `digest` (original or re-encrypted).
    func models(holdingBlob digest: String) async throws(CofferRegistryError) -> [String]
    /// Every blob a version names, with the version's digest: the current ones after a rekey, else the signed ones.
    func referencedBlobs() async throws(CofferRegistryError) -> [(versionDigest: String, blob: String)]

    // MARK: Keys

    func wrappedKey(version: Int64, recipient: String) async throws(CofferRegistryError) -> Data?
    func wrappedKeys(version: Int64) async throws(CofferRegistryError) -> [WrappedKeyRecord]
    func wrappedKeys(recipient: String) async throws(CofferRegistryError) -> [WrappedKeyRecord]
    /// `recipient`'s wrapped keys of these versions, in one query (a share of 1,000 versions reads the registry's).
    func wrappedKeys(recipient: String, versions: [Int64]) async throws(CofferRegistryError) -> [WrappedKeyRecord]
    /// A public identity the registry has met (a recipient, principal or trusted signer), by key ID.
    func knownIdentity(keyID: String) async throws(CofferRegistryError) -> Data?

    // MARK: Access

    func token(hash: Data) async throws(CofferRegistryError) -> APITokenRecord?
    func tokens() async throws(CofferRegistryError) -> [APITokenRecord]
    func session(_ selector: SessionSelector) async throws(CofferRegistryError) -> SessionRow?
    func sessions() async throws(CofferRegistryError) -> [SessionRow]
    /// `principal`'s sessions, each key copy as stored (sealed, on PostgreSQL): only whether there is one may be read.
    /// What counting a grant's predictions needs, without opening every session's key copy.
    func sessions(of principal: String) async throws(CofferRegistryError) -> [SessionRow]
    /// Takes `count` uses (rows predicted) of a live session in one atomic step; false when it was revoked meanwhile
    /// or has fewer left. The last use destroys the session's key copy.
    func takeSessionUses(id: String, count: Int) async throws(CofferRegistryError) -> Bool
    /// Takes one token of a session's bucket (`rate` per second, at most `burst`): nil when taken, else the seconds
    /// until one is available. Shared by every server over the store.
    func takeRateToken(session: String, rate: Double, burst: Int, now: Double) async throws(CofferRegistryError) -> Double?
    /// Adds a web sign-in session, first dropping every expired one (`expires_at <= now`) and the principal's oldest
    /// beyond `keepingAtMost - 1`, in one transaction.
    func addWebSession(_ record: WebSessionRecord, keepingAtMost: Int, now: String) async throws(CofferRegistryError)
    func webSession(idHash: Data) async throws(CofferRegistryError) -> WebSessionRecord?
    func removeWebSession(idHash: Data) async throws(CofferRegistryError)
    /// Sets (or, with nil, clears) the session's notice, with the row's new binding.
    func setWebNotice(idHash: Data, notice: String?, status: Int64?, at: String?, binding: Data) async throws(CofferRegistryError)
    func upload(id: String) async throws(CofferRegistryError) -> UploadRecord?
    /// The uploads `principal` holds (every upload when nil).
    func uploads(principal: String?) async throws(CofferRegistryError) -> [UploadRecord]
    /// Pending blobs journalled before `time` (gc on stores that cannot list).
    func pendingBlobs(before time: String) async throws(CofferRegistryError) -> [String]

    // MARK: Audit log

    func lastAuditEntry() async throws(CofferRegistryError) -> (seq: Int64, hash: Data)?
    /// Entries from `at` on (all when nil), in order.
    func auditEntries(since at: String?) async throws(CofferRegistryError) -> [AuditEntryRecord]
    /// Up to `limit` entries with a sequence number below `seq` (from the newest when nil), newest first, of
    /// `principal` and `action` when given: one keyset page, found through the primary key, never an OFFSET.
    func auditEntries(before seq: Int64?, principal: String?, action: String?, limit: Int) async throws(CofferRegistryError) -> [AuditEntryRecord]
    func lastAuditHead() async throws(CofferRegistryError) -> AuditHeadRecord?
    /// Walks the chain in order from the entry after `seq` (0: the whole chain) up to and including `last` (nil: the
    /// end) without holding it in memory (`audit verify` of a million entries; the web page's walk of what was
    /// appended since its last check): `body` gets each entry's `seq` and its columns where the store holds them
    /// (1-6: at, principal, action, target, outcome, reason; 7: prev_hash; 8: entry_hash), valid during the call only,
    /// and returns false to stop.
    func forEachAuditEntry(
        after seq: Int64,
        through last: Int64?,
        _ body: (_ seq: Int64, _ column: (Int) -> UnsafeRawBufferPointer) throws(CofferRegistryError) -> Bool
    ) async throws(CofferRegistryError)
    /// The signed audit heads covering entries after `seq` (0: every head), in order.
    func auditHeads(after seq: Int64) async throws(CofferRegistryError) -> [AuditHeadRecord]
    func lastAuditHeadSeq() async throws(CofferRegistryError) -> Int64

    // MARK: Maintenance

    /// The store's own consistency check (`PRAGMA integrity_check`), as problems; empty when sound.
    func integrityProblems() async throws(CofferRegistryError) -> [String]
    /// The tables that copy the ledger, as fsck compares them with its replay.
    func materializedTables() async throws(CofferRegistryError) -> MaterializedTables
}

/// One commit: what a change appends to the ledger, the rows that follow from it, and its audit entries.
struct UnitOfWork: Sendable {
    /// The ledger end the work was decided on: the commit is refused with ``CofferRegistryError/ledgerMoved`` when
    /// another record was appended since. Nil for work that appends no record (audit entries, session uses).
    var ledgerEnd: Int64?
    var records: [LedgerRow] = []
    var changes: [MetadataChange] = []
    var audit: [AuditDraft] = []
    /// Decided inside the transaction, after every earlier commit: the commit is refused when it says so.
    var holdingCheck: HoldingCheck? = nil
    /// The ledger state `records` lead to, as ``Registry/append(_:signer:to:work:)`` applied them: once they commit
    /// on `ledgerEnd`, it is the state, and the registry adopts it without reading them back. Not stored.
    var ledgerAfter: LedgerState? = nil

    /// A check of what one principal holds, made inside the commit under a lock that other checks of that principal
    /// wait for: a limit is decided on the rows as they are when one more is added, never on a read made before (eight
    /// session opens at once had each seen the same allowance; 69 uploads were started under a cap of 64).
    struct HoldingCheck: Sendable {
        enum Rows: Sendable {
            /// Every session of the principal, any model: refused with ``CofferRegistryError/sessionRefused(_:)``.
            case sessions(@Sendable ([SessionRow]) -> String?)
            /// The principal's uploads: refused with ``CofferRegistryError/tooManyUploads(_:)``.
            case uploads(@Sendable ([UploadRecord]) -> String?)
        }

        var principal: String
        /// What is read, and the refusal it gives (nil to go ahead).
        var rows: Rows
    }

    init(ledgerEnd: Int64? = nil, records: [LedgerRow] = [], changes: [MetadataChange] = [], audit: [AuditDraft] = []) {
        self.ledgerEnd = ledgerEnd
        self.records = records
        self.changes = changes
        self.audit = audit
    }
}

/// A change to the rows, as a store applies it in its own SQL.
enum MetadataChange: Sendable {
    case setMeta(key: String, value: String)
    /// A new registry key; the others are retired at `at` (`retireOthers`).
    case registryKey(RegistryKeyRecord, retireOthers: Bool)
    case addPrincipal(PrincipalRecord)
    /// Removes a principal with its grants, revokes its tokens and sessions (destroying their key copies).
    case removePrincipal(name: String, at: String)
    /// Adds a grant unless an equal one exists (a NULL alias counts as equal).
    case addGrant(GrantRecord)
    case removeGrant(principal: String, role: String, scope: String, alias: String?)
    case trustSigner(TrustedSignerRecord)
    case untrustSigner(keyID: String)
    case setPolicy(PolicyRecord)
    case removePolicy(model: String, alias: String)
    case setBudget(BudgetRecord)
    case addToken(APITokenRecord)
    case revokeToken(id: String, at: String)
    /// Points `model@alias` at `model:version`.
    case setAlias(model: String, alias: String, version: String, at: String)
    case removeAlias(model: String, alias: String)
    /// A new version with everything it carries; its model row is made if needed.
    case addVersion(NewVersion)
    case setTag(model: String, version: String, key: String, value: String?)
    /// Adds or replaces wrapped keys.
    case putWrappedKeys([WrappedKeyRecord])
    case removeWrappedKeys(version: Int64?, recipient: String?)
    /// Crypto-shreds versions: deletes their wrapped keys and aliases, revokes their sessions, records the erasure.
    case erase(versionIDs: [Int64], at: String, by: String)
    /// Replaces a version's blobs by re-encrypted ones: new files, new wrapped keys, the `rekey` attestation; revokes sessions.
    case rekey(versionID: Int64, files: [RekeyedFileRecord], keys: [WrappedKeyRecord], attestation: Data, at: String)
    case rememberIdentities([RecipientIdentityRecord])
    case addSession(SessionRecord)
    case revokeSession(id: String, at: String)
    /// Destroys key copies: of one session, of sessions expired at `expiredAt`, or of these sessions.
    case dropSessionKeys(ids: [String])
    case dropExpiredSessionKeys(now: String)
    case addAuditHead(AuditHeadRecord)
    case putUpload(UploadRecord)
    case removeUpload(id: String)
    case addPendingBlobs([String], at: String)
    case removePendingBlobs([String])
}

/// An audit entry before the store chains it (seq and hashes are the store's, in the same transaction).
struct AuditDraft: Sendable, Equatable {
    var at: String
    var principal: String
    var action: String
    var target: String
    var outcome: AuditEntry.Outcome
    var reason: String
}

/// How a session is looked up: by its keyed token hash, or by its public id.
enum SessionSelector: Sendable {
    case tokenHash(Data)
    case id(String)
}

/// What `list`/`show` ask for: one version, or the versions of a model (or all), filtered, newest first.
struct VersionQuery: Sendable {
    var id: Int64?
    var model: String?
    var filter: WhereExpression?
    var limit: Int?
    /// Keyset paging: only versions listed after this one in the newest-first order (older, or as old with a smaller
    /// row id), found through the index on (model, created) rather than skipped with an OFFSET.
    var before: (createdAt: String, id: Int64)?

    init(
        id: Int64? = nil,
        model: String? = nil,
        filter: WhereExpression? = nil,
        limit: Int? = nil,
        before: (createdAt: String, id: Int64)? = nil
    ) {
        self.id = id
        self.model = model
        self.filter = filter
        self.limit = limit
        self.before = before
    }
}
