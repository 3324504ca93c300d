-- 0002: guard the columns callers may write over plain SQL (docs/sql-contract.md).
--
-- The instance id becomes part of every provider resource name, so its format is enforced here
-- as well as in the API; a spec must at least be a JSON object (its full validation happens in
-- the reconciler, which marks a row with an invalid spec Failed and names the field).

ALTER TABLE desired_instances
    ADD CONSTRAINT desired_instances_id_format CHECK (instance_id ~ '^[A-Za-z0-9_-]{1,32}$'),
    ADD CONSTRAINT desired_instances_spec_object CHECK (jsonb_typeof(spec) = 'object');

-- Upgrade in place from the seed's schema: its later migration added this column.
ALTER TABLE instance_infra ADD COLUMN IF NOT EXISTS provider_project_id TEXT;
