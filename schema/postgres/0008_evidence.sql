-- Coffer registry schema for PostgreSQL, migration 8: the meaning of schema/0008_evidence.sql (a version's signed
-- evidence and its three flat fields). Applied to existing registries: columns added, NULL for existing versions.
ALTER TABLE versions
    ADD COLUMN evidence TEXT,
    ADD COLUMN audit_epsilon DOUBLE PRECISION,     -- evidence.audit.epsilon_lower_bound
    ADD COLUMN membership_auc DOUBLE PRECISION,    -- evidence.membership.max_auc
    ADD COLUMN membership_tpr DOUBLE PRECISION;    -- evidence.membership.max_tpr_at_1pct_fpr
