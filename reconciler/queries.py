"""Every SQL statement the reconciler runs, as named, parameterised constants.

Reading this file top to bottom is reading the reconciler's whole conversation with Postgres:
claim due rows, check the fencing token, record observed state, publish the seed tables, finish;
then the batched observer and garbage collector, provider admission, the operator's reads,
migrations and the in-place upgrade. The job loop's and the webhook sender's statements live in
their own packages' ``queries`` modules; a few one-line reads stay beside their only user (the
secrets re-sealing, the demos, the CLI's schema check).
"""

from __future__ import annotations

from psycopg import sql

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
# The rows of this worker's claims that are still ours (token unchanged), locked in instance id
# order: the common head of the renewal and the hand-back below.
_OURS_INSTANCES = """
WITH ours AS (
    SELECT d.instance_id FROM desired_instances AS d
      JOIN unnest(%(keys)s::text[], %(tokens)s::bigint[]) AS held(key, token)
        ON d.instance_id = held.key AND d.fencing_token = held.token
     WHERE d.lease_owner = %(owner)s
     ORDER BY d.instance_id
       FOR NO KEY UPDATE OF d
)"""

# The worker renews every claim it holds in one statement, in the background, while it works; a
# claim another worker took since (the token moved on) is not renewed and comes back as lost.
# Both lock their rows in instance id order, so two of them never wait on each other in a cycle.
RENEW_LEASES = _OURS_INSTANCES + """
UPDATE desired_instances AS d
   SET lease_expires_at = now() + %(lease_seconds)s * interval '1 second'
  FROM ours
 WHERE d.instance_id = ours.instance_id
RETURNING d.instance_id, d.fencing_token
"""

# Shutting down: claims whose pass has not started are due again for any replica at once.
RELEASE_CLAIMS = _OURS_INSTANCES + """
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

# A create that made nothing (the provider refused the name as someone else's, or our own rate-limit
# admission deferred it before its first request left): the row no longer claims a create in doubt
# (teardown then has nothing to find, and reports nothing).
CLEAR_INTENT = """
UPDATE observed_resources SET intent_at = NULL, status = 'pending', updated_at = now()
 WHERE instance_id = %(instance_id)s AND kind = %(kind)s AND external_id IS NULL
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

# -- session advisory locks (one observer at a time, one migrator at a time) -------------------------
ADVISORY_LOCK = "SELECT pg_advisory_lock(%s)"
ADVISORY_TRY_LOCK = "SELECT pg_try_advisory_lock(%s)"
ADVISORY_UNLOCK = "SELECT pg_advisory_unlock(%s)"

# -- batched observation and garbage collection (reconciler.observe) --------------------------------
SELECT_RECORDED_PAGE = """
SELECT o.instance_id, o.kind, o.external_id, o.attributes, o.status, o.drift,
       EXTRACT(EPOCH FROM now() - o.updated_at) AS age_seconds
  FROM observed_resources o
  JOIN desired_instances d USING (instance_id)
 WHERE o.external_id IS NOT NULL AND d.present
   AND (o.instance_id, o.kind) > (%(after_instance)s, %(after_kind)s)
 ORDER BY o.instance_id, o.kind
 LIMIT %(limit)s
"""

# Every write of the observer's first locks the instance's desired row, as a worker's fenced
# transaction does (CHECK_FENCE), so the two take their row locks in one order and cannot deadlock.
LOCK_DESIRED = "SELECT 1 FROM desired_instances WHERE instance_id = %(instance_id)s FOR NO KEY UPDATE"

FLAG_DRIFT = """
WITH flagged AS (
    UPDATE observed_resources SET drift = %(drift)s
     WHERE instance_id = %(instance_id)s AND kind = %(kind)s AND external_id = %(external_id)s
       AND drift IS NULL
    RETURNING instance_id
), due AS (
    UPDATE desired_instances SET next_attempt_at = now()
     WHERE instance_id IN (SELECT instance_id FROM flagged)
    RETURNING instance_id
)
INSERT INTO events (instance_id, kind, action, outcome, detail)
SELECT instance_id, %(kind)s, 'drift_detected', %(drift)s, %(detail)s FROM due
RETURNING id
"""

REFRESH_DEPLOY_STATUS = """
WITH refreshed AS (
    UPDATE observed_resources
       SET attributes = attributes || jsonb_build_object('deploy_status', %(status)s::text),
           status = CASE WHEN %(ready)s THEN status ELSE 'creating' END, updated_at = now()
     WHERE instance_id = %(instance_id)s AND kind = 'railway_deployment'
    RETURNING instance_id
), published AS (
    UPDATE instance_infra SET deploy_status = %(status)s, updated_at = now()
     WHERE instance_id IN (SELECT instance_id FROM refreshed)
)
UPDATE desired_instances SET next_attempt_at = now()
 WHERE instance_id IN (SELECT instance_id FROM refreshed) AND NOT %(ready)s
"""

SELECT_LIVE_NAMES = """
SELECT d.instance_id, o.kind, o.external_id
  FROM desired_instances d LEFT JOIN observed_resources o USING (instance_id)
"""

# Instances the seed's table records without a desired row: made by the system this one replaces
# (an upgraded database) or left by a desired row deleted with raw SQL. Never ours to collect.
SELECT_UNMANAGED = """
SELECT i.instance_id FROM instance_infra i
 WHERE NOT EXISTS (SELECT 1 FROM desired_instances d WHERE d.instance_id = i.instance_id)
"""

UPSERT_CANDIDATE = """
INSERT INTO gc_candidates (kind, external_id, derived_name) VALUES (%(kind)s, %(external_id)s, %(name)s)
ON CONFLICT (kind, external_id) DO UPDATE SET last_seen_at = now()
RETURNING EXTRACT(EPOCH FROM now() - first_seen_at)
"""

FORGET_CANDIDATES_NOT_SEEN = "DELETE FROM gc_candidates WHERE last_seen_at < %(cycle_started)s"

DATABASE_NOW = "SELECT now()"

RECORDED_ID = "SELECT external_id FROM observed_resources WHERE instance_id = %(instance_id)s AND kind = %(kind)s"

DELETE_CANDIDATE = "DELETE FROM gc_candidates WHERE kind = %(kind)s AND external_id = %(external_id)s"

INSTANCE_KNOWN = """
SELECT 1 FROM desired_instances WHERE instance_id = %(instance_id)s
 UNION ALL
SELECT 1 FROM instance_infra WHERE instance_id = %(instance_id)s
"""

GC_EVENT = """
INSERT INTO events (instance_id, kind, action, outcome, detail)
VALUES (%(instance_id)s, %(kind)s, 'gc_delete', %(outcome)s, %(detail)s)
"""

# -- per-provider admission: rate limit, Retry-After, circuit breaker (reconciler.admission) --------
ENSURE_LIMIT_ROW = """
INSERT INTO provider_limits (provider, tokens) VALUES (%(provider)s, %(burst)s)
ON CONFLICT (provider) DO NOTHING
"""

# Take a token if the provider is not blocked and the refilled bucket holds one. Returns nothing
# when refused; then ADMISSION_WAIT says for how long.
CONSUME_ALLOWANCE = """
UPDATE provider_limits
   SET tokens = LEAST(%(burst)s, tokens + %(rate)s * EXTRACT(EPOCH FROM clock_timestamp() - refilled_at)) - 1,
       refilled_at = clock_timestamp()
 WHERE provider = %(provider)s
   AND COALESCE(blocked_until, '-infinity') <= clock_timestamp()
   AND COALESCE(circuit_open_until, '-infinity') <= clock_timestamp()
   AND LEAST(%(burst)s, tokens + %(rate)s * EXTRACT(EPOCH FROM clock_timestamp() - refilled_at)) >= 1
RETURNING consecutive_failures
"""

ADMISSION_WAIT = """
SELECT GREATEST(
           EXTRACT(EPOCH FROM COALESCE(blocked_until, clock_timestamp()) - clock_timestamp()),
           EXTRACT(EPOCH FROM COALESCE(circuit_open_until, clock_timestamp()) - clock_timestamp()),
           (1 - LEAST(%(burst)s, tokens + %(rate)s * EXTRACT(EPOCH FROM clock_timestamp() - refilled_at)))
               / %(rate)s,
           0),
       COALESCE(circuit_open_until > clock_timestamp(), FALSE)
  FROM provider_limits WHERE provider = %(provider)s
"""

BLOCK_PROVIDER_FOR = """
UPDATE provider_limits
   SET blocked_until = GREATEST(COALESCE(blocked_until, '-infinity'),
                                clock_timestamp() + %(seconds)s * interval '1 second')
 WHERE provider = %(provider)s
"""

RECORD_PROVIDER_FAILURE = """
UPDATE provider_limits
   SET consecutive_failures = consecutive_failures + 1,
       circuit_open_until = CASE WHEN consecutive_failures + 1 >= %(threshold)s
                                 THEN clock_timestamp() + %(open_seconds)s * interval '1 second'
                                 ELSE circuit_open_until END
 WHERE provider = %(provider)s
RETURNING circuit_open_until > clock_timestamp()
"""

RECORD_PROVIDER_SUCCESS = """
UPDATE provider_limits SET consecutive_failures = 0, circuit_open_until = NULL
 WHERE provider = %(provider)s AND (consecutive_failures > 0 OR circuit_open_until IS NOT NULL)
"""

# -- upgrading a database of the system this replaces (reconciler.legacy) ---------------------------
FILL_PROJECT_ID = """
UPDATE instance_infra SET provider_project_id = %(project_id)s WHERE provider_project_id IS NULL
"""

INFRA_IS_EMPTY = "SELECT NOT EXISTS (SELECT 1 FROM instance_infra)"

TABLE_COLUMNS = """
SELECT column_name FROM information_schema.columns
 WHERE table_schema = current_schema() AND table_name = %(table)s
"""

BACKFILL_INFRA = """
INSERT INTO instance_infra (instance_id, provider, provider_service_id, provider_env_id, provider_project_id,
                            url, deploy_status, runtime_image, volume_id, created_at)
VALUES (%(id)s, 'railway', %(service_id)s, %(env_id)s, %(project_id)s,
        %(url)s, %(deploy_status)s, %(runtime_image)s, %(volume_id)s, coalesce(%(created_at)s, now()))
ON CONFLICT DO NOTHING
RETURNING instance_id
"""

POOL_PROVISIONED_IDS = "SELECT id FROM instances WHERE service_id IS NOT NULL"

COUNT_NOT_RECORDED = """
SELECT count(*) FROM unnest(%(ids)s::text[]) AS pool(id)
 WHERE NOT EXISTS (SELECT 1 FROM instance_infra i WHERE i.instance_id = pool.id)
"""

BACKFILL_TOOL = """
INSERT INTO instance_services (instance_id, tool_id, resource_id, env_key, env_value)
VALUES (%(instance_id)s, %(tool_id)s, %(resource_id)s, %(env_key)s, %(env_value)s)
ON CONFLICT (instance_id, tool_id) DO NOTHING
RETURNING id
"""

# -- what operators ask: plan and why (reconciler.operator) -----------------------------------------
SELECT_DESIRED_ALL = """
SELECT instance_id, name, spec, present, generation FROM desired_instances
 WHERE instance_id = ANY(%(ids)s) OR %(all)s ORDER BY instance_id
"""

SELECT_OBSERVED_FOR_PLAN = """
SELECT instance_id, kind, derived_name, external_id, status, attributes, secret, secret IS NOT NULL AS has_secret,
       applied_hash, intent_at, attempts, last_error, drift,
       EXTRACT(EPOCH FROM now() - updated_at) AS age_seconds
  FROM observed_resources WHERE instance_id = ANY(%(ids)s) OR %(all)s
"""

SELECT_WHY = """
SELECT instance_id, present, phase, generation, observed_generation, attempts, next_attempt_at,
       last_error, conditions, lease_owner, lease_expires_at, created_at, ready_at,
       GREATEST(0, EXTRACT(EPOCH FROM next_attempt_at - now())) AS next_in_seconds
  FROM desired_instances WHERE instance_id = %(instance_id)s
"""

# -- migrations (reconciler.db) ---------------------------------------------------------------------
CREATE_MIGRATIONS_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    INTEGER PRIMARY KEY,
    name       TEXT NOT NULL,
    checksum   TEXT NOT NULL,
    applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
)
"""

SELECT_APPLIED = "SELECT version, checksum FROM schema_migrations"

INSERT_APPLIED = "INSERT INTO schema_migrations (version, name, checksum) VALUES (%s, %s, %s)"

# Identifiers (database, table, column and index names) are composed with sql.Identifier, never
# formatted from strings: these templates take nothing else.
DROP_DATABASE = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
CREATE_DATABASE = sql.SQL("CREATE DATABASE {}")
CREATE_DATABASE_FROM_TEMPLATE = sql.SQL("CREATE DATABASE {} TEMPLATE {}")
SELECT_POOL_INSTANCES = sql.SQL("SELECT {} FROM instances WHERE service_id IS NOT NULL ORDER BY id")
DROP_COLUMN = sql.SQL("ALTER TABLE {} DROP COLUMN IF EXISTS {}")
DROP_INDEX = sql.SQL("DROP INDEX IF EXISTS {}")
