"""Every SQL statement of the paid half, as named, parameterised constants.

Admission, termination and settlement are plpgsql functions of migration 0006 (``paid_admit``,
``paid_terminate``, ``paid_settle``), so a trusted backend writing over plain SQL and this
package run the very same code; the statements here call them, and read what they wrote.
"""

from __future__ import annotations

# -- the registry's terms ----------------------------------------------------------------------------
UPSERT_SERVICE = """
INSERT INTO paid_services (service_id, runtime, cost_credits, timeout_seconds, max_attempts,
                           per_minute, per_hour, per_day, course_id, enabled, updated_at)
VALUES (%(service_id)s, %(runtime)s, %(cost_credits)s, %(timeout_seconds)s, %(max_attempts)s,
        %(per_minute)s, %(per_hour)s, %(per_day)s, %(course_id)s, TRUE, now())
ON CONFLICT (service_id) DO UPDATE
   SET runtime = EXCLUDED.runtime, cost_credits = EXCLUDED.cost_credits,
       timeout_seconds = EXCLUDED.timeout_seconds, max_attempts = EXCLUDED.max_attempts,
       per_minute = EXCLUDED.per_minute, per_hour = EXCLUDED.per_hour, per_day = EXCLUDED.per_day,
       course_id = EXCLUDED.course_id, enabled = TRUE, updated_at = now()
 WHERE (paid_services.runtime, paid_services.cost_credits, paid_services.timeout_seconds,
        paid_services.max_attempts, paid_services.per_minute, paid_services.per_hour, paid_services.per_day,
        paid_services.course_id, paid_services.enabled)
       IS DISTINCT FROM
       (EXCLUDED.runtime, EXCLUDED.cost_credits, EXCLUDED.timeout_seconds, EXCLUDED.max_attempts,
        EXCLUDED.per_minute, EXCLUDED.per_hour, EXCLUDED.per_day, EXCLUDED.course_id, TRUE)
"""

# A service the registry defines but has not published yet (a fresh database, a test's own service):
# admission publishes it and tries again. Only a missing row: an admission never re-enables a
# service an operator disabled (enabled = FALSE), whoever sends it.
PUBLISH_MISSING_SERVICE = """
INSERT INTO paid_services (service_id, runtime, cost_credits, timeout_seconds, max_attempts,
                           per_minute, per_hour, per_day, course_id, enabled, updated_at)
VALUES (%(service_id)s, %(runtime)s, %(cost_credits)s, %(timeout_seconds)s, %(max_attempts)s,
        %(per_minute)s, %(per_hour)s, %(per_day)s, %(course_id)s, TRUE, now())
ON CONFLICT (service_id) DO NOTHING
"""

# -- callers and keys --------------------------------------------------------------------------------
INSERT_CALLER = """
INSERT INTO callers (email, created_at) VALUES (%(email)s, %(now)s)
ON CONFLICT (email) DO NOTHING
RETURNING caller_id
"""

INSERT_CALLER_ACCOUNT = """
INSERT INTO credit_accounts (account_id, kind, caller_id, balance)
VALUES ('caller:' || %(caller_id)s::text, 'caller', %(caller_id)s, 0)
"""

SELECT_CALLER_BY_EMAIL = "SELECT caller_id, email, created_at FROM callers WHERE email = %(email)s"

INSERT_KEY = """
INSERT INTO caller_keys (caller_id, key_hash, key_prefix, created_at)
VALUES (%(caller_id)s, %(key_hash)s, %(key_prefix)s, %(now)s)
RETURNING key_id
"""

REVOKE_KEYS = """
UPDATE caller_keys SET revoked_at = %(now)s
 WHERE caller_id = %(caller_id)s AND revoked_at IS NULL
   AND (%(key_prefix)s::text IS NULL OR key_prefix = %(key_prefix)s)
RETURNING key_prefix
"""

SELECT_KEY = """
SELECT c.caller_id, c.email
  FROM caller_keys k JOIN callers c USING (caller_id)
 WHERE k.key_hash = %(key_hash)s AND k.revoked_at IS NULL
"""

ENROLL = """
INSERT INTO course_enrollments (caller_id, course_id, enrolled_at) VALUES (%(caller_id)s, %(course_id)s, %(now)s)
ON CONFLICT DO NOTHING
RETURNING course_id
"""

# -- the ledger --------------------------------------------------------------------------------------
# A grant: grants -> caller, the caller's cached balance in the same statement. The id is
# deterministic in the grant's key, so a retried grant meets the primary key and changes nothing.
GRANT = """
WITH t AS (
    INSERT INTO credit_transfers (transfer_id, kind, from_account, to_account, amount, reason, created_at)
    VALUES (md5('grant:' || %(grant_key)s)::uuid, 'grant', 'grants', 'caller:' || %(caller_id)s::text,
            %(amount)s, %(reason)s, %(now)s)
    ON CONFLICT (transfer_id) DO NOTHING
    RETURNING transfer_id, amount
)
UPDATE credit_accounts a SET balance = a.balance + t.amount
  FROM t
 WHERE a.caller_id = %(caller_id)s
RETURNING t.transfer_id, a.balance
"""

SELECT_BALANCE = "SELECT balance FROM credit_accounts WHERE caller_id = %(caller_id)s"

RECENT_TRANSFERS = """
SELECT transfer_id, kind, from_account, to_account, amount, job_id, reason, created_at
  FROM (
    (SELECT * FROM credit_transfers WHERE from_account = %(account)s ORDER BY created_at DESC LIMIT %(limit)s)
    UNION ALL
    (SELECT * FROM credit_transfers WHERE to_account = %(account)s ORDER BY created_at DESC LIMIT %(limit)s)
  ) t
 ORDER BY created_at DESC, transfer_id
 LIMIT %(limit)s
"""

# -- admission, termination, settlement (plpgsql, migration 0006) ------------------------------------
# The caller is given by id, or by a presented key's hash (looked up here, in the admission's own
# statement: an unknown or revoked key leaves it NULL, which paid_admit answers caller_not_found).
ADMIT = """
SELECT outcome, job_id, job_status, cost_credits, response_status, response_body, retry_after_seconds, hint
  FROM paid_admit(COALESCE(%(caller_id)s::uuid,
                           (SELECT k.caller_id FROM caller_keys AS k
                             WHERE k.key_hash = %(key_hash)s::bytea AND k.revoked_at IS NULL)),
                  %(service_id)s, %(input)s, %(idempotency_key)s, %(now)s, %(lease_owner)s)
"""

TERMINATE = """
SELECT changed, status, settlement
  FROM paid_terminate(%(job_id)s, %(status)s, %(expected)s, %(token)s, %(now)s, %(result)s, %(error_code)s,
                      %(error_message)s, %(response_status)s, %(response_body)s, %(caller_id)s,
                      %(lease_lapsed_by)s, %(deadline_passed_by)s)
"""

SETTLE = "SELECT paid_settle(%(job_id)s, %(now)s)"

SELECT_UNSETTLED = """
SELECT job_id FROM service_jobs
 WHERE settled_at IS NULL AND status IN ('completed', 'failed', 'cancelled', 'timed_out')
 ORDER BY finished_at
 LIMIT %(limit)s
"""

# -- claims and worker writes ------------------------------------------------------------------------
# Claim due pending jobs: SKIP LOCKED so replicas take disjoint rows; the CTE is a fence (the
# planner cannot re-run the LIMIT subquery). Each claim bumps the fencing token every later
# worker write is checked against; the first claim fixes the deadline (started + timeout).
CLAIM_JOBS = """
WITH due AS (
    SELECT job_id FROM service_jobs
     WHERE status = 'pending' AND runtime = 'job' AND next_attempt_at <= %(now)s
       AND (%(services)s::text[] IS NULL OR service_id = ANY(%(services)s))
     ORDER BY next_attempt_at, created_at, job_id
     LIMIT %(limit)s
       FOR UPDATE SKIP LOCKED
)
UPDATE service_jobs AS j
   SET status = 'running', attempts = j.attempts + 1, lease_owner = %(owner)s,
       lease_expires_at = %(now)s + %(lease_seconds)s * interval '1 second',
       fencing_token = j.fencing_token + 1,
       started_at = COALESCE(j.started_at, %(now)s),
       deadline = COALESCE(j.deadline, %(now)s + j.timeout_seconds * interval '1 second')
  FROM due
 WHERE j.job_id = due.job_id
RETURNING j.job_id, j.service_id, j.caller_id, j.input, j.cost_credits, j.fencing_token, j.attempts,
          j.max_attempts, j.deadline, j.lease_expires_at
"""

# Progress from the worker holding the claim; renews the lease. No row: the worker lost the job.
REPORT_PROGRESS = """
UPDATE service_jobs
   SET progress_pct = COALESCE(%(pct)s, progress_pct), progress_note = COALESCE(%(note)s, progress_note),
       lease_expires_at = %(now)s + %(lease_seconds)s * interval '1 second'
 WHERE job_id = %(job_id)s AND status = 'running' AND fencing_token = %(token)s
RETURNING deadline
"""

# Live jobs past their deadline (the loop times them out, one termination each).
SELECT_OVERDUE = """
SELECT job_id FROM service_jobs
 WHERE status IN ('pending', 'running') AND deadline <= %(now)s
 ORDER BY deadline
 LIMIT %(limit)s
"""

# Running jobs whose lease lapsed: their worker died (or stalled past its lease).
SELECT_LAPSED = """
SELECT job_id, runtime, attempts, max_attempts, fencing_token FROM service_jobs
 WHERE status = 'running' AND lease_expires_at < %(now)s
 ORDER BY lease_expires_at
 LIMIT %(limit)s
"""

# Give a lapsed job back to the queue for a re-run (idempotent handlers with attempts left);
# the token bump makes the dead worker's late writes match nothing.
REQUEUE_LAPSED = """
UPDATE service_jobs
   SET status = 'pending', lease_owner = NULL, lease_expires_at = NULL, fencing_token = fencing_token + 1,
       next_attempt_at = %(run_after)s
 WHERE job_id = %(job_id)s AND status = 'running' AND fencing_token = %(token)s
   AND lease_expires_at < %(now)s AND attempts < max_attempts
RETURNING job_id
"""

# -- reads -------------------------------------------------------------------------------------------
SELECT_JOB = """
SELECT job_id, service_id, runtime, caller_id, input, status, progress_pct, progress_note, result, error_code,
       error_message, cost_credits, settlement, created_at, started_at, finished_at, attempts, max_attempts,
       deadline, lease_owner, lease_expires_at, fencing_token, idempotency_key, webhook_url
  FROM service_jobs
 WHERE job_id = %(job_id)s AND (%(caller_id)s::uuid IS NULL OR caller_id = %(caller_id)s)
"""

LIST_JOBS = """
SELECT job_id, service_id, runtime, caller_id, input, status, progress_pct, progress_note, result, error_code,
       error_message, cost_credits, settlement, created_at, started_at, finished_at, attempts, max_attempts,
       deadline, lease_owner, lease_expires_at, fencing_token, idempotency_key, webhook_url
  FROM service_jobs
 WHERE (%(caller_id)s::uuid IS NULL OR caller_id = %(caller_id)s)
   AND (%(service_id)s::text IS NULL OR service_id = %(service_id)s)
   AND (%(status)s::text IS NULL OR status = %(status)s)
 ORDER BY created_at DESC, job_id
 LIMIT %(limit)s
"""

USAGE = """
SELECT count(*) AS invocations,
       count(*) FILTER (WHERE status = 'completed') AS completed,
       count(*) FILTER (WHERE status = 'failed') AS failed,
       count(*) FILTER (WHERE status = 'cancelled') AS cancelled,
       count(*) FILTER (WHERE status = 'timed_out') AS timed_out,
       count(*) FILTER (WHERE status IN ('pending', 'running')) AS in_progress,
       COALESCE(sum(cost_credits) FILTER (WHERE settlement = 'capture'), 0) AS credits_spent,
       COALESCE(sum(cost_credits) FILTER (WHERE settlement = 'refund'), 0) AS credits_refunded,
       COALESCE(sum(cost_credits) FILTER (WHERE status IN ('pending', 'running')), 0) AS credits_held,
       count(*) FILTER (WHERE created_at > %(now)s - interval '1 minute') AS last_minute,
       count(*) FILTER (WHERE created_at > %(now)s - interval '1 hour') AS last_hour,
       count(*) FILTER (WHERE created_at > %(now)s - interval '1 day') AS last_day,
       max(created_at) AS last_invoked_at
  FROM service_jobs
 WHERE caller_id = %(caller_id)s AND service_id = %(service_id)s
"""

# -- the audit (invariants I1-I7 of reference/jobs-ledger-anchors.md section 3.3) --------------------
# Each account's derived balance (the signed sum of its legs) beside its cached one.
AUDIT_ACCOUNTS = """
WITH legs AS (
    SELECT to_account AS account_id, amount FROM credit_transfers
    UNION ALL
    SELECT from_account, -amount FROM credit_transfers
), sums AS (
    SELECT account_id, sum(amount) AS derived FROM legs GROUP BY account_id
)
SELECT a.account_id, a.kind, a.balance, COALESCE(s.derived, 0)::bigint AS derived
  FROM credit_accounts a LEFT JOIN sums s USING (account_id)
 UNION ALL
SELECT s.account_id, NULL, NULL, s.derived::bigint
  FROM sums s WHERE NOT EXISTS (SELECT 1 FROM credit_accounts a WHERE a.account_id = s.account_id)
"""

AUDIT_HELD = """
SELECT COALESCE(sum(cost_credits), 0)::bigint FROM service_jobs WHERE status IN ('pending', 'running')
"""

# Jobs whose transfers or settlement bookkeeping break I4 or I7; the Python side names each rule.
AUDIT_JOBS = """
WITH t AS (
    SELECT x.job_id,
           count(*) FILTER (WHERE x.kind = 'charge') AS charges,
           COALESCE(sum(x.amount) FILTER (WHERE x.kind = 'charge'), 0) AS charged,
           count(*) FILTER (WHERE x.kind = 'capture') AS captures,
           COALESCE(sum(x.amount) FILTER (WHERE x.kind = 'capture'), 0) AS captured,
           count(*) FILTER (WHERE x.kind = 'refund') AS refunds,
           COALESCE(sum(x.amount) FILTER (WHERE x.kind = 'refund'), 0) AS refunded,
           count(*) FILTER (WHERE NOT (
                   (x.kind = 'charge' AND x.from_account = 'caller:' || j.caller_id AND x.to_account = 'escrow')
                OR (x.kind = 'capture' AND x.from_account = 'escrow' AND x.to_account = 'revenue')
                OR (x.kind = 'refund' AND x.from_account = 'escrow' AND x.to_account = 'caller:' || j.caller_id)
           )) AS misrouted
      FROM credit_transfers x JOIN service_jobs j USING (job_id)
     GROUP BY x.job_id
), checked AS (
    SELECT j.job_id, j.service_id, j.status, j.cost_credits, j.settlement, j.settled_at IS NOT NULL AS settled,
           COALESCE(t.charges, 0) AS charges, COALESCE(t.charged, 0) AS charged,
           COALESCE(t.captures, 0) AS captures, COALESCE(t.captured, 0) AS captured,
           COALESCE(t.refunds, 0) AS refunds, COALESCE(t.refunded, 0) AS refunded,
           COALESCE(t.misrouted, 0) AS misrouted
      FROM service_jobs j LEFT JOIN t USING (job_id)
)
SELECT * FROM checked c
 WHERE c.misrouted > 0
    OR (c.status IN ('pending', 'running')) = c.settled
    OR (c.settled AND c.settlement IS DISTINCT FROM CASE WHEN c.cost_credits = 0 THEN 'none'
                                                         WHEN c.status = 'completed' THEN 'capture'
                                                         ELSE 'refund' END)
    OR CASE WHEN c.cost_credits = 0 THEN c.charges + c.captures + c.refunds > 0
            ELSE c.charges <> 1 OR c.charged <> c.cost_credits
              OR CASE WHEN c.status IN ('pending', 'running') THEN c.captures + c.refunds > 0
                      WHEN c.status = 'completed' THEN c.captures <> 1 OR c.captured <> c.cost_credits OR c.refunds > 0
                      ELSE c.refunds <> 1 OR c.refunded <> c.cost_credits OR c.captures > 0
                 END
       END
 ORDER BY c.job_id
 LIMIT %(limit)s
"""

# Grants that do not run from the grants account to a caller's account.
AUDIT_GRANTS = """
SELECT transfer_id, from_account, to_account FROM credit_transfers x
 WHERE kind = 'grant'
   AND NOT (from_account = 'grants'
            AND EXISTS (SELECT 1 FROM credit_accounts a WHERE a.account_id = x.to_account AND a.kind = 'caller'))
 LIMIT %(limit)s
"""

# Keyed jobs and key rows must pair one to one; a finished job's key must not stay in flight.
AUDIT_KEYS = """
SELECT j.job_id AS job, k.job_id AS key_job, k.state, j.status
  FROM (SELECT * FROM service_jobs WHERE idempotency_key IS NOT NULL) j
  FULL JOIN idempotency_keys k ON k.job_id = j.job_id
 WHERE j.job_id IS NULL OR k.job_id IS NULL
    OR (j.caller_id, j.service_id, j.idempotency_key) IS DISTINCT FROM (k.caller_id, k.service_id, k.idempotency_key)
    OR (k.state = 'in_flight' AND j.status NOT IN ('pending', 'running'))
 LIMIT %(limit)s
"""
