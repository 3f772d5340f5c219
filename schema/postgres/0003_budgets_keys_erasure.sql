-- Coffer registry schema for PostgreSQL, migration 3: the meaning of schema/0003_budgets_keys_erasure.sql
-- (accountant histories and privacy budgets, policies, erasure, key rotation). Conventions: 0001_initial.sql.
-- SQLite's `ALTER TABLE audit_heads ADD COLUMN key_id` is already in 0002_access.sql.

-- A version's accountant history and imported claim: a queryable copy of the signed predicate's
-- privacy.segments and privacy.claimed_epsilon. Immutable like the version.
CREATE TABLE version_privacy (
    version_id      BIGINT PRIMARY KEY REFERENCES versions(id),
    segments        TEXT NOT NULL,          -- JSON [{"sample_rate", "noise_multiplier", "steps"}]
    claimed_epsilon DOUBLE PRECISION
);
CREATE TRIGGER version_privacy_is_immutable BEFORE UPDATE ON version_privacy
FOR EACH ROW EXECUTE FUNCTION coffer_refuse_change('privacy histories are immutable');

-- A dataset's total privacy budget.
CREATE TABLE budgets (
    dataset_id TEXT PRIMARY KEY NOT NULL,
    epsilon    DOUBLE PRECISION NOT NULL CHECK (epsilon > 0),
    delta      DOUBLE PRECISION NOT NULL CHECK (delta > 0 AND delta < 1),
    set_at     TEXT NOT NULL,
    set_by     TEXT
);

-- The versions charged to a dataset's budget. Erasure keeps the charge: the release happened.
CREATE TABLE budget_charges (
    version_id  BIGINT PRIMARY KEY REFERENCES versions(id),
    dataset_id  TEXT NOT NULL,
    charged_at  TEXT NOT NULL,
    override_by TEXT                        -- the admin who pushed past the budget, if one did
);
CREATE INDEX budget_charges_by_dataset ON budget_charges(dataset_id);
CREATE TRIGGER budget_charges_are_permanent BEFORE DELETE ON budget_charges
FOR EACH ROW EXECUTE FUNCTION coffer_refuse_change('budget charges are permanent');
CREATE TRIGGER budget_charges_are_never_truncated BEFORE TRUNCATE ON budget_charges
FOR EACH STATEMENT EXECUTE FUNCTION coffer_refuse_change('budget charges are permanent');

-- Rules a version must meet to carry an alias ('' for rules on every alias of the model). JSON, docs/FORMAT.md.
CREATE TABLE policies (
    model  TEXT NOT NULL,
    alias  TEXT NOT NULL DEFAULT '',
    rules  TEXT NOT NULL,
    set_at TEXT NOT NULL,
    set_by TEXT,
    PRIMARY KEY (model, alias)
);

-- Crypto-shredded versions: their wrapped keys and blobs are gone; rows and attestations stay as a tombstone.
CREATE TABLE erasures (
    version_id BIGINT PRIMARY KEY REFERENCES versions(id),
    erased_at  TEXT NOT NULL,
    erased_by  TEXT NOT NULL
);

-- Every identity the registry has had; rotation retires one. Audit heads name the key that signed them.
CREATE TABLE registry_keys (
    key_id          TEXT PRIMARY KEY NOT NULL,
    public_identity BYTEA NOT NULL,
    created_at      TEXT NOT NULL,
    retired_at      TEXT
);

-- PostgreSQL only (crypto-shredding, docs/FORMAT.md "Metadata stores"): the epoch whose key, epochs/EPOCH.key in
-- the registry's home directory, seals wrapped_keys.stanza and sessions.wrapped_key. One row. A writer of a sealed
-- value reads it FOR SHARE in its transaction, so a rotation (which updates it, re-seals every value and commits
-- before the old key file is destroyed) never misses a value sealed under the old epoch. rotation_due is set in the
-- transaction that erases, so that a crash before the rotation is finished at the next open.
CREATE TABLE epoch_state (
    singleton    BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (singleton),
    epoch        BIGINT NOT NULL CHECK (epoch BETWEEN 1 AND 4294967295),
    rotation_due BOOLEAN NOT NULL DEFAULT FALSE
);
INSERT INTO epoch_state (epoch) VALUES (1);
