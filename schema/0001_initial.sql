-- Coffer registry schema, migration 1. Shipped migrations are never edited: add a new numbered file.
-- Times are RFC 3339 UTC text; digests are lower-case hex; key IDs are Coffer identity key IDs.

-- The registry's own facts: its identity (public part), format version.
CREATE TABLE registry_meta (
    key   TEXT PRIMARY KEY NOT NULL,
    value TEXT NOT NULL
);

-- Publishers whose signatures pull and verify accept.
CREATE TABLE trusted_signers (
    key_id          TEXT PRIMARY KEY NOT NULL,
    name            TEXT NOT NULL,
    public_identity BLOB NOT NULL,          -- the NAME.pub bytes
    added_at        TEXT NOT NULL
);

CREATE TABLE models (
    id         INTEGER PRIMARY KEY,
    name       TEXT NOT NULL UNIQUE,
    created_at TEXT NOT NULL
);

-- One row per committed version; immutable (see the triggers below).
CREATE TABLE versions (
    id                     INTEGER PRIMARY KEY,
    model_id               INTEGER NOT NULL REFERENCES models(id),
    version                TEXT NOT NULL,
    number                 INTEGER,          -- the version as an integer when it is one, for ordering and "next"
    digest                 TEXT NOT NULL,    -- SHA-256 of the signed statement: the version's identity
    publisher_key_id       TEXT NOT NULL,
    message                TEXT,
    created_at             TEXT NOT NULL,
    -- lineage
    parent_version_id      INTEGER REFERENCES versions(id),
    dataset_id             TEXT,
    dataset_digest         TEXT,
    training_config_digest TEXT,
    -- privacy metadata: a queryable copy of the signed predicate
    mechanism              TEXT,
    epsilon                REAL,
    delta                  REAL,
    accountant             TEXT,
    noise_multiplier       REAL,
    clipping_norm          REAL,
    sampling_rate          REAL,
    steps                  INTEGER,
    epochs                 REAL,
    dataset_size           INTEGER,
    privacy_unit           TEXT,
    pruning_method         TEXT,
    pruning_ratio          REAL,             -- target pruning ratio
    achieved_sparsity      REAL,
    UNIQUE (model_id, version),
    CHECK (epsilon IS NULL OR epsilon >= 0),
    CHECK (delta IS NULL OR (delta >= 0 AND delta < 1))
);
-- list orders by created_at (newest first), per model or across models; the rowid breaks ties.
CREATE INDEX versions_by_model_number ON versions(model_id, number);
CREATE INDEX versions_by_model_created ON versions(model_id, created_at);
CREATE INDEX versions_by_created ON versions(created_at);
CREATE INDEX versions_by_epsilon ON versions(epsilon);

-- The files of a version: plaintext identity (signed) and the sealed blob that holds it.
CREATE TABLE files (
    version_id       INTEGER NOT NULL REFERENCES versions(id),
    path             TEXT NOT NULL,          -- relative, '/'-separated, no '..'
    size             INTEGER NOT NULL,
    plaintext_sha256 TEXT NOT NULL,
    sealed_sha256    TEXT NOT NULL,          -- content address of the blob
    sealed_size      INTEGER NOT NULL,
    PRIMARY KEY (version_id, path)
);
CREATE INDEX files_by_blob ON files(sealed_sha256);

-- The version's data key, wrapped once per recipient (the registry itself included): stanza encoding of docs/FORMAT.md.
CREATE TABLE wrapped_keys (
    version_id       INTEGER NOT NULL REFERENCES versions(id),
    recipient_key_id TEXT NOT NULL,
    stanza           BLOB NOT NULL,
    PRIMARY KEY (version_id, recipient_key_id)
);

-- Signed attestations of a version: kind 'dsse' (Coffer's statement), 'model-signing' (OpenSSF bundle).
CREATE TABLE attestations (
    version_id INTEGER NOT NULL REFERENCES versions(id),
    kind       TEXT NOT NULL,
    document   BLOB NOT NULL,
    PRIMARY KEY (version_id, kind)
);

CREATE TABLE aliases (
    model_id   INTEGER NOT NULL REFERENCES models(id),
    alias      TEXT NOT NULL,
    version_id INTEGER NOT NULL REFERENCES versions(id),
    updated_at TEXT NOT NULL,
    PRIMARY KEY (model_id, alias)
);

CREATE TABLE tags (
    version_id INTEGER NOT NULL REFERENCES versions(id),
    key        TEXT NOT NULL,
    value      TEXT NOT NULL,
    PRIMARY KEY (version_id, key)
);

-- Committed versions and their files and attestations never change.
CREATE TRIGGER versions_are_immutable BEFORE UPDATE ON versions
BEGIN SELECT RAISE(ABORT, 'versions are immutable'); END;
CREATE TRIGGER files_are_immutable BEFORE UPDATE ON files
BEGIN SELECT RAISE(ABORT, 'files of a version are immutable'); END;
CREATE TRIGGER attestations_are_immutable BEFORE UPDATE ON attestations
BEGIN SELECT RAISE(ABORT, 'attestations are immutable'); END;
