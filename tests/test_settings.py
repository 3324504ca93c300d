"""Settings: the seed's variable names, one-line errors naming the variable, no secret in sight."""

from __future__ import annotations

import pytest

from reconciler.settings import DEFAULT_URLS, SettingsError, load_settings


def test_the_process_environment_is_read_and_a_given_mapping_replaces_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PORT", "4000")
    monkeypatch.setenv("RAILWAY_PROJECT_ID", "from-the-process")
    assert (load_settings().port, load_settings().railway_project_id) == (4000, "from-the-process")
    given = load_settings({"PORT": "5000"})
    assert (given.port, given.railway_project_id) == (5000, None)


def test_blank_means_unset_and_values_are_trimmed() -> None:
    settings = load_settings(
        {
            "PORT": " 8080 ",
            "OPENROUTER_KEY_LIMIT": "  ",
            "SERVICES_API_KEY": "   ",
            "RAILWAY_API_URL": "http://127.0.0.1:9/railway/",
            "RECONCILER_NAME_PREFIX": "",
        }
    )
    assert (settings.port, settings.openrouter_limit, settings.services_api_key) == (8080, 20.0, None)
    assert settings.urls == DEFAULT_URLS | {"RAILWAY_API_URL": "http://127.0.0.1:9/railway"}
    assert settings.name_prefix == "convos-agent"
    with pytest.raises(SettingsError, match=r"^SERVICES_API_KEY is not set"):
        settings.require_api_key()


def test_pass_through_variables_reach_instances_exactly_as_set() -> None:
    settings = load_settings({"XMTP_ENV": "", "BANKR_API_KEY": " bk ", "TELNYX_MESSAGING_PROFILE_ID": " p1 "})
    assert settings.pass_through == {"XMTP_ENV": "", "BANKR_API_KEY": " bk ", "TELNYX_MESSAGING_PROFILE_ID": " p1 "}
    assert settings.telnyx_messaging_profile_id == "p1"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"PORT": "0"}, "PORT must be a port number from 1 to 65535"),
        ({"OPENROUTER_KEY_LIMIT": "-3"}, "OPENROUTER_KEY_LIMIT must be a positive number of US dollars"),
        ({"RECONCILER_NAME_PREFIX": "no spaces"}, "RECONCILER_NAME_PREFIX must be up to 20 letters, digits or dashes"),
        ({"RECONCILER_RATE_LIMITS": "slack=1"}, "RECONCILER_RATE_LIMITS item 'slack=1' is not provider=rate[/burst]"),
        ({"POOL_DATABASE_URL": "host=x port"}, "POOL_DATABASE_URL must be a postgresql:// URL or a libpq connection"),
    ],
)
def test_a_bad_setting_is_one_line_naming_the_variable_and_the_rule(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(env)
    assert str(caught.value).startswith(message) and "\n" not in str(caught.value)


def test_no_secret_in_a_repr_or_an_error() -> None:
    secrets = {
        "SERVICE_DATABASE_URL": "postgresql://app:db-password-1@db.internal/app",
        "POOL_DATABASE_URL": "postgresql://pool:db-password-2@db.internal/pool",
        "SERVICES_API_KEY": "api-key-3",
        "RAILWAY_API_TOKEN": "railway-token-4",
        "OPENROUTER_MANAGEMENT_KEY": "sk-or-v1-management-5",
        "AGENTMAIL_API_KEY": "agentmail-key-6",
        "TELNYX_API_KEY": "telnyx-key-7",
        "POOL_API_KEY": "pool-api-key-8",
        "BANKR_API_KEY": "bankr-key-9",
    }
    settings = load_settings(secrets)
    shown = repr(settings) + str(settings)
    assert not [value for value in secrets.values() if value in shown or value.split("@")[0] in shown]
    assert settings.require_api_key().get_secret_value() == "api-key-3"

    with pytest.raises(SettingsError) as caught:
        load_settings({"OPENROUTER_KEY_LIMIT": "sk-or-v1-pasted-in-the-wrong-place"})
    assert "sk-or-v1" not in str(caught.value)
