"""Every statement of the webhook sender, as named, parameterised constants.

The first four are the claim statements :mod:`reconciler.claims` runs for the
``webhook_deliveries`` table (its :class:`~reconciler.claims.ClaimStatements` contract): a
delivery is due when it is ``pending``, its ``next_attempt_at`` has come and no live lease holds
it. Recording an attempt is one statement fenced by the claim's token, so a sender whose claim
was lost (another replica took the row after its lease lapsed) changes nothing.
"""

from __future__ import annotations

CLAIM_DUE = """
UPDATE webhook_deliveries AS d
   SET lease_owner = %(owner)s,
       lease_expires_at = now() + %(lease_seconds)s * interval '1 second',
       fencing_token = d.fencing_token + 1
  FROM (SELECT webhook_id FROM webhook_deliveries
         WHERE state = 'pending' AND next_attempt_at <= now()
           AND (lease_expires_at IS NULL OR lease_expires_at <= now())
         ORDER BY next_attempt_at
         LIMIT %(limit)s
           FOR UPDATE SKIP LOCKED) AS due
 WHERE d.webhook_id = due.webhook_id
RETURNING d.webhook_id, d.fencing_token, d.job_id, d.service_id, d.url, d.body, d.attempts
"""

RENEW_LEASES = """
UPDATE webhook_deliveries AS d
   SET lease_expires_at = now() + %(lease_seconds)s * interval '1 second'
  FROM unnest(%(keys)s::text[], %(tokens)s::bigint[]) AS held(key, token)
 WHERE d.webhook_id = held.key AND d.fencing_token = held.token AND d.lease_owner = %(owner)s
   AND d.state = 'pending'
RETURNING d.webhook_id, d.fencing_token
"""

RELEASE_CLAIMS = """
UPDATE webhook_deliveries AS d
   SET lease_owner = NULL, lease_expires_at = NULL
  FROM unnest(%(keys)s::text[], %(tokens)s::bigint[]) AS held(key, token)
 WHERE d.webhook_id = held.key AND d.fencing_token = held.token AND d.lease_owner = %(owner)s
RETURNING d.webhook_id, d.fencing_token
"""

CHECK_FENCE = """
UPDATE webhook_deliveries
   SET lease_expires_at = now() + %(lease_seconds)s * interval '1 second'
 WHERE webhook_id = %(key)s AND fencing_token = %(token)s AND state = 'pending'
RETURNING attempts
"""

# One attempt's outcome, fenced by the claim's token; hands the row back (no lease).
RECORD_ATTEMPT = """
UPDATE webhook_deliveries
   SET attempts = attempts + 1,
       last_status = %(status)s,
       last_error = %(error)s,
       last_attempt_at = now(),
       state = %(state)s,
       delivered_at = CASE WHEN %(state)s = 'delivered' THEN now() ELSE delivered_at END,
       next_attempt_at = now() + %(delay)s * interval '1 second',
       lease_owner = NULL,
       lease_expires_at = NULL
 WHERE webhook_id = %(key)s AND fencing_token = %(token)s AND state = 'pending'
RETURNING attempts
"""

# No secret to sign with: every pending delivery not held by a live claim is recorded disabled.
DISABLE_PENDING = """
UPDATE webhook_deliveries
   SET state = 'disabled', lease_owner = NULL, lease_expires_at = NULL
 WHERE state = 'pending' AND (lease_expires_at IS NULL OR lease_expires_at <= now())
RETURNING webhook_id
"""

GAUGES = """
SELECT count(*),
       COALESCE(EXTRACT(EPOCH FROM now() - min(created_at)), 0),
       COALESCE(EXTRACT(EPOCH FROM now() - min(next_attempt_at)
                        FILTER (WHERE next_attempt_at <= now()
                                  AND (lease_expires_at IS NULL OR lease_expires_at <= now()))), 0)
  FROM webhook_deliveries
 WHERE state = 'pending'
"""

LIST_DELIVERIES = """
SELECT webhook_id, job_id, service_id, url, state, attempts, last_status, last_error,
       last_attempt_at, next_attempt_at, created_at
  FROM webhook_deliveries
 WHERE (%(states)s::text[] IS NULL OR state = ANY (%(states)s::text[]))
 ORDER BY created_at DESC
 LIMIT %(limit)s
"""

# An operator's retry: a fresh schedule from now, for a delivery that failed, was disabled, or is
# waiting for a later attempt. A delivered one, or one being sent right now, is left alone.
RETRY_DELIVERY = """
UPDATE webhook_deliveries
   SET state = 'pending', attempts = 0, next_attempt_at = now(), lease_owner = NULL, lease_expires_at = NULL
 WHERE (webhook_id = %(webhook_id)s OR job_id = %(job_id)s)
   AND (state IN ('failed', 'disabled')
        OR (state = 'pending' AND (lease_expires_at IS NULL OR lease_expires_at <= now())))
RETURNING webhook_id
"""

SELECT_DELIVERY_STATE = """
SELECT webhook_id, state FROM webhook_deliveries WHERE webhook_id = %(webhook_id)s OR job_id = %(job_id)s
"""
