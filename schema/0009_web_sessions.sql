-- Coffer registry schema, migration 9: the web pages' sign-in sessions (docs/WEB.md, "Sign-in, session cookie and
-- CSRF"), rows rather than one server's memory, so that replicas behind a load balancer share them and a restart signs
-- nobody out. Nothing here opens a session or reveals a token: the cookie's keyed hash (under K_h, the file
-- session-hash.key, as for tokens), the bearer token's keyed hash (as in api_tokens), and a MAC under a key only the
-- cookie holds, over what the row says, so that a row edited to another token or a later expiry opens nothing.
CREATE TABLE web_sessions (
    id_hash       BLOB PRIMARY KEY NOT NULL,  -- BLAKE2b-256(key = K_h, lookup of the cookie's secret)
    token_hash    BLOB NOT NULL,              -- the keyed hash of the bearer token it was signed in with
    principal     TEXT NOT NULL,
    created_at    TEXT NOT NULL,
    expires_at    TEXT NOT NULL,
    binding       BLOB NOT NULL,              -- BLAKE2b-256(key = the cookie's secret, the fields above)
    notice        TEXT,                       -- the refusal of the form last posted, shown by GET /notice
    notice_status INTEGER,
    notice_at     TEXT
);
CREATE INDEX web_sessions_principal ON web_sessions (principal, created_at);
