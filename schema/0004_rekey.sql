-- Coffer registry schema, migration 4: re-encryption under a fresh data key (coffer rekey), and the public
-- identities of recipients, so a rekey can wrap the new key for them again.

-- The current blob of each file of a re-encrypted version (the files table keeps the publisher-signed original).
-- Backed by the registry-signed 'rekey' attestation of the version.
CREATE TABLE rekeyed_files (
    version_id    INTEGER NOT NULL REFERENCES versions(id),
    path          TEXT NOT NULL,
    sealed_sha256 TEXT NOT NULL,
    sealed_size   INTEGER NOT NULL,
    PRIMARY KEY (version_id, path)
);
CREATE INDEX rekeyed_files_by_blob ON rekeyed_files(sealed_sha256);

-- Public identities of the recipients wrapped keys were made for (NAME.pub bytes), by key ID.
CREATE TABLE recipient_identities (
    key_id          TEXT PRIMARY KEY NOT NULL,
    public_identity BLOB NOT NULL
);
