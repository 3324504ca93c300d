-- 0004: batched observation, garbage collection, and provider limits shared by all replicas.

-- A hint from the batched observer that a resource differs from what we applied: 'gone' (absent
-- from the provider's listing) or 'config' (a field we own differs). The worker that next claims
-- the instance confirms it with a direct read and corrects it, then clears the hint.
ALTER TABLE observed_resources ADD COLUMN drift TEXT
    CONSTRAINT observed_resources_drift_check CHECK (drift IN ('gone', 'config'));

-- Provider resources that look orphaned (a managed name with no live desired row, or a second
-- resource under a live row's name). One is deleted only after it has been seen orphaned for the
-- whole grace period, so an in-flight create is never collected.
CREATE TABLE gc_candidates (
    kind          TEXT NOT NULL,
    external_id   TEXT NOT NULL,
    derived_name  TEXT NOT NULL,
    first_seen_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_seen_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (kind, external_id)
);

-- Per-provider admission shared by every replica: a token bucket (rate limit) and a circuit
-- breaker. Rows are tiny and hot; every provider call takes one row lock for a few microseconds.
CREATE TABLE provider_limits (
    provider          TEXT PRIMARY KEY,
    tokens            DOUBLE PRECISION NOT NULL,
    refilled_at       TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
    blocked_until     TIMESTAMPTZ,                 -- Retry-After or an open circuit
    consecutive_failures INTEGER NOT NULL DEFAULT 0,
    circuit_open_until TIMESTAMPTZ
);
