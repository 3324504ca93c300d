-- 0010: a live proxy call must name the process that makes it (ARCHITECTURE.md section 8).
--
-- A proxy service's call is made by the HTTP request that admitted it: paid_admit (0006) writes
-- the row straight to 'running', leased to p_lease_owner, and that process calls the upstream and
-- terminates the row. Admitted over plain SQL, where there is no such process, p_lease_owner is
-- NULL: the caller was charged for a call nobody would ever make, refunded only when the lease
-- lapsed. This trigger refuses such a row, so that admission raises instead and the whole
-- statement rolls back: no job, no charge, no idempotency key.
--
-- A guard on the row rather than a second copy of paid_admit: the admission stays in one place
-- (0006), and a direct INSERT into service_jobs is held to the same rule. Only live rows are
-- checked: a finished proxy row has no lease owner (paid_terminate clears it), and reloading one
-- is fine. paid_admit's earlier answers (replayed, refusals) write nothing and come first, so the
-- error is raised only where the call would have been admitted. SQLSTATE 22023
-- (invalid_parameter_value), as paid_admit's other misuse (an input that is not a JSON object).

CREATE FUNCTION service_jobs_proxy_needs_lease_owner() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'paid_admit: % is a proxy service: it needs p_lease_owner, the process that calls its upstream '
                    '(admit proxy services over HTTP; over SQL, only job services)', NEW.service_id
        USING ERRCODE = '22023', TABLE = 'service_jobs', COLUMN = 'lease_owner';
END $$;

CREATE TRIGGER service_jobs_proxy_needs_lease_owner
    BEFORE INSERT ON service_jobs
    FOR EACH ROW
    WHEN (NEW.runtime = 'proxy' AND NEW.lease_owner IS NULL AND NEW.status IN ('pending', 'running'))
    EXECUTE FUNCTION service_jobs_proxy_needs_lease_owner();
