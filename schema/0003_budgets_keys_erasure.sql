-- Coffer registry schema, migration 3: accountant histories and privacy budgets, policies, erasure, key rotation.

-- A version's accountant history and imported claim: a queryable copy of the signed predicate's
-- privacy.segments and privacy.claimed_epsilon. Immutable like the version.
CREATE TABLE version_privacy (
    version_id      INTEGER PRIMARY KEY REFERENCES versions(id),
    segments        TEXT NOT NULL,          -- JSON [{"sample_rate", "noise_multiplier", "steps"}]
    claimed_epsilon REAL
);
CREATE TRIGGER version_privacy_is_immutable BEFORE UPDATE ON version_privacy
BEGIN SELECT RAISE(ABORT, 'privacy histories are immutable'); END;

-- A dataset's total privacy budget.
CREATE TABLE budgets (
    dataset_id TEXT PRIMARY KEY NOT NULL,
    epsilon    REAL NOT NULL CHECK (epsilon > 0),
    delta      REAL NOT NULL CHECK (delta > 0 AND delta < 1),
    set_at     TEXT NOT NULL,
    set_by     TEXT
);

-- The versions charged to a dataset's budget. Erasure keeps the charge: the release happened.
CREATE TABLE budget_charges (
    version_id  INTEGER PRIMARY KEY REFERENCES versions(id),
    dataset_id  TEXT NOT NULL,
    charged_at  TEXT NOT NULL,
    override_by TEXT                        -- the admin who pushed past the budget, if one did
);
CREATE INDEX budget_charges_by_dataset ON budget_charges(dataset_id);
CREATE TRIGGER budget_charges_are_permanent BEFORE DELETE ON budget_charges
BEGIN SELECT RAISE(ABORT, 'budget charges are permanent'); END;

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
    version_id INTEGER PRIMARY KEY REFERENCES versions(id),
    erased_at  TEXT NOT NULL,
    erased_by  TEXT NOT NULL
);

-- Every identity the registry has had; rotation retires one. Audit heads name the key that signed them.
CREATE TABLE registry_keys (
    key_id          TEXT PRIMARY KEY NOT NULL,
    public_identity BLOB NOT NULL,
    created_at      TEXT NOT NULL,
    retired_at      TEXT
);
ALTER TABLE audit_heads ADD COLUMN key_id TEXT;
