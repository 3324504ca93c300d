"""The SQL the job loop adds to the job row's own statements.

The claim (``CLAIM_JOBS``), progress, termination and sweep statements live beside the schema in
:mod:`desired_state.services.queries` (the job row's contract with whoever runs jobs). Here are the
jobs table's remaining parts of the one claim primitive (:mod:`reconciler.claims`): the batched
renewal of every lease one worker holds, the hand-back of unstarted claims, and the fence a
handler's own writes start with. Job leases follow the loop's clock (``%(now)s``), as the claim
and the lapsed-lease sweep do, so a test that moves the clock moves them all.
"""

from __future__ import annotations

# The running jobs of this worker's claims that are still ours (token unchanged): the common head of
# the renewal and the hand-back below. Rows are locked in job id order, the order the batch completer
# (reconciler/jobs/completer.py) terminates them in: two statements that lock many of the same rows
# in one order never deadlock.
_OURS_JOBS = """
WITH ours AS (
    SELECT j.job_id FROM service_jobs AS j
      JOIN unnest(%(keys)s::uuid[], %(tokens)s::bigint[]) AS held(key, token)
        ON j.job_id = held.key AND j.fencing_token = held.token
     WHERE j.lease_owner = %(owner)s AND j.status = 'running'
     ORDER BY j.job_id
       FOR UPDATE OF j
)"""

# Every lease this worker holds, renewed in one statement.
RENEW_JOB_LEASES = _OURS_JOBS + """
UPDATE service_jobs AS j
   SET lease_expires_at = %(now)s + %(lease_seconds)s * interval '1 second'
  FROM ours
 WHERE j.job_id = ours.job_id
RETURNING j.job_id, j.fencing_token
"""

# A claim handed back before its handler started: pending again, as if never claimed (the attempt
# is given back, and a first claim's deadline clock is stopped).
RELEASE_JOB_CLAIMS = _OURS_JOBS + """
UPDATE service_jobs AS j
   SET status = 'pending', lease_owner = NULL, lease_expires_at = NULL, attempts = j.attempts - 1,
       started_at = CASE WHEN j.attempts = 1 THEN NULL ELSE j.started_at END,
       deadline = CASE WHEN j.attempts = 1 THEN NULL ELSE j.deadline END
  FROM ours
 WHERE j.job_id = ours.job_id
RETURNING j.job_id, j.fencing_token
"""

# A handler's own writes (the instance agents.provision writes) run in a transaction that starts
# here: the job is still running under our claim, or nothing is written.
CHECK_JOB_FENCE = """
UPDATE service_jobs
   SET lease_expires_at = %(now)s + %(lease_seconds)s * interval '1 second'
 WHERE job_id = %(key)s AND fencing_token = %(token)s AND status = 'running'
RETURNING caller_id
"""

# A started handler stopped by a shutdown, of an idempotent service with attempts left: pending
# again at once (the attempt stays counted), under a bumped token.
REQUEUE_INTERRUPTED = """
UPDATE service_jobs
   SET status = 'pending', lease_owner = NULL, lease_expires_at = NULL, fencing_token = fencing_token + 1,
       next_attempt_at = %(now)s, progress_note = 'interrupted by a shutdown; runs again'
 WHERE job_id = %(job_id)s AND fencing_token = %(token)s AND status = 'running' AND attempts < max_attempts
RETURNING job_id
"""

# -- gauges ---------------------------------------------------------------------------------------
# Live jobs only (partial indexes keep this cheap however many finished rows there are).
LIVE_JOBS = """
SELECT service_id, status, count(*) FROM service_jobs
 WHERE status IN ('pending', 'running') GROUP BY service_id, status
"""

OLDEST_RUNNING = """
SELECT COALESCE(EXTRACT(EPOCH FROM %(now)s - min(started_at)), 0) FROM service_jobs WHERE status = 'running'
"""

TRANSFERS_BY_KIND = "SELECT kind, count(*) FROM credit_transfers GROUP BY kind"
