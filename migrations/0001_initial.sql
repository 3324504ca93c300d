-- 0001: desired state, observed state, events, and the seed's instance_infra / instance_services.
--
-- Ownership: callers (the pool manager, over SQL or HTTP) write instance_id, name, spec and
-- present of desired_instances. Every other column, and every other table, is the reconciler's.

CREATE TABLE desired_instances (
    instance_id         TEXT PRIMARY KEY,
    name                TEXT NOT NULL DEFAULT '',
    spec                JSONB NOT NULL,
    present             BOOLEAN NOT NULL DEFAULT TRUE,       -- FALSE: tear everything down, then drop the row
    generation          BIGINT NOT NULL DEFAULT 1,           -- bumped by trigger when spec or present changes
    created_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- reconciler-owned from here on
    observed_generation BIGINT,
    phase               TEXT NOT NULL DEFAULT 'Pending',     -- Pending, Provisioning, Ready, Deleting, Failed
    ready_at            TIMESTAMPTZ,
    attempts            INTEGER NOT NULL DEFAULT 0,
    next_attempt_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_error          TEXT,
    lease_owner         TEXT,
    lease_expires_at    TIMESTAMPTZ,
    fencing_token       BIGINT NOT NULL DEFAULT 0,           -- bumped by every claim
    CONSTRAINT desired_instances_phase_check
        CHECK (phase IN ('Pending', 'Provisioning', 'Ready', 'Deleting', 'Failed'))
);

CREATE INDEX desired_instances_due_idx ON desired_instances (next_attempt_at);

-- A spec or presence change is a new generation: reset backoff, make it due now, wake the loop.
CREATE FUNCTION desired_instances_bump_generation() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.spec IS DISTINCT FROM OLD.spec OR NEW.present IS DISTINCT FROM OLD.present
       OR NEW.name IS DISTINCT FROM OLD.name THEN
        NEW.generation := OLD.generation + 1;
        NEW.updated_at := now();
        NEW.attempts := 0;
        NEW.last_error := NULL;
        NEW.next_attempt_at := now();
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER desired_instances_generation
    BEFORE UPDATE ON desired_instances
    FOR EACH ROW EXECUTE FUNCTION desired_instances_bump_generation();

CREATE FUNCTION desired_instances_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('reconciler_wake', NEW.instance_id);
    RETURN NULL;
END $$;

CREATE TRIGGER desired_instances_wake_on_insert
    AFTER INSERT ON desired_instances
    FOR EACH ROW EXECUTE FUNCTION desired_instances_notify();

CREATE TRIGGER desired_instances_wake_on_change
    AFTER UPDATE ON desired_instances
    FOR EACH ROW WHEN (OLD.generation IS DISTINCT FROM NEW.generation)
    EXECUTE FUNCTION desired_instances_notify();

-- One row per (instance, resource kind): what we believe the provider holds.
-- The lease lives on desired_instances (an instance is reconciled as one unit, in dependency
-- order); fencing_token here records which claim last wrote the row.
CREATE TABLE observed_resources (
    instance_id      TEXT NOT NULL REFERENCES desired_instances (instance_id) ON DELETE CASCADE,
    kind             TEXT NOT NULL,
    derived_name     TEXT NOT NULL,
    external_id      TEXT,
    status           TEXT NOT NULL DEFAULT 'pending',   -- pending, creating, ready, updating, deleting
    attributes       JSONB NOT NULL DEFAULT '{}'::jsonb, -- non-secret observed fields
    secret           TEXT,                              -- provider value shown once (OpenRouter key)
    applied_hash     TEXT,                              -- hash of the params last applied
    intent_at        TIMESTAMPTZ,                       -- set before a create call; crash => adopt by name
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  TIMESTAMPTZ,
    last_error       TEXT,
    lease_expires_at TIMESTAMPTZ,
    fencing_token    BIGINT NOT NULL DEFAULT 0,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (instance_id, kind),
    CONSTRAINT observed_resources_status_check
        CHECK (status IN ('pending', 'creating', 'ready', 'updating', 'deleting'))
);

CREATE UNIQUE INDEX observed_resources_external_idx
    ON observed_resources (kind, external_id) WHERE external_id IS NOT NULL;

-- Append-only: one row per external mutation or state change, in the same transaction.
CREATE TABLE events (
    id            BIGSERIAL PRIMARY KEY,
    at            TIMESTAMPTZ NOT NULL DEFAULT now(),
    instance_id   TEXT NOT NULL,
    kind          TEXT,
    action        TEXT NOT NULL,
    outcome       TEXT NOT NULL,
    detail        JSONB NOT NULL DEFAULT '{}'::jsonb,
    fencing_token BIGINT
);

CREATE INDEX events_instance_idx ON events (instance_id, id DESC);

CREATE FUNCTION events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'events is append-only';
END $$;

CREATE TRIGGER events_no_update
    BEFORE UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION events_append_only();

-- The seed Services API tables, exact columns and constraints; the pool manager reads them.
CREATE TABLE IF NOT EXISTS instance_infra (
    instance_id         TEXT PRIMARY KEY,
    provider            TEXT NOT NULL DEFAULT 'railway',
    provider_service_id TEXT NOT NULL UNIQUE,
    provider_env_id     TEXT NOT NULL,
    provider_project_id TEXT,
    url                 TEXT,
    deploy_status       TEXT,
    runtime_image       TEXT,
    volume_id           TEXT,
    created_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at          TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS instance_services (
    id            SERIAL PRIMARY KEY,
    instance_id   TEXT NOT NULL REFERENCES instance_infra (instance_id) ON DELETE CASCADE,
    tool_id       TEXT NOT NULL,
    resource_id   TEXT NOT NULL,
    resource_meta JSONB DEFAULT '{}'::jsonb,
    env_key       TEXT NOT NULL,
    env_value     TEXT,
    status        TEXT NOT NULL DEFAULT 'active',
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (instance_id, tool_id)
);
