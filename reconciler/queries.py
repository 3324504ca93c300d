"""Every SQL statement the reconciler runs, as named, parameterised constants.

Reading this file top to bottom is reading the reconciler's whole conversation with Postgres:
claim due rows, check the fencing token, record observed state, publish the seed tables, finish.
"""

from __future__ import annotations

# -- claiming -------------------------------------------------------------------------------------
# Due rows rank in three classes: new and changed rows (a generation not yet observed), then
# retries (a row whose last pass failed), then periodic polls. Aging keeps the order from
# starving anyone: a row ranks as if it came due one %(aging_seconds)s step later per class
# below the first, so a retry that has waited a step longer than a new row goes before it, and
# a poll two steps longer. Changed rows (new ones and their retries) also have up to
# %(changed_share)s of each claim reserved, so new work starts at the next claim however long
# the backlog of polls; the rest of the claim goes to the best-ranked of all. SKIP LOCKED lets
# replicas claim disjoint sets; each claim bumps the fencing token every later write is checked
# against.
CLAIM_DUE = """
WITH changed AS (
    SELECT instance_id, 0 AS class,
           next_attempt_at + CASE WHEN attempts > 0 THEN 1 ELSE 0 END
                             * %(aging_seconds)s * interval '1 second' AS ranks_at
      FROM desired_instances
     WHERE next_attempt_at <= now()
       AND (lease_expires_at IS NULL OR lease_expires_at < now())
       AND observed_generation IS DISTINCT FROM generation
     ORDER BY ranks_at
     LIMIT %(limit)s
       FOR UPDATE SKIP LOCKED
), others AS (
    SELECT instance_id, 1 AS class,
           next_attempt_at + CASE WHEN attempts > 0 THEN 1 ELSE 2 END
                             * %(aging_seconds)s * interval '1 second' AS ranks_at
      FROM desired_instances
     WHERE next_attempt_at <= now()
       AND (lease_expires_at IS NULL OR lease_expires_at < now())
       AND observed_generation IS NOT DISTINCT FROM generation
     ORDER BY ranks_at
     LIMIT %(limit)s
       FOR UPDATE SKIP LOCKED
), picked AS (
    SELECT instance_id FROM (
        SELECT instance_id, class, ranks_at,
               row_number() OVER (PARTITION BY class ORDER BY ranks_at) AS nth
          FROM (SELECT * FROM changed UNION ALL SELECT * FROM others) due
    ) ranked
     -- changed rows fill up to their share first; any share they leave goes to the best-ranked
     -- (rounded up, but a claim of two or more keeps one slot for the others)
     ORDER BY CASE WHEN class = 0 AND nth <= GREATEST(1, LEAST(ceil(%(limit)s * %(changed_share)s), %(limit)s - 1))
                   THEN 0 ELSE 1 END,
              ranks_at
     LIMIT %(limit)s
)
UPDATE desired_instances AS d
   SET lease_owner = %(owner)s,
       lease_expires_at = now() + %(lease_seconds)s * interval '1 second',
       fencing_token = d.fencing_token + 1
  FROM picked
 WHERE d.instance_id = picked.instance_id
RETURNING d.instance_id, d.fencing_token, d.generation, d.attempts,
          GREATEST(0, EXTRACT(EPOCH FROM now() - d.next_attempt_at)) AS waited_seconds
"""

# Force a pass now (operator command): make the rows due; a held lease is left alone.
MAKE_DUE = """
UPDATE desired_instances SET next_attempt_at = now()
 WHERE instance_id = ANY(%(ids)s) OR %(all)s
RETURNING instance_id
"""

# -- leases and fencing (the statements reconciler.claims runs for instances) ---------------------
# The worker renews every claim it holds in one statement, in the background, while it works; a
# claim another worker took since (the token moved on) is not renewed and comes back as lost.
# Both lock their rows in instance id order, so two of them never wait on each other in a cycle.
RENEW_LEASES = """
WITH ours AS (
    SELECT d.instance_id FROM desired_instances AS d
      JOIN unnest(%(keys)s::text[], %(tokens)s::bigint[]) AS held(key, token)
        ON d.instance_id = held.key AND d.fencing_token = held.token
     WHERE d.lease_owner = %(owner)s
     ORDER BY d.instance_id
       FOR NO KEY UPDATE OF d
)
UPDATE desired_instances AS d
   SET lease_expires_at = now() + %(lease_seconds)s * interval '1 second'
  FROM ours
 WHERE d.instance_id = ours.instance_id
RETURNING d.instance_id, d.fencing_token
"""

# Shutting down: claims whose pass has not started are due again for any replica at once.
RELEASE_CLAIMS = """
WITH ours AS (
    SELECT d.instance_id FROM desired_instances AS d
      JOIN unnest(%(keys)s::text[], %(tokens)s::bigint[]) AS held(key, token)
        ON d.instance_id = held.key AND d.fencing_token = held.token
     WHERE d.lease_owner = %(owner)s
     ORDER BY d.instance_id
       FOR NO KEY UPDATE OF d
)
UPDATE desired_instances AS d
   SET lease_owner = NULL, lease_expires_at = NULL
  FROM ours
 WHERE d.instance_id = ours.instance_id
RETURNING d.instance_id, d.fencing_token
"""

# Every write transaction starts here: lock the desired row, check that our claim is still the
# latest, and extend the lease.
CHECK_FENCE = """
UPDATE desired_instances
   SET lease_expires_at = now() + %(lease_seconds)s * interval '1 second'
 WHERE instance_id = %(key)s AND fencing_token = %(token)s
RETURNING generation, present
"""

SELECT_DESIRED_FOR_RECONCILE = """
SELECT instance_id, name, spec, present, generation, observed_generation, phase, attempts, ready_at
  FROM desired_instances WHERE instance_id = %(instance_id)s
"""

# -- observed resources ---------------------------------------------------------------------------
SELECT_OBSERVED = """
SELECT kind, derived_name, external_id, status, attributes, secret, applied_hash, intent_at,
       attempts, last_error, drift,
       GREATEST(0, EXTRACT(EPOCH FROM next_attempt_at - now())) AS retry_in
  FROM observed_resources WHERE instance_id = %(instance_id)s
"""

SELECT_OBSERVED_MANY = """
SELECT instance_id, kind, derived_name, external_id, status, attributes, applied_hash, intent_at,
       attempts, last_error, updated_at
  FROM observed_resources
 WHERE instance_id = ANY(%(ids)s) OR %(all)s
 ORDER BY instance_id, kind
"""

# Intent before a provider create: if we crash after this commit, the next claim looks the
# resource up by derived name before creating again.
RECORD_INTENT = """
INSERT INTO observed_resources (instance_id, kind, derived_name, status, intent_at, fencing_token)
VALUES (%(instance_id)s, %(kind)s, %(derived_name)s, 'creating', now(), %(token)s)
ON CONFLICT (instance_id, kind) DO UPDATE
   SET derived_name = EXCLUDED.derived_name, status = 'creating',
       intent_at = COALESCE(observed_resources.intent_at, now()),
       fencing_token = EXCLUDED.fencing_token, updated_at = now()
"""

RECORD_OBSERVED = """
INSERT INTO observed_resources (instance_id, kind, derived_name, external_id, status, attributes,
                                secret, applied_hash, intent_at, attempts, last_error,
                                next_attempt_at, fencing_token)
VALUES (%(instance_id)s, %(kind)s, %(derived_name)s, %(external_id)s, %(status)s, %(attributes)s,
        %(secret)s, %(applied_hash)s, now(), 0, NULL, NULL, %(token)s)
ON CONFLICT (instance_id, kind) DO UPDATE
   SET derived_name = EXCLUDED.derived_name, external_id = EXCLUDED.external_id,
       status = EXCLUDED.status, attributes = EXCLUDED.attributes,
       secret = COALESCE(EXCLUDED.secret, observed_resources.secret),
       applied_hash = EXCLUDED.applied_hash, attempts = 0, last_error = NULL, drift = NULL,
       next_attempt_at = NULL, fencing_token = EXCLUDED.fencing_token, updated_at = now()
"""

RECORD_RESOURCE_ERROR = """
UPDATE observed_resources
   SET attempts = attempts + 1, last_error = %(error)s,
       next_attempt_at = now() + %(delay)s * interval '1 second',
       fencing_token = %(token)s, updated_at = now()
 WHERE instance_id = %(instance_id)s AND kind = %(kind)s
"""

MARK_RESOURCE_DELETING = """
UPDATE observed_resources SET status = 'deleting', fencing_token = %(token)s, updated_at = now()
 WHERE instance_id = %(instance_id)s AND kind = %(kind)s
"""

FORGET_RESOURCE = "DELETE FROM observed_resources WHERE instance_id = %(instance_id)s AND kind = %(kind)s"

# -- events ---------------------------------------------------------------------------------------
INSERT_EVENT = """
INSERT INTO events (instance_id, kind, action, outcome, detail, fencing_token)
VALUES (%(instance_id)s, %(kind)s, %(action)s, %(outcome)s, %(detail)s, %(token)s)
"""

SELECT_RECENT_EVENTS = """
SELECT at, kind, action, outcome, detail FROM events
 WHERE instance_id = %(instance_id)s ORDER BY id DESC LIMIT %(limit)s
"""

# -- the seed tables the pool manager reads ---------------------------------------------------------
UPSERT_INSTANCE_INFRA = """
INSERT INTO instance_infra (instance_id, provider, provider_service_id, provider_env_id,
                            provider_project_id, url, deploy_status, runtime_image, volume_id)
VALUES (%(instance_id)s, 'railway', %(service_id)s, %(env_id)s, %(project_id)s, %(url)s,
        %(deploy_status)s, %(image)s, %(volume_id)s)
ON CONFLICT (instance_id) DO UPDATE
   SET provider_service_id = EXCLUDED.provider_service_id, provider_env_id = EXCLUDED.provider_env_id,
       provider_project_id = EXCLUDED.provider_project_id, url = EXCLUDED.url,
       deploy_status = EXCLUDED.deploy_status, runtime_image = EXCLUDED.runtime_image,
       volume_id = EXCLUDED.volume_id, updated_at = now()
 WHERE (instance_infra.provider_service_id, instance_infra.provider_env_id,
        instance_infra.provider_project_id, instance_infra.url, instance_infra.deploy_status,
        instance_infra.runtime_image, instance_infra.volume_id)
       IS DISTINCT FROM
       (EXCLUDED.provider_service_id, EXCLUDED.provider_env_id, EXCLUDED.provider_project_id,
        EXCLUDED.url, EXCLUDED.deploy_status, EXCLUDED.runtime_image, EXCLUDED.volume_id)
"""

DELETE_INSTANCE_INFRA = "DELETE FROM instance_infra WHERE instance_id = %(instance_id)s"

UPSERT_INSTANCE_SERVICE = """
INSERT INTO instance_services (instance_id, tool_id, resource_id, resource_meta, env_key, env_value)
VALUES (%(instance_id)s, %(tool_id)s, %(resource_id)s, %(meta)s, %(env_key)s, %(env_value)s)
ON CONFLICT (instance_id, tool_id) DO UPDATE
   SET resource_id = EXCLUDED.resource_id, resource_meta = EXCLUDED.resource_meta,
       env_key = EXCLUDED.env_key, env_value = EXCLUDED.env_value, status = 'active'
 WHERE (instance_services.resource_id, instance_services.resource_meta, instance_services.env_key,
        instance_services.env_value, instance_services.status)
       IS DISTINCT FROM
       (EXCLUDED.resource_id, EXCLUDED.resource_meta, EXCLUDED.env_key, EXCLUDED.env_value, 'active')
"""

DELETE_INSTANCE_SERVICES_EXCEPT = """
DELETE FROM instance_services WHERE instance_id = %(instance_id)s AND NOT (tool_id = ANY(%(keep)s))
"""

# -- finishing a claim ----------------------------------------------------------------------------
# Release the lease and schedule the next pass. If the caller changed the row while we worked
# (generation moved on), it is due again at once.
FINISH_CLAIM = """
WITH before AS (
    SELECT instance_id, ready_at, created_at FROM desired_instances
     WHERE instance_id = %(instance_id)s AND fencing_token = %(token)s
       FOR UPDATE
)
UPDATE desired_instances AS d
   SET lease_owner = NULL, lease_expires_at = NULL,
       next_attempt_at = CASE WHEN d.generation <> %(generation)s THEN now()
                              ELSE now() + %(delay)s * interval '1 second' END,
       attempts = %(attempts)s, last_error = %(error)s, phase = %(phase)s,
       observed_generation = COALESCE(%(observed_generation)s, d.observed_generation),
       ready_at = CASE WHEN %(phase)s = 'Ready' THEN COALESCE(d.ready_at, now()) ELSE NULL END,
       -- keep a condition's lastTransitionTime while its status stays the same
       conditions = (
           SELECT COALESCE(jsonb_object_agg(
                      c.key,
                      CASE WHEN d.conditions -> c.key ->> 'status' = c.value ->> 'status'
                           THEN c.value || jsonb_build_object(
                                'lastTransitionTime', d.conditions -> c.key -> 'lastTransitionTime')
                           ELSE c.value END), '{}'::jsonb)
             FROM jsonb_each(%(conditions)s::jsonb) AS c)
  FROM before
 WHERE d.instance_id = before.instance_id
RETURNING before.ready_at IS NULL AND %(phase)s = 'Ready' AS became_ready,
          EXTRACT(EPOCH FROM now() - before.created_at) AS age_seconds
"""

# The finalizer's last step: every resource is confirmed gone.
DELETE_DESIRED = """
DELETE FROM desired_instances
 WHERE instance_id = %(instance_id)s AND fencing_token = %(token)s AND NOT present
RETURNING instance_id
"""

# -- status ---------------------------------------------------------------------------------------
COUNT_BY_PHASE = "SELECT phase, present, count(*) FROM desired_instances GROUP BY phase, present"

# Why rows are not converged, for the reconciler_not_converged gauge.
NOT_CONVERGED = """
SELECT CASE WHEN NOT present THEN 'deleting'
            WHEN phase = 'Failed' THEN 'failed'
            WHEN conditions -> 'Ready' ->> 'reason' = 'Throttled' THEN 'throttled'
            WHEN attempts > 0 THEN 'retrying'
            ELSE 'provisioning' END AS reason,
       count(*)
  FROM desired_instances
 WHERE NOT present OR phase <> 'Ready' OR observed_generation IS DISTINCT FROM generation
 GROUP BY 1
"""

OPEN_CIRCUITS = "SELECT provider, COALESCE(circuit_open_until > now(), FALSE) FROM provider_limits"
ORPHAN_CANDIDATES = "SELECT kind, count(*) FROM gc_candidates GROUP BY kind"

QUEUE_STATS = """
SELECT count(*) FILTER (WHERE next_attempt_at <= now()) AS due,
       COALESCE(EXTRACT(EPOCH FROM now() - min(next_attempt_at) FILTER (WHERE next_attempt_at <= now())), 0)
           AS oldest_due_seconds
  FROM desired_instances
"""
