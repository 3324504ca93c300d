-- 0009: webhook deliveries, the transactional outbox of job terminations (ARCHITECTURE.md section 8).
--
-- A job invoked with X-Webhook-Url keeps the URL on its row (service_jobs.webhook_url). The
-- moment the job's status becomes terminal, in that same transaction (whichever path ended it:
-- the loop, a cancellation, the timeout sweep, an operator, plain SQL), the trigger below writes
-- one webhook_deliveries row holding the exact body bytes every attempt will send. A crash
-- before the commit loses the termination and the delivery together; after it, the row is there
-- and the loop delivers it (reconciler/webhooks/): claimed like every other due row (lease,
-- fencing token), signed per Standard Webhooks at each attempt, retried on a schedule over about a
-- day.
--
-- webhook_id is 'evt_<job id>_<terminal status>': deterministic, stable across retries, the
-- receiver's deduplication key, and the primary key (one delivery per job and status).

ALTER TABLE service_jobs ADD COLUMN webhook_url TEXT
    CONSTRAINT service_jobs_webhook_url_shape CHECK (webhook_url ~ '^https?://[^\s]+$' AND length(webhook_url) <= 2048);

CREATE TABLE webhook_deliveries (
    webhook_id       TEXT PRIMARY KEY CHECK (webhook_id ~ '^evt_[0-9a-f-]+_[a-z_]+$'),
    job_id           UUID NOT NULL REFERENCES service_jobs (job_id),
    service_id       TEXT NOT NULL,
    url              TEXT NOT NULL,
    body             BYTEA NOT NULL,                 -- fixed when the job ended: every attempt sends these bytes
    state            TEXT NOT NULL DEFAULT 'pending'
        CHECK (state IN ('pending', 'delivered', 'failed', 'disabled')),
    attempts         INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    last_status      INTEGER,                        -- HTTP status of the last attempt; NULL: no answer
    last_error       TEXT CHECK (length(last_error) <= 512),   -- transport error or a short response prefix
    last_attempt_at  TIMESTAMPTZ,
    delivered_at     TIMESTAMPTZ,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- the claim columns, as on desired_instances and service_jobs
    next_attempt_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    lease_owner      TEXT,
    lease_expires_at TIMESTAMPTZ,
    fencing_token    BIGINT NOT NULL DEFAULT 0
);

-- Undelivered rows only, so delivered history never weighs on the loop's scans.
CREATE INDEX webhook_deliveries_due_idx ON webhook_deliveries (next_attempt_at) WHERE state = 'pending';
CREATE INDEX webhook_deliveries_job_idx ON webhook_deliveries (job_id);
CREATE INDEX webhook_deliveries_failed_idx ON webhook_deliveries (created_at) WHERE state IN ('failed', 'disabled');

-- The outbox write. The body keeps the seed's field names; payload is the result of a completed
-- job and the error ({code, message}) of any other; deliveredAt is when the job ended.
CREATE FUNCTION webhook_outbox_enqueue() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO webhook_deliveries (webhook_id, job_id, service_id, url, body, created_at, next_attempt_at)
    SELECT 'evt_' || NEW.job_id::text || '_' || NEW.status, NEW.job_id, NEW.service_id, NEW.webhook_url,
           convert_to(jsonb_build_object(
               'jobId', NEW.job_id,
               'serviceId', NEW.service_id,
               'userEmail', c.email,
               'status', NEW.status,
               'payload', CASE WHEN NEW.status = 'completed' THEN NEW.result
                               ELSE jsonb_build_object('code', NEW.error_code, 'message', NEW.error_message) END,
               'deliveredAt', to_char(COALESCE(NEW.finished_at, now()) AT TIME ZONE 'UTC',
                                      'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')
           )::text, 'UTF8'),
           now(), now()
      FROM callers c
     WHERE c.caller_id = NEW.caller_id
    ON CONFLICT (webhook_id) DO NOTHING;
    RETURN NULL;
END $$;

CREATE TRIGGER service_jobs_webhook_outbox
    AFTER UPDATE OF status ON service_jobs
    FOR EACH ROW
    WHEN (NEW.webhook_url IS NOT NULL AND OLD.status IS DISTINCT FROM NEW.status
          AND NEW.status IN ('completed', 'failed', 'cancelled', 'timed_out'))
    EXECUTE FUNCTION webhook_outbox_enqueue();
