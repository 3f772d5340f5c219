-- Coffer registry schema for PostgreSQL, migration 6: the meaning of schema/0006_ledger.sql (the ledger of signed
-- records, docs/FORMAT.md "Signed registry records"). Conventions: 0001_initial.sql.
-- SQLite's UPDATE destroying session key copies made before this migration has nothing to act on here: a
-- PostgreSQL registry never held such copies.

-- One hash chain of records, each a DSSE envelope signed by whoever made the change. The tables principals, grants,
-- trusted_signers, aliases, policies, budgets, budget_charges, erasures and registry_keys are a copy of what the
-- ledger replays to; decisions are taken on the replay. `object` and `hash` are for look-ups, not trusted.
-- seq is assigned by the writer (the end it read plus one): a writer that loses the race for n + 1 fails on
-- ledger_pkey, rolls back and starts again from the new end.
CREATE TABLE ledger (
    seq      BIGINT PRIMARY KEY,
    kind     TEXT NOT NULL,
    object   TEXT NOT NULL,
    envelope BYTEA NOT NULL,
    hash     TEXT NOT NULL
);
CREATE INDEX ledger_by_object ON ledger(object, seq);
CREATE INDEX ledger_by_kind ON ledger(kind, seq);
CREATE TRIGGER ledger_is_append_only BEFORE UPDATE ON ledger
FOR EACH ROW EXECUTE FUNCTION coffer_refuse_change('the ledger is append-only');
CREATE TRIGGER ledger_is_never_deleted BEFORE DELETE ON ledger
FOR EACH ROW EXECUTE FUNCTION coffer_refuse_change('the ledger is append-only');
CREATE TRIGGER ledger_is_never_truncated BEFORE TRUNCATE ON ledger
FOR EACH STATEMENT EXECUTE FUNCTION coffer_refuse_change('the ledger is append-only');
