-- Coffer registry schema, migration 6: the ledger of signed records (docs/FORMAT.md, "Signed registry records").

-- One hash chain of records, each a DSSE envelope signed by whoever made the change. The tables principals, grants,
-- trusted_signers, aliases, policies, budgets, budget_charges, erasures and registry_keys are a copy of what the
-- ledger replays to; decisions are taken on the replay. `object` and `hash` are for look-ups, not trusted.
CREATE TABLE ledger (
    seq      INTEGER PRIMARY KEY,
    kind     TEXT NOT NULL,
    object   TEXT NOT NULL,
    envelope BLOB NOT NULL,
    hash     TEXT NOT NULL
);
CREATE INDEX ledger_by_object ON ledger(object, seq);
CREATE INDEX ledger_by_kind ON ledger(kind, seq);
CREATE TRIGGER ledger_is_append_only BEFORE UPDATE ON ledger
BEGIN SELECT RAISE(ABORT, 'the ledger is append-only'); END;
CREATE TRIGGER ledger_is_never_deleted BEFORE DELETE ON ledger
BEGIN SELECT RAISE(ABORT, 'the ledger is append-only'); END;

-- A session's key copy is now wrapped under a key bound to the session's id, expiry and use limit: copies made
-- before this migration would not open, so they are destroyed and their sessions revoked (open them again).
UPDATE sessions SET wrapped_key = NULL, revoked_at = coalesce(revoked_at, strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
WHERE wrapped_key IS NOT NULL;
