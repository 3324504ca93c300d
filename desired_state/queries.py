"""Every SQL statement the HTTP API runs for reading, as named, parameterised constants.

Writes go through :mod:`desired_state.store` (the same code the CLI uses). Reads here touch only
what the reconciler has already recorded (``desired_instances`` progress columns,
``observed_resources``, ``events`` and the seed's ``instance_infra``/``instance_services``), so
no API route ever costs a provider call.
"""

from __future__ import annotations

# What a waiting request polls: one primary-key lookup.
SELECT_PROGRESS = """
SELECT generation, observed_generation, present, last_error, phase AS stored_phase,
       CASE WHEN present THEN phase ELSE 'Deleting' END AS phase
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

# The seed's batch status: one ordered scan of the seed table. (The JSON is assembled in Python:
# measured on 10,000 rows, Postgres's json_build_object/json_agg took 35-45 ms, a fetch plus a
# string template 22 ms.)
STATUS_BATCH = """
SELECT instance_id, provider_service_id, deploy_status, url, runtime_image, provider_env_id
  FROM instance_infra
 WHERE %(all)s OR instance_id = ANY(%(ids)s)
 ORDER BY instance_id
"""

SELECT_INSTANCE = """
SELECT d.instance_id, d.name, d.spec, d.present, d.generation, d.observed_generation,
       CASE WHEN d.present THEN d.phase ELSE 'Deleting' END AS phase, d.conditions, d.attempts,
       d.next_attempt_at, d.last_error, d.created_at, d.updated_at, d.ready_at,
       i.url, i.deploy_status
  FROM desired_instances d
  LEFT JOIN instance_infra i ON i.instance_id = d.instance_id
 WHERE d.instance_id = %(instance_id)s
"""

SELECT_INSTANCE_RESOURCES = """
SELECT kind, derived_name, external_id, status, attributes, conditions, attempts, last_error,
       updated_at
  FROM observed_resources
 WHERE instance_id = %(instance_id)s
 ORDER BY kind
"""

SELECT_INSTANCE_EVENTS = """
SELECT id, at, kind, action, outcome, detail
  FROM events
 WHERE instance_id = %(instance_id)s
 ORDER BY id DESC
 LIMIT %(limit)s
"""

# Keyset pagination on the primary key: the cursor is the last instance id of the previous page.
# A NULL filter matches everything.
LIST_INSTANCES = """
SELECT d.instance_id, d.name, d.spec, d.present, d.generation, d.observed_generation,
       CASE WHEN d.present THEN d.phase ELSE 'Deleting' END AS phase, d.last_error, d.updated_at
  FROM desired_instances d
 WHERE d.instance_id > %(after)s
   AND (%(phase)s::text IS NULL OR CASE WHEN d.present THEN d.phase ELSE 'Deleting' END = %(phase)s)
   AND (%(present)s::boolean IS NULL OR d.present = %(present)s)
   AND (%(tool)s::text IS NULL OR d.spec -> 'tools' @> jsonb_build_array(%(tool)s::text))
 ORDER BY d.instance_id
 LIMIT %(limit)s
"""
