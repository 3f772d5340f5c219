-- Coffer registry schema, migration 5: bearer tokens for the HTTP server.

-- A token is never stored: token_hash is BLAKE2b keyed with the registry's session hash key (docs/FORMAT.md).
CREATE TABLE api_tokens (
    id         TEXT PRIMARY KEY NOT NULL,     -- public id, shown by token list
    token_hash BLOB NOT NULL UNIQUE,
    principal  TEXT NOT NULL REFERENCES principals(name) ON DELETE CASCADE,
    scope      TEXT NOT NULL CHECK (scope IN ('read', 'publish', 'infer', 'admin')),
    created_at TEXT NOT NULL,
    expires_at TEXT NOT NULL,
    created_by TEXT,
    revoked_at TEXT
);
