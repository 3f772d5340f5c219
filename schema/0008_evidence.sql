-- Coffer registry schema, migration 8: a version's signed evidence (docs/FORMAT.md, "Evidence", "In the registry"):
-- the object as canonical JSON, and the three flat fields list --where filters on and policies judge. NULL for a
-- version without them, as for every version pushed before this migration.
ALTER TABLE versions ADD COLUMN evidence TEXT;
ALTER TABLE versions ADD COLUMN audit_epsilon REAL;      -- evidence.audit.epsilon_lower_bound
ALTER TABLE versions ADD COLUMN membership_auc REAL;     -- evidence.membership.max_auc
ALTER TABLE versions ADD COLUMN membership_tpr REAL;     -- evidence.membership.max_tpr_at_1pct_fpr
