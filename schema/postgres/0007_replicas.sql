-- Coffer registry schema for PostgreSQL, migration 7: the meaning of schema/0007_replicas.sql (state that lived in
-- one server's memory or directory, now rows shared by replicas). Conventions: 0001_initial.sql.

-- Resumable uploads of a remote push's blobs: any replica continues one another started.
CREATE TABLE uploads (
    id         TEXT PRIMARY KEY NOT NULL,   -- Coffer's upload id, as clients name it
    principal  TEXT NOT NULL,               -- who started it; only they may continue it
    location   TEXT NOT NULL,               -- the blob store's upload record: a tmp/ file name, or the OCI upload Location
    received   BIGINT NOT NULL DEFAULT 0,   -- bytes received so far
    created_at TEXT NOT NULL,
    expires_at TEXT NOT NULL
);

-- Blobs sent to the blob store for a version not committed yet: what gc may reclaim where the store cannot list
-- its blobs (an OCI registry). A row goes when the version naming the blob commits.
CREATE TABLE pending_blobs (
    digest     TEXT PRIMARY KEY NOT NULL,
    started_at TEXT NOT NULL
);

-- Each inference session's token bucket (predictions per second, with a burst), shared by replicas.
CREATE TABLE session_rates (
    session_id TEXT PRIMARY KEY NOT NULL,
    tokens     DOUBLE PRECISION NOT NULL,   -- tokens left at updated_at
    updated_at DOUBLE PRECISION NOT NULL    -- seconds since 1970
);
