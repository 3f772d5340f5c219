-- Coffer registry schema, migration 10: where a version's standardisation statistics came from (dp, public or
-- nonprivate) and how its batches were drawn (secret or seeded), as its signed privacy metadata states them
-- (docs/FORMAT.md, "Checkpoints"). NULL for a version whose statement does not say, as for every version pushed
-- before this migration.
ALTER TABLE versions ADD COLUMN standardisation TEXT;
ALTER TABLE versions ADD COLUMN batch_sampling TEXT;
