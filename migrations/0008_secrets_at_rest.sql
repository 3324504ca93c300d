-- 0008: provider secrets we keep are sealed (reconciler/secrets_box.py).
--
-- observed_resources.secret holds "fernet:<token>", sealed with RECONCILER_SECRET_KEY. SQL cannot
-- seal (the key is the reconciler's, not the database's), so rows written before this migration
-- are sealed by the reconciler when it starts, each with a compare-and-set; until then they are
-- read as they are. This trigger refuses any *new* value that is not sealed, so a code path that
-- forgot to seal fails instead of storing a key in clear; a row it has not been asked to change
-- is left alone, and so this migration cannot fail on existing rows.

CREATE FUNCTION observed_resources_secret_sealed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.secret IS NOT NULL AND NEW.secret NOT LIKE 'fernet:%'
       AND (TG_OP = 'INSERT' OR NEW.secret IS DISTINCT FROM OLD.secret) THEN
        RAISE EXCEPTION 'observed_resources.secret must be sealed (reconciler/secrets_box.py), not stored in clear'
            USING ERRCODE = 'check_violation', CONSTRAINT = 'observed_resources_secret_sealed',
                  TABLE = 'observed_resources', COLUMN = 'secret';
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER observed_resources_secret_sealed
    BEFORE INSERT OR UPDATE OF secret ON observed_resources
    FOR EACH ROW EXECUTE FUNCTION observed_resources_secret_sealed();

COMMENT ON COLUMN observed_resources.secret IS
    'A provider value shown once (the OpenRouter key), sealed: fernet:<token> (RECONCILER_SECRET_KEY)';
