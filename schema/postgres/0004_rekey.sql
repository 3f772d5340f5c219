-- Coffer registry schema for PostgreSQL, migration 4: the meaning of schema/0004_rekey.sql (re-encryption under a
-- fresh data key, and the public identities of recipients). Conventions: 0001_initial.sql.

-- The current blob of each file of a re-encrypted version (the files table keeps the publisher-signed original).
-- Backed by the registry-signed 'rekey' attestation of the version.
CREATE TABLE rekeyed_files (
    version_id    BIGINT NOT NULL REFERENCES versions(id),
    path          TEXT NOT NULL,
    sealed_sha256 TEXT NOT NULL,
    sealed_size   BIGINT NOT NULL,
    PRIMARY KEY (version_id, path)
);
CREATE INDEX rekeyed_files_by_blob ON rekeyed_files(sealed_sha256);

-- Public identities of the recipients wrapped keys were made for (NAME.pub bytes), by key ID.
CREATE TABLE recipient_identities (
    key_id          TEXT PRIMARY KEY NOT NULL,
    public_identity BYTEA NOT NULL
);
