-- 0006: paid service jobs, the second kind of desired row (ARCHITECTURE.md section 8).
--
-- A job row says "caller c wants service s run on this input, paid with cost credits"; the loop
-- converges it to exactly one terminal status and exactly one settlement of its credits.
--
-- * callers, caller_keys, course_enrollments: who may invoke (keys stored as SHA-256 only).
-- * paid_services: the registry's terms (cost, runtime, timeout, limits, course gate), written by
--   the programs from their typed definitions (desired_state/services/definitions.py), so that
--   paid_admit() prices a job the same way whichever way it enters (HTTP, CLI, plain SQL).
-- * service_jobs: one row per admission, with the claim columns of desired_instances.
-- * credit_accounts, credit_transfers: an escrow ledger in integer credits. A charge moves the
--   cost caller -> escrow; a capture escrow -> revenue (completed); a refund escrow -> caller
--   (failed, cancelled, timed_out). Only caller accounts keep a cached balance (CHECK >= 0); the
--   system accounts' balances are derived from their transfers by the audit, so no job ever
--   updates a shared hot row.
-- * idempotency_keys: one row per (caller, service, key) with the request fingerprint and the
--   stored response.
--
-- paid_admit(), paid_terminate() and paid_settle() are the one implementation of admission,
-- termination and settlement; the Python side calls them (desired_state/services/).

CREATE TABLE callers (
    caller_id   UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    email       TEXT NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT callers_email_format CHECK (email ~ '^[^@\s]{1,64}@[^@\s]{1,255}$' AND email = lower(email))
);
CREATE UNIQUE INDEX callers_email_idx ON callers (email);

-- An API key is "sk-" + 43 base64url characters (32 random bytes); only its SHA-256 is stored.
CREATE TABLE caller_keys (
    key_id      UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    caller_id   UUID NOT NULL REFERENCES callers (caller_id),
    key_hash    BYTEA NOT NULL,
    key_prefix  TEXT NOT NULL,                  -- "sk-" + first characters, to tell keys apart
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    revoked_at  TIMESTAMPTZ,
    CONSTRAINT caller_keys_hash_length CHECK (octet_length(key_hash) = 32)
);
CREATE UNIQUE INDEX caller_keys_hash_idx ON caller_keys (key_hash);
CREATE INDEX caller_keys_caller_idx ON caller_keys (caller_id);

CREATE TABLE course_enrollments (
    caller_id   UUID NOT NULL REFERENCES callers (caller_id),
    course_id   TEXT NOT NULL CHECK (course_id ~ '^[a-z0-9][a-z0-9._-]{0,99}$'),
    enrolled_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (caller_id, course_id)
);

CREATE TABLE paid_services (
    service_id      TEXT PRIMARY KEY CHECK (service_id ~ '^[a-z][a-z0-9]*(-[a-z0-9]+)*\.[a-z][a-z0-9]*(-[a-z0-9]+)*$'),
    runtime         TEXT NOT NULL CHECK (runtime IN ('job', 'proxy')),
    cost_credits    BIGINT NOT NULL CHECK (cost_credits >= 0),
    timeout_seconds DOUBLE PRECISION NOT NULL CHECK (timeout_seconds > 0),
    max_attempts    INTEGER NOT NULL CHECK (max_attempts >= 1),
    per_minute      INTEGER CHECK (per_minute > 0),
    per_hour        INTEGER CHECK (per_hour > 0),
    per_day         INTEGER CHECK (per_day > 0),
    course_id       TEXT,
    enabled         BOOLEAN NOT NULL DEFAULT TRUE,
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE credit_accounts (
    account_id  TEXT PRIMARY KEY,               -- 'caller:<uuid>', 'escrow', 'revenue', 'grants'
    kind        TEXT NOT NULL CHECK (kind IN ('caller', 'escrow', 'revenue', 'grants')),
    caller_id   UUID UNIQUE REFERENCES callers (caller_id),
    balance     BIGINT,                         -- cached for caller accounts only
    CONSTRAINT credit_accounts_caller_shape CHECK (
        (kind = 'caller') = (caller_id IS NOT NULL) AND (kind = 'caller') = (balance IS NOT NULL)),
    CONSTRAINT credit_accounts_balance_not_negative CHECK (balance >= 0)
);
INSERT INTO credit_accounts (account_id, kind) VALUES ('escrow', 'escrow'), ('revenue', 'revenue'), ('grants', 'grants');

CREATE TABLE service_jobs (
    job_id           UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    service_id       TEXT NOT NULL,
    runtime          TEXT NOT NULL CHECK (runtime IN ('job', 'proxy')),
    caller_id        UUID NOT NULL REFERENCES callers (caller_id),
    input            JSONB NOT NULL CHECK (jsonb_typeof(input) = 'object'),
    cost_credits     BIGINT NOT NULL CHECK (cost_credits >= 0),     -- priced at admission
    status           TEXT NOT NULL DEFAULT 'pending'
        CHECK (status IN ('pending', 'running', 'completed', 'failed', 'cancelled', 'timed_out')),
    progress_pct     DOUBLE PRECISION CHECK (progress_pct BETWEEN 0 AND 1),
    progress_note    TEXT,
    result           JSONB,
    error_code       TEXT,
    error_message    TEXT,
    idempotency_key  TEXT,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    started_at       TIMESTAMPTZ,
    finished_at      TIMESTAMPTZ,
    -- the claim columns, as on desired_instances
    timeout_seconds  DOUBLE PRECISION NOT NULL CHECK (timeout_seconds > 0),
    deadline         TIMESTAMPTZ,                -- set by the first claim: started + timeout
    attempts         INTEGER NOT NULL DEFAULT 0,
    max_attempts     INTEGER NOT NULL DEFAULT 1 CHECK (max_attempts >= 1),
    next_attempt_at  TIMESTAMPTZ NOT NULL DEFAULT now(),   -- run-after (backoff after a lost claim)
    lease_owner      TEXT,
    lease_expires_at TIMESTAMPTZ,
    fencing_token    BIGINT NOT NULL DEFAULT 0,            -- bumped by every claim
    -- settlement bookkeeping (the transfers are the truth; the audit checks these agree)
    settlement       TEXT CHECK (settlement IN ('capture', 'refund', 'none')),
    settled_at       TIMESTAMPTZ,
    CONSTRAINT service_jobs_terminal_shape CHECK (
        (status IN ('pending', 'running')) = (finished_at IS NULL))
);

-- A terminal status is final, and a job's caller and price never change (a backend writing over
-- plain SQL cannot re-open a settled job). The WHEN clause keeps the common update trigger-free.
CREATE FUNCTION service_jobs_immutable_terms() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'service_jobs: job % is % (terminal statuses, callers and costs never change)',
        OLD.job_id, OLD.status;
END $$;

CREATE TRIGGER service_jobs_terminal_is_final
    BEFORE UPDATE ON service_jobs
    FOR EACH ROW
    WHEN ((OLD.status IN ('completed', 'failed', 'cancelled', 'timed_out') AND NEW.status <> OLD.status)
          OR NEW.caller_id <> OLD.caller_id OR NEW.cost_credits <> OLD.cost_credits)
    EXECUTE FUNCTION service_jobs_immutable_terms();

-- Live rows only, so finished jobs never weigh on the loop's scans.
CREATE INDEX service_jobs_due_idx ON service_jobs (next_attempt_at) WHERE status = 'pending';
CREATE INDEX service_jobs_lease_idx ON service_jobs (lease_expires_at) WHERE status = 'running';
CREATE INDEX service_jobs_deadline_idx ON service_jobs (deadline) WHERE status IN ('pending', 'running');
CREATE INDEX service_jobs_unsettled_idx ON service_jobs (finished_at)
    WHERE settled_at IS NULL AND status IN ('completed', 'failed', 'cancelled', 'timed_out');
-- The rate limit's sliding log and a caller's history.
CREATE INDEX service_jobs_caller_idx ON service_jobs (caller_id, service_id, created_at);
CREATE INDEX service_jobs_caller_recent_idx ON service_jobs (caller_id, created_at DESC);

-- Transfers are immutable; ids are deterministic (md5 of kind and job), so a retried settlement
-- meets the primary key or the per-job unique index and changes nothing.
CREATE TABLE credit_transfers (
    transfer_id   UUID PRIMARY KEY,
    kind          TEXT NOT NULL CHECK (kind IN ('grant', 'charge', 'capture', 'refund')),
    from_account  TEXT NOT NULL REFERENCES credit_accounts (account_id),
    to_account    TEXT NOT NULL REFERENCES credit_accounts (account_id),
    amount        BIGINT NOT NULL CHECK (amount > 0),
    job_id        UUID REFERENCES service_jobs (job_id),
    reason        TEXT,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT credit_transfers_two_accounts CHECK (from_account <> to_account),
    CONSTRAINT credit_transfers_job_shape CHECK ((kind = 'grant') = (job_id IS NULL))
);
CREATE UNIQUE INDEX credit_transfers_one_charge_idx ON credit_transfers (job_id) WHERE kind = 'charge';
CREATE UNIQUE INDEX credit_transfers_one_settlement_idx ON credit_transfers (job_id) WHERE kind IN ('capture', 'refund');
CREATE INDEX credit_transfers_from_idx ON credit_transfers (from_account, created_at DESC);
CREATE INDEX credit_transfers_to_idx ON credit_transfers (to_account, created_at DESC);

CREATE FUNCTION credit_transfers_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'credit_transfers is immutable: correct a transfer with a new one';
END $$;

CREATE TRIGGER credit_transfers_no_update
    BEFORE UPDATE OR DELETE ON credit_transfers
    FOR EACH ROW EXECUTE FUNCTION credit_transfers_immutable();

CREATE TABLE idempotency_keys (
    caller_id       UUID NOT NULL REFERENCES callers (caller_id),
    service_id      TEXT NOT NULL,
    idempotency_key TEXT NOT NULL CHECK (length(idempotency_key) BETWEEN 1 AND 255),
    fingerprint     TEXT NOT NULL,             -- sha256 of the validated input's jsonb text
    job_id          UUID NOT NULL UNIQUE REFERENCES service_jobs (job_id),
    state           TEXT NOT NULL CHECK (state IN ('in_flight', 'done')),
    response_status INTEGER,
    response_body   JSONB,                     -- proxies: the answer; jobs: NULL (the body is the job's id)
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (caller_id, service_id, idempotency_key)
);

-- desired instances provisioned by agents.provision belong to the caller who paid for them.
ALTER TABLE desired_instances ADD COLUMN owner_caller_id UUID REFERENCES callers (caller_id);
CREATE INDEX desired_instances_owner_idx ON desired_instances (owner_caller_id) WHERE owner_caller_id IS NOT NULL;

-- -- settlement ---------------------------------------------------------------------------------------
-- The settlement transfer of one terminal job: capture (escrow -> revenue) or refund (escrow ->
-- caller, and the caller's cached balance). Idempotent: a second call meets the primary key or the
-- one-settlement-per-job index and changes nothing.
CREATE FUNCTION paid_settlement_transfer(p_job_id UUID, p_caller_id UUID, p_cost BIGINT, p_kind TEXT,
                                         p_now TIMESTAMPTZ) RETURNS VOID
LANGUAGE plpgsql AS $$
DECLARE
    v_inserted BIGINT;
BEGIN
    IF p_kind = 'capture' THEN
        INSERT INTO credit_transfers (transfer_id, kind, from_account, to_account, amount, job_id, created_at)
        VALUES (md5('capture:' || p_job_id::text)::uuid, 'capture', 'escrow', 'revenue', p_cost, p_job_id, p_now)
        ON CONFLICT DO NOTHING;
    ELSIF p_kind = 'refund' THEN
        INSERT INTO credit_transfers (transfer_id, kind, from_account, to_account, amount, job_id, created_at)
        VALUES (md5('refund:' || p_job_id::text)::uuid, 'refund', 'escrow', 'caller:' || p_caller_id::text,
                p_cost, p_job_id, p_now)
        ON CONFLICT DO NOTHING
        RETURNING amount INTO v_inserted;
        IF v_inserted IS NOT NULL THEN
            UPDATE credit_accounts SET balance = balance + v_inserted WHERE caller_id = p_caller_id;
        END IF;
    END IF;
END $$;

-- Settle one terminal job that has no settlement yet (a terminal status written over plain SQL):
-- the loop's catch-up. Returns the settlement kind ('capture', 'refund', 'none'), or NULL when
-- the job is not terminal.
CREATE FUNCTION paid_settle(p_job_id UUID, p_now TIMESTAMPTZ DEFAULT now()) RETURNS TEXT
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    j service_jobs%ROWTYPE;
    v_kind TEXT;
BEGIN
    SELECT * INTO j FROM service_jobs WHERE job_id = p_job_id FOR UPDATE;
    IF NOT FOUND OR j.status IN ('pending', 'running') THEN
        RETURN NULL;
    END IF;
    v_kind := CASE WHEN j.cost_credits = 0 THEN 'none' WHEN j.status = 'completed' THEN 'capture' ELSE 'refund' END;
    PERFORM paid_settlement_transfer(p_job_id, j.caller_id, j.cost_credits, v_kind, p_now);
    IF j.settled_at IS NULL THEN
        UPDATE service_jobs SET settlement = v_kind, settled_at = p_now WHERE job_id = p_job_id;
    END IF;
    RETURN v_kind;
END $$;

-- -- termination ------------------------------------------------------------------------------------
-- The one termination transaction: a guarded status change that records its settlement, the
-- settlement transfer, and (for a keyed proxy call) the stored response. The guard is the status
-- AND, for a worker, its fencing token: a stale worker (cancelled, timed out, re-claimed) matches
-- nothing and changes nothing. p_token NULL means "not a worker" (cancel, timeout sweep,
-- operator). The sweeps add their own condition to the guard (the lease still lapsed, the
-- deadline passed), so a worker that renewed its lease in the meantime is not failed.
CREATE FUNCTION paid_terminate(
    p_job_id UUID,
    p_status TEXT,
    p_expected TEXT[],
    p_token BIGINT,
    p_now TIMESTAMPTZ,
    p_result JSONB DEFAULT NULL,
    p_error_code TEXT DEFAULT NULL,
    p_error_message TEXT DEFAULT NULL,
    p_response_status INTEGER DEFAULT NULL,
    p_response_body JSONB DEFAULT NULL,
    p_caller_id UUID DEFAULT NULL,
    p_lease_lapsed_by TIMESTAMPTZ DEFAULT NULL,
    p_deadline_passed_by TIMESTAMPTZ DEFAULT NULL
) RETURNS TABLE (changed BOOLEAN, status TEXT, settlement TEXT)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_status TEXT;
    v_settlement TEXT;
    v_caller UUID;
    v_cost BIGINT;
    v_runtime TEXT;
BEGIN
    IF p_status NOT IN ('completed', 'failed', 'cancelled', 'timed_out') THEN
        RAISE EXCEPTION 'paid_terminate: % is not a terminal status', p_status;
    END IF;
    UPDATE service_jobs AS j
       SET status = p_status, finished_at = p_now, result = p_result,
           error_code = p_error_code, error_message = p_error_message,
           progress_pct = CASE WHEN p_status = 'completed' THEN 1 ELSE j.progress_pct END,
           lease_owner = NULL, lease_expires_at = NULL,
           settlement = CASE WHEN j.cost_credits = 0 THEN 'none'
                             WHEN p_status = 'completed' THEN 'capture' ELSE 'refund' END,
           settled_at = p_now
     WHERE j.job_id = p_job_id
       AND j.status = ANY (p_expected)
       AND (p_token IS NULL OR j.fencing_token = p_token)
       AND (p_caller_id IS NULL OR j.caller_id = p_caller_id)
       AND (p_lease_lapsed_by IS NULL OR j.lease_expires_at < p_lease_lapsed_by)
       AND (p_deadline_passed_by IS NULL OR j.deadline <= p_deadline_passed_by)
    RETURNING j.status, j.settlement, j.caller_id, j.cost_credits, j.runtime
         INTO v_status, v_settlement, v_caller, v_cost, v_runtime;
    IF v_status IS NULL THEN
        SELECT j.status, j.settlement INTO v_status, v_settlement
          FROM service_jobs j WHERE j.job_id = p_job_id AND (p_caller_id IS NULL OR j.caller_id = p_caller_id);
        RETURN QUERY SELECT FALSE, v_status, v_settlement;
        RETURN;
    END IF;
    PERFORM paid_settlement_transfer(p_job_id, v_caller, v_cost, v_settlement, p_now);
    IF v_runtime = 'proxy' THEN
        UPDATE idempotency_keys
           SET state = 'done', response_status = p_response_status, response_body = p_response_body
         WHERE job_id = p_job_id AND state = 'in_flight';
    END IF;
    PERFORM pg_notify('paid_jobs_done', p_job_id::text);
    RETURN QUERY SELECT TRUE, v_status, v_settlement;
END $$;

-- -- admission --------------------------------------------------------------------------------------
-- The one admission transaction, in the order of issue 12: service known -> (input valid: the
-- caller's side, from the typed definition) -> idempotency key -> course gate -> rate limit ->
-- balance -> charge -> job row -> NOTIFY. A refusal writes nothing (402 and 429 are never stored
-- under a key, so the key stays usable). Everything per (caller, service) runs under one
-- transaction-scoped advisory lock, so the key lookup and the sliding-log count are exact under
-- concurrency; a replay takes the lock but neither counts against the limit nor pays.
--
-- A proxy call is admitted straight to 'running', leased to p_lease_owner for its timeout: the
-- request that admitted it calls the upstream and terminates it; if that process dies, the loop
-- finds the lapsed lease and fails and refunds the call (never re-sent).
--
-- outcome: admitted | replayed | service_not_found | caller_not_found | idempotency_in_flight |
--          idempotency_mismatch | course_not_purchased | rate_limit_exceeded | insufficient_credits
CREATE FUNCTION paid_admit(
    p_caller_id UUID,
    p_service_id TEXT,
    p_input JSONB,
    p_idempotency_key TEXT DEFAULT NULL,
    p_now TIMESTAMPTZ DEFAULT now(),
    p_lease_owner TEXT DEFAULT NULL
) RETURNS TABLE (
    outcome TEXT,
    job_id UUID,
    job_status TEXT,
    cost_credits BIGINT,
    response_status INTEGER,
    response_body JSONB,
    retry_after_seconds INTEGER,
    hint TEXT
)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    s paid_services%ROWTYPE;
    k idempotency_keys%ROWTYPE;
    v_fingerprint TEXT;
    v_wait DOUBLE PRECISION := 0;
    v_window_wait DOUBLE PRECISION;
    v_balance BIGINT;
    v_job_id UUID;
    v_status TEXT;
    v_limit INTEGER;
    v_period INTERVAL;
BEGIN
    SELECT * INTO s FROM paid_services WHERE paid_services.service_id = p_service_id AND enabled;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'service_not_found', NULL::uuid, NULL::text, NULL::bigint, NULL::int, NULL::jsonb,
                            NULL::int, p_service_id;
        RETURN;
    END IF;
    IF p_input IS NULL OR jsonb_typeof(p_input) <> 'object' THEN
        RAISE EXCEPTION 'paid_admit: input must be a JSON object' USING ERRCODE = '22023';
    END IF;
    PERFORM 1 FROM callers WHERE callers.caller_id = p_caller_id;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'caller_not_found', NULL::uuid, NULL::text, NULL::bigint, NULL::int, NULL::jsonb,
                            NULL::int, p_caller_id::text;
        RETURN;
    END IF;

    -- Needed only by the key lookup and the rate limit; the balance check is one conditional UPDATE.
    IF p_idempotency_key IS NOT NULL OR s.per_minute IS NOT NULL OR s.per_hour IS NOT NULL OR s.per_day IS NOT NULL THEN
        PERFORM pg_advisory_xact_lock(hashtextextended(p_caller_id::text || '/' || p_service_id, 6012));
    END IF;

    v_fingerprint := encode(sha256(convert_to(p_input::text, 'UTF8')), 'hex');
    IF p_idempotency_key IS NOT NULL THEN
        SELECT * INTO k FROM idempotency_keys i
         WHERE i.caller_id = p_caller_id AND i.service_id = p_service_id AND i.idempotency_key = p_idempotency_key;
        IF FOUND THEN
            SELECT j.status INTO v_status FROM service_jobs j WHERE j.job_id = k.job_id;
            IF k.fingerprint <> v_fingerprint THEN
                RETURN QUERY SELECT 'idempotency_mismatch', k.job_id, v_status, NULL::bigint, NULL::int,
                                    NULL::jsonb, NULL::int, NULL::text;
            ELSIF k.state = 'in_flight' THEN
                RETURN QUERY SELECT 'idempotency_in_flight', k.job_id, v_status, NULL::bigint, NULL::int,
                                    NULL::jsonb, 1, NULL::text;
            ELSE
                RETURN QUERY SELECT 'replayed', k.job_id, v_status,
                                    (SELECT j.cost_credits FROM service_jobs j WHERE j.job_id = k.job_id),
                                    k.response_status, k.response_body, NULL::int, NULL::text;
            END IF;
            RETURN;
        END IF;
    END IF;

    IF s.course_id IS NOT NULL THEN
        PERFORM 1 FROM course_enrollments e WHERE e.caller_id = p_caller_id AND e.course_id = s.course_id;
        IF NOT FOUND THEN
            RETURN QUERY SELECT 'course_not_purchased', NULL::uuid, NULL::text, s.cost_credits, NULL::int,
                                NULL::jsonb, NULL::int, s.course_id;
            RETURN;
        END IF;
    END IF;

    -- Sliding log: in each window of P with limit L holding n >= L admissions, the caller may
    -- come back when the (n-L+1)-th oldest of them leaves the window, at its created_at + P.
    FOR v_limit, v_period IN
        SELECT l.lim, l.period FROM (VALUES (s.per_minute, interval '1 minute'), (s.per_hour, interval '1 hour'),
                                            (s.per_day, interval '1 day')) AS l (lim, period)
         WHERE l.lim IS NOT NULL
    LOOP
        SELECT EXTRACT(EPOCH FROM (w.created_at + v_period - p_now)) INTO v_window_wait
          FROM (SELECT j.created_at FROM service_jobs j
                 WHERE j.caller_id = p_caller_id AND j.service_id = p_service_id
                   AND j.created_at > p_now - v_period AND j.created_at <= p_now
                 ORDER BY j.created_at DESC
                 OFFSET v_limit - 1 LIMIT 1) AS w;
        IF v_window_wait IS NOT NULL AND v_window_wait > v_wait THEN
            v_wait := v_window_wait;
        END IF;
    END LOOP;
    IF v_wait > 0 THEN
        RETURN QUERY SELECT 'rate_limit_exceeded', NULL::uuid, NULL::text, s.cost_credits, NULL::int, NULL::jsonb,
                            GREATEST(1, ceil(v_wait))::int, NULL::text;
        RETURN;
    END IF;

    v_job_id := gen_random_uuid();
    IF s.cost_credits > 0 THEN
        UPDATE credit_accounts a SET balance = a.balance - s.cost_credits
         WHERE a.caller_id = p_caller_id AND a.balance >= s.cost_credits;
        IF NOT FOUND THEN
            SELECT a.balance INTO v_balance FROM credit_accounts a WHERE a.caller_id = p_caller_id;
            RETURN QUERY SELECT 'insufficient_credits', NULL::uuid, NULL::text, s.cost_credits, NULL::int,
                                NULL::jsonb, NULL::int, (s.cost_credits - COALESCE(v_balance, 0))::text;
            RETURN;
        END IF;
    END IF;

    v_status := CASE WHEN s.runtime = 'proxy' THEN 'running' ELSE 'pending' END;
    INSERT INTO service_jobs (job_id, service_id, runtime, caller_id, input, cost_credits, status, idempotency_key,
                              created_at, next_attempt_at, timeout_seconds, max_attempts,
                              started_at, deadline, attempts, lease_owner, lease_expires_at, fencing_token)
    VALUES (v_job_id, p_service_id, s.runtime, p_caller_id, p_input, s.cost_credits, v_status, p_idempotency_key,
            p_now, p_now, s.timeout_seconds, s.max_attempts,
            CASE WHEN s.runtime = 'proxy' THEN p_now END,
            CASE WHEN s.runtime = 'proxy' THEN p_now + s.timeout_seconds * interval '1 second' END,
            CASE WHEN s.runtime = 'proxy' THEN 1 ELSE 0 END,
            CASE WHEN s.runtime = 'proxy' THEN p_lease_owner END,
            CASE WHEN s.runtime = 'proxy' THEN p_now + s.timeout_seconds * interval '1 second' END,
            CASE WHEN s.runtime = 'proxy' THEN 1 ELSE 0 END);
    IF s.cost_credits > 0 THEN
        INSERT INTO credit_transfers (transfer_id, kind, from_account, to_account, amount, job_id, created_at)
        VALUES (md5('charge:' || v_job_id::text)::uuid, 'charge', 'caller:' || p_caller_id::text, 'escrow',
                s.cost_credits, v_job_id, p_now);
    END IF;
    IF p_idempotency_key IS NOT NULL THEN
        INSERT INTO idempotency_keys (caller_id, service_id, idempotency_key, fingerprint, job_id, state,
                                      response_status, created_at)
        VALUES (p_caller_id, p_service_id, p_idempotency_key, v_fingerprint, v_job_id,
                CASE WHEN s.runtime = 'proxy' THEN 'in_flight' ELSE 'done' END,
                CASE WHEN s.runtime = 'proxy' THEN NULL ELSE 202 END, p_now);
    END IF;
    IF s.runtime = 'job' THEN
        PERFORM pg_notify('paid_jobs', v_job_id::text);
    END IF;
    RETURN QUERY SELECT 'admitted', v_job_id, v_status, s.cost_credits, NULL::int, NULL::jsonb, NULL::int, NULL::text;
END $$;
