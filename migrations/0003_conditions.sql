-- 0003: Kubernetes-style conditions, per instance and per resource.
--
-- A JSON object keyed by condition type ("Ready", "Synced"), each value
-- {"status": "True"|"False"|"Unknown", "reason": CamelCase, "message": text,
--  "lastTransitionTime": RFC 3339, "observedGeneration": n}.
-- Written by the reconciler in the same transaction as the state it describes.

ALTER TABLE desired_instances ADD COLUMN conditions JSONB NOT NULL DEFAULT '{}'::jsonb;
ALTER TABLE observed_resources ADD COLUMN conditions JSONB NOT NULL DEFAULT '{}'::jsonb;
