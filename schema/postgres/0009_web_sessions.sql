-- Coffer registry schema for PostgreSQL, migration 9: the meaning of schema/0009_web_sessions.sql (the web pages'
-- sign-in sessions, shared by replicas). Applied to existing registries: a new, empty table.
CREATE TABLE web_sessions (
    id_hash       BYTEA PRIMARY KEY NOT NULL, -- BLAKE2b-256(key = K_h, lookup of the cookie's secret)
    token_hash    BYTEA NOT NULL,             -- the keyed hash of the bearer token it was signed in with
    principal     TEXT NOT NULL,
    created_at    TEXT NOT NULL,
    expires_at    TEXT NOT NULL,
    binding       BYTEA NOT NULL,             -- BLAKE2b-256(key = the cookie's secret, the fields above)
    notice        TEXT,                       -- the refusal of the form last posted, shown by GET /notice
    notice_status BIGINT,
    notice_at     TEXT
);
CREATE INDEX web_sessions_principal ON web_sessions (principal, created_at);
