-- Coffer registry schema, migration 2: principals and grants, inference sessions, the audit log.

-- Identities the registry knows by name. Once a registry has a principal, every operation is checked.
CREATE TABLE principals (
    name            TEXT PRIMARY KEY NOT NULL,
    key_id          TEXT NOT NULL UNIQUE,
    public_identity BLOB NOT NULL,          -- the NAME.pub bytes
    added_at        TEXT NOT NULL,
    added_by        TEXT                    -- NULL for the owner named at init
);

-- A role on a scope: '*' (every model), 'ns/' (a namespace prefix) or an exact model name; optionally one alias.
CREATE TABLE grants (
    id         INTEGER PRIMARY KEY,
    principal  TEXT NOT NULL REFERENCES principals(name) ON DELETE CASCADE,
    role       TEXT NOT NULL CHECK (role IN ('admin', 'publisher', 'reader', 'decrypt', 'inference')),
    scope      TEXT NOT NULL,
    alias      TEXT,
    granted_at TEXT NOT NULL,
    granted_by TEXT,
    UNIQUE (principal, role, scope, alias)
);
CREATE INDEX grants_by_principal ON grants(principal);

-- Inference sessions. The token is never stored: token_hash is BLAKE2b keyed with the registry's session
-- hash key; wrapped_key is the version's data key wrapped under a key derived from the token, deleted
-- (set NULL) when the session is revoked or found expired or exhausted.
CREATE TABLE sessions (
    id          TEXT PRIMARY KEY NOT NULL,   -- public id, shown by session list
    token_hash  BLOB NOT NULL UNIQUE,
    principal   TEXT NOT NULL,
    version_id  INTEGER NOT NULL REFERENCES versions(id),
    reference   TEXT NOT NULL,               -- what was asked for: NAME, NAME:VERSION or NAME@ALIAS
    alias       TEXT,
    created_at  TEXT NOT NULL,
    expires_at  TEXT NOT NULL,
    max_uses    INTEGER,
    uses        INTEGER NOT NULL DEFAULT 0,
    revoked_at  TEXT,
    wrapped_key BLOB
);

-- Append-only, hash-chained: entry_hash = SHA-256 of the canonical entry including prev_hash (docs/FORMAT.md).
CREATE TABLE audit_log (
    seq        INTEGER PRIMARY KEY,
    at         TEXT NOT NULL,
    principal  TEXT NOT NULL,
    action     TEXT NOT NULL,
    target     TEXT NOT NULL,
    outcome    TEXT NOT NULL CHECK (outcome IN ('ok', 'refused', 'failed')),
    reason     TEXT NOT NULL,
    prev_hash  BLOB NOT NULL,
    entry_hash BLOB NOT NULL
);
CREATE INDEX audit_by_time ON audit_log(at);
CREATE TRIGGER audit_is_append_only BEFORE UPDATE ON audit_log
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER audit_is_never_deleted BEFORE DELETE ON audit_log
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;

-- Chain heads signed by the registry identity (Ed25519 over the head statement of docs/FORMAT.md).
CREATE TABLE audit_heads (
    seq        INTEGER PRIMARY KEY,
    entry_hash BLOB NOT NULL,
    signed_at  TEXT NOT NULL,
    signature  BLOB NOT NULL
);
