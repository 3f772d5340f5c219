-- Coffer registry schema for PostgreSQL, migration 10: the meaning of schema/0010_privacy_sources.sql (where a
-- version's standardisation statistics came from, how its batches were drawn). NULL for existing versions.
ALTER TABLE versions
    ADD COLUMN standardisation TEXT,
    ADD COLUMN batch_sampling TEXT;
