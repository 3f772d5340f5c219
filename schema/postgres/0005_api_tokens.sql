-- Coffer registry schema for PostgreSQL, migration 5: the meaning of schema/0005_api_tokens.sql (bearer tokens for
-- the HTTP server). Conventions: 0001_initial.sql.

-- A token is never stored: token_hash is BLAKE2b keyed with the registry's session hash key (docs/FORMAT.md).
CREATE TABLE api_tokens (
    id         TEXT PRIMARY KEY NOT NULL,     -- public id, shown by token list
    token_hash BYTEA NOT NULL UNIQUE,
    principal  TEXT NOT NULL REFERENCES principals(name) ON DELETE CASCADE,
    scope      TEXT NOT NULL CHECK (scope IN ('read', 'publish', 'infer', 'admin')),
    created_at TEXT NOT NULL,
    expires_at TEXT NOT NULL,
    created_by TEXT,
    revoked_at TEXT
);
