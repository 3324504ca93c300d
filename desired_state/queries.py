"""Every SQL statement of ``desired_state``, as named, parameterised constants.

Two families: the writes of :mod:`desired_state.store` (the same code the CLI and the HTTP API
use), and the reads the HTTP API answers from. Reads touch only what the reconciler has already
recorded (``desired_instances`` progress columns, ``observed_resources``, ``events`` and the
seed's ``instance_infra``/``instance_services``), so no API route ever costs a provider call.

Where a statement needs a shared term (the phase a caller sees, the tool catalogue), it comes
from :mod:`desired_state.vocabulary`: the phase rule is formatted in with column names only, and
the catalogue is passed as parameters, never formatted from input.
"""

from __future__ import annotations

from desired_state.vocabulary import SHOWN_PHASE_SQL

_SHOWN_PHASE = SHOWN_PHASE_SQL.format(present="present", phase="phase")
_SHOWN_D_PHASE = SHOWN_PHASE_SQL.format(present="d.present", phase="d.phase")

# -- writes (desired_state.store) -------------------------------------------------------------------
UPSERT_DESIRED = """
INSERT INTO desired_instances (instance_id, name, spec, present)
VALUES (%(instance_id)s, %(name)s, %(spec)s, TRUE)
ON CONFLICT (instance_id) DO UPDATE
   SET name = EXCLUDED.name, spec = EXCLUDED.spec, present = TRUE
 WHERE (desired_instances.name, desired_instances.spec, desired_instances.present)
       IS DISTINCT FROM (EXCLUDED.name, EXCLUDED.spec, TRUE)
RETURNING (xmax = 0) AS inserted, generation
"""

# Create-if-absent: an existing row is left alone (compared by ``create``, never overwritten).
INSERT_IF_ABSENT = """
INSERT INTO desired_instances (instance_id, name, spec, present, owner_caller_id)
VALUES (%(instance_id)s, %(name)s, %(spec)s, TRUE, %(owner)s)
ON CONFLICT (instance_id) DO NOTHING
RETURNING generation
"""

COMPARE_EXISTING = """
SELECT generation, present, (name = %(name)s AND spec = %(spec)s) AS same
  FROM desired_instances WHERE instance_id = %(instance_id)s
"""

SELECT_SPEC_FOR_CHANGE = """
SELECT name, spec, present, generation FROM desired_instances WHERE instance_id = %(instance_id)s
FOR NO KEY UPDATE
"""

# Compare-and-set: lands only if nobody changed the row since it was read.
UPDATE_IF_GENERATION = """
UPDATE desired_instances SET name = %(name)s, spec = %(spec)s
 WHERE instance_id = %(instance_id)s AND generation = %(generation)s AND present
RETURNING generation
"""

# An instance only the seed's instance_infra records (made by the system this one replaces, see
# reconciler/legacy.py) becomes a desired row marked absent, with a resource row for everything
# it may hold: known ids are deleted directly, the rest are found by derived name (an intent
# without an id is how the engine says "this may exist: look it up"). Then the usual finalizer
# tears it down. Telnyx numbers were recorded by phone number, not id (and bought without our
# reference), so they are found by that number. The tool catalogue (tool id to resource kind)
# comes in as two parallel arrays, %(tool_ids)s and %(tool_kinds)s.
ADOPT_FOR_TEARDOWN = """
WITH legacy AS (
    SELECT i.instance_id, i.provider_service_id, i.volume_id
      FROM instance_infra i
     WHERE i.instance_id = ANY(%(ids)s)
       AND NOT EXISTS (SELECT 1 FROM desired_instances d WHERE d.instance_id = i.instance_id)
), tools AS (
    SELECT s.instance_id, s.tool_id, s.resource_id, catalogue.kind
      FROM instance_services s JOIN legacy USING (instance_id)
      JOIN unnest(%(tool_ids)s::text[], %(tool_kinds)s::text[]) AS catalogue(tool_id, kind) USING (tool_id)
), adopted AS (
    INSERT INTO desired_instances (instance_id, spec, present, phase)
    SELECT l.instance_id,
           jsonb_build_object(
               'tools', coalesce((SELECT jsonb_agg(t.tool_id ORDER BY t.tool_id) FROM tools t
                                   WHERE t.instance_id = l.instance_id), '[]'::jsonb),
               'env', '{}'::jsonb),
           FALSE, %(deleting)s
      FROM legacy l
    ON CONFLICT (instance_id) DO NOTHING
    RETURNING instance_id
), resources AS (
    SELECT l.instance_id, 'railway_service' AS kind, l.provider_service_id AS external_id,
           '{}'::jsonb AS attributes
      FROM legacy l
    UNION ALL SELECT l.instance_id, 'railway_volume', l.volume_id, '{}'::jsonb FROM legacy l
    UNION ALL SELECT l.instance_id, 'railway_domain', NULL, '{}'::jsonb FROM legacy l
    UNION ALL
    SELECT t.instance_id, t.kind,
           CASE WHEN t.tool_id = %(telnyx)s THEN NULL ELSE t.resource_id END,
           CASE WHEN t.tool_id = %(telnyx)s THEN jsonb_build_object('phone_number', t.resource_id)
                ELSE '{}'::jsonb END
      FROM tools t
), recorded AS (
    INSERT INTO observed_resources (instance_id, kind, derived_name, external_id, status, attributes, intent_at)
    SELECT r.instance_id, r.kind, %(name_space)s || r.instance_id, r.external_id,
           'ready', r.attributes, CASE WHEN r.external_id IS NULL THEN now() END
      FROM resources r JOIN adopted USING (instance_id)
)
INSERT INTO events (instance_id, kind, action, outcome, detail)
SELECT instance_id, NULL, 'adopt_for_teardown', 'ok', '{"from": "instance_infra"}'::jsonb FROM adopted
RETURNING instance_id
"""

MARK_ABSENT = """
UPDATE desired_instances SET present = FALSE
 WHERE instance_id = ANY(%(ids)s)
RETURNING instance_id
"""

SELECT_DESIRED_COLUMNS = """
SELECT instance_id, name, spec, present, generation, observed_generation, phase, attempts,
       next_attempt_at, last_error, created_at, updated_at, ready_at
  FROM desired_instances
"""
SELECT_ONE = SELECT_DESIRED_COLUMNS + " WHERE instance_id = %(instance_id)s"
SELECT_ALL = SELECT_DESIRED_COLUMNS + " ORDER BY instance_id"
SELECT_SOME = SELECT_DESIRED_COLUMNS + " WHERE instance_id = ANY(%(ids)s) ORDER BY instance_id"

# -- reads (the HTTP API) ---------------------------------------------------------------------------
# What a waiting request polls: one primary-key lookup.
SELECT_PROGRESS = f"""
SELECT generation, observed_generation, present, last_error, phase AS stored_phase,
       {_SHOWN_PHASE} AS phase
  FROM desired_instances
 WHERE instance_id = %(instance_id)s
"""

# The seed's create-instance answer: service id, URL and one resource id per tool.
SELECT_CREATE_ANSWER = """
SELECT i.provider_service_id, i.url,
       COALESCE((SELECT json_object_agg(s.tool_id, json_build_object('resourceId', s.resource_id))
                   FROM instance_services s
                  WHERE s.instance_id = i.instance_id), '{}'::json) AS services
  FROM instance_infra i
 WHERE i.instance_id = %(instance_id)s
"""

# One tool's row of the seed table (env_value, the secret, is deliberately not selected).
SELECT_TOOL_SERVICE = """
SELECT resource_id, env_key, status
  FROM instance_services
 WHERE instance_id = %(instance_id)s AND tool_id = %(tool_id)s
"""

# Every id a caller may know a tool's resource by: the seed's resource_id (a phone number for
# Telnyx) and the provider's own id (the Telnyx number id).
SELECT_TOOL_RESOURCE_IDS = """
SELECT resource_id FROM instance_services
 WHERE instance_id = %(instance_id)s AND tool_id = %(tool_id)s
UNION
SELECT external_id FROM observed_resources
 WHERE instance_id = %(instance_id)s AND kind = %(kind)s AND external_id IS NOT NULL
"""

# Which resources exist before a destroy, for the seed's ``destroyed`` flags.
SELECT_RESOURCE_KINDS = """
SELECT kind FROM observed_resources
 WHERE instance_id = %(instance_id)s AND (external_id IS NOT NULL OR intent_at IS NOT NULL)
"""

# What a teardown destroyed, for the seed's ``destroyed`` flags once it has finished: the kinds
# whose delete removed a resource that existed (the reconciler records outcome 'ok' only then; a
# create in doubt whose lookup found nothing is 'not_found'), since %(since)s (the database's time
# when the destroy was asked). SELECT_RESOURCE_KINDS, read before, can only say what may exist.
SELECT_DESTROYED_KINDS = """
SELECT DISTINCT kind FROM events
 WHERE instance_id = %(instance_id)s AND action = 'delete' AND outcome = 'ok' AND kind IS NOT NULL
   AND at >= %(since)s
"""

# The seed's batch status: one ordered scan of the seed table. (The JSON is assembled in Python:
# measured on 10,000 rows, Postgres's json_build_object/json_agg took 35-45 ms, a fetch plus a
# string template 22 ms.)
STATUS_BATCH = """
SELECT instance_id, provider_service_id, deploy_status, url, runtime_image, provider_env_id
  FROM instance_infra
 WHERE %(all)s OR instance_id = ANY(%(ids)s)
 ORDER BY instance_id
"""

# The instance read model (desired_state.read_model): instances, then their resources and their
# newest events, three statements for any number of instances.
SELECT_INSTANCES = f"""
SELECT d.instance_id, d.name, d.spec, d.present, d.generation, d.observed_generation,
       {_SHOWN_D_PHASE} AS phase, d.conditions, d.attempts, d.next_attempt_at, d.last_error,
       d.created_at, d.updated_at, d.ready_at, i.url, i.deploy_status
  FROM desired_instances d
  LEFT JOIN instance_infra i ON i.instance_id = d.instance_id
 WHERE %(all)s OR d.instance_id = ANY(%(ids)s)
 ORDER BY d.instance_id
"""

SELECT_INSTANCES_RESOURCES = """
SELECT instance_id, kind, derived_name, external_id, status, attributes, conditions, attempts,
       last_error, updated_at
  FROM observed_resources
 WHERE instance_id = ANY(%(ids)s)
 ORDER BY instance_id, kind
"""

SELECT_INSTANCES_EVENTS = """
SELECT instance_id, id, at, kind, action, outcome, detail
  FROM (SELECT e.*, row_number() OVER (PARTITION BY e.instance_id ORDER BY e.id DESC) AS newest
          FROM events e
         WHERE e.instance_id = ANY(%(ids)s)) ranked
 WHERE newest <= %(limit)s
 ORDER BY instance_id, id DESC
"""

# The database's clock: a destroy's answer counts the deletes recorded since it was asked.
SELECT_NOW = "SELECT now()"

# Keyset pagination on the primary key: the cursor is the last instance id of the previous page.
# A NULL filter matches everything.
LIST_INSTANCES = f"""
SELECT d.instance_id, d.name, d.spec, d.present, d.generation, d.observed_generation,
       {_SHOWN_D_PHASE} AS phase, d.last_error, d.updated_at
  FROM desired_instances d
 WHERE d.instance_id > %(after)s
   AND (%(phase)s::text IS NULL OR {_SHOWN_D_PHASE} = %(phase)s)
   AND (%(present)s::boolean IS NULL OR d.present = %(present)s)
   AND (%(tool)s::text IS NULL OR d.spec -> 'tools' @> jsonb_build_array(%(tool)s::text))
 ORDER BY d.instance_id
 LIMIT %(limit)s
"""
