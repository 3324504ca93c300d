-- 0005: the env rules a plain-SQL writer meets too (docs/sql-contract.md, "Input rules").
--
-- Railway resolves "${{NAMESPACE.VAR}}" in a service variable's value when it deploys, so a
-- caller's env value holding one could read another service's variables (another instance's
-- OpenRouter key); RAILWAY_* and PORT are Railway's own, and INSTANCE_ID and the tools' keys are
-- the reconciler's. desired_state/models.py refuses all of them for the API and the CLI with the
-- same words as here; tests/test_sql_contract.py checks that both refuse the same names.
--
-- A trigger, not a CHECK: it looks only at writes that change spec, so a row stored before this
-- migration neither breaks the migration nor the reconciler's own updates of that row (the
-- reconciler marks it Failed, naming the variable, until the caller fixes it).
--
-- NUL characters need no rule here: Postgres text and jsonb cannot hold them, and refuse them
-- with SQLSTATE 22P05 ("unsupported Unicode escape sequence") before any trigger runs.

CREATE FUNCTION desired_spec_env_problem(spec JSONB) RETURNS TEXT
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    env JSONB := spec -> 'env';
    item RECORD;
    name TEXT;
BEGIN
    IF env IS NULL OR jsonb_typeof(env) = 'null' THEN
        RETURN NULL;
    END IF;
    IF jsonb_typeof(env) <> 'object' THEN
        RETURN 'env: Input should be a valid dictionary';
    END IF;
    FOR item IN SELECT key, value FROM jsonb_each(env) LOOP
        name := left(item.key, 128);
        IF jsonb_typeof(item.value) <> 'string' THEN
            RETURN format('env.%s: Input should be a valid string', name);
        END IF;
        IF upper(item.key) LIKE 'RAILWAY\_%' OR upper(item.key) = 'PORT' THEN
            RETURN format('env: %s is set by Railway and cannot be set in env', name);
        END IF;
        IF upper(item.key) IN ('INSTANCE_ID', 'RECONCILER_REDEPLOY', 'OPENROUTER_API_KEY', 'AGENTMAIL_INBOX_ID',
                               'TELNYX_PHONE_NUMBER', 'TELNYX_MESSAGING_PROFILE_ID') THEN
            RETURN format('env: %s is set by the reconciler and cannot be set in env', name);
        END IF;
        IF strpos(item.value #>> '{}', '${{') > 0 THEN
            RETURN format('env: value of %s holds a Railway variable reference (''${{...}}''), '
                          'which Railway would resolve to another variable''s value', name);
        END IF;
    END LOOP;
    RETURN NULL;
END $$;

CREATE FUNCTION desired_instances_input_rules() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    problem TEXT;
BEGIN
    IF TG_OP = 'UPDATE' AND NEW.spec IS NOT DISTINCT FROM OLD.spec THEN
        RETURN NEW;
    END IF;
    problem := desired_spec_env_problem(NEW.spec);
    IF problem IS NOT NULL THEN
        RAISE EXCEPTION 'invalid spec: %', problem
            USING ERRCODE = 'check_violation', CONSTRAINT = 'desired_instances_env_rules',
                  TABLE = 'desired_instances', COLUMN = 'spec';
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER desired_instances_input_rules
    BEFORE INSERT OR UPDATE OF spec ON desired_instances
    FOR EACH ROW EXECUTE FUNCTION desired_instances_input_rules();
