"""Bad input is refused before anything is written, with the field and the rule named."""

from __future__ import annotations

import pytest

from desired_state.models import SpecError, Tool, parse_instance, parse_instances
from providers.http import parse_retry_after, redact
from reconciler.settings import SettingsError, load_settings


def test_valid_instance_uses_seed_field_names_and_sorts_tools() -> None:
    spec = parse_instance({"instanceId": "rnM8UBQ_fZCz", "name": "a", "tools": ["agentmail", "openrouter"]})
    assert spec.instance_id == "rnM8UBQ_fZCz"
    assert spec.tools == (Tool.OPENROUTER, Tool.AGENTMAIL)


@pytest.mark.parametrize(
    ("item", "expected"),
    [
        ({"name": "x"}, "instanceId: Field required"),
        ({"instanceId": "has space"}, "instanceId: must be 1-32 characters"),
        ({"instanceId": "a" * 33}, "instanceId: must be 1-32 characters"),
        (
            {"instanceId": "ok", "tools": ["slack"]},
            "tools.0: Input should be 'openrouter', 'agentmail' or 'telnyx'",
        ),
        ({"instanceId": "ok", "tools": "openrouter"}, "tools: must be a list of tool ids"),
        ({"instanceId": "ok", "tools": ["telnyx", "telnyx"]}, "tools: lists a tool more than once"),
        ({"instanceId": "ok", "env": {"1BAD": "x"}}, "env: variable name '1BAD'"),
        ({"instanceId": "ok", "image": "Not An Image"}, "image: must be a lowercase image reference"),
        ({"instanceId": "ok", "colour": "red"}, "colour: is not a known field"),
    ],
)
def test_bad_instance_names_field_and_rule(item: dict[str, object], expected: str) -> None:
    with pytest.raises(SpecError) as caught:
        parse_instance(item)
    assert any(problem.startswith(expected) for problem in caught.value.problems), caught.value.problems


def test_list_is_all_or_nothing_and_refuses_duplicates() -> None:
    with pytest.raises(SpecError) as caught:
        parse_instances([{"instanceId": "a1"}, {"instanceId": "a1"}, {"instanceId": "b b"}])
    problems = caught.value.problems
    assert "[1].instanceId: a1 appears more than once" in problems
    assert any(p.startswith("[2].instanceId") for p in problems)


def test_validation_messages_do_not_echo_values() -> None:
    secret = "sk-or-v1-" + "a" * 40
    with pytest.raises(SpecError) as caught:
        parse_instance({"instanceId": "ok", "env": {"K": 5}, "extra": secret})
    assert secret not in str(caught.value)


def test_settings_defaults_and_no_limit_reset_unless_configured() -> None:
    settings = load_settings({})
    assert settings.openrouter_limit == 20.0
    assert settings.openrouter_limit_reset is None
    assert settings.urls["RAILWAY_API_URL"] == "https://backboard.railway.com/graphql/v2"
    assert settings.port == 3002


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"OPENROUTER_KEY_LIMIT": "lots"}, "OPENROUTER_KEY_LIMIT"),
        ({"OPENROUTER_KEY_LIMIT_RESET": "hourly"}, "OPENROUTER_KEY_LIMIT_RESET"),
        ({"SERVICE_DATABASE_URL": "mysql://x"}, "SERVICE_DATABASE_URL"),
        ({"TELNYX_API_URL": "ftp://x"}, "TELNYX_API_URL"),
        ({"PORT": "99999"}, "PORT"),
        ({"RAILWAY_TOKEN_KIND": "team"}, "RAILWAY_TOKEN_KIND"),
    ],
)
def test_malformed_setting_names_the_variable(env: dict[str, str], variable: str) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(env)
    message = str(caught.value)
    assert message.startswith(variable) and "\n" not in message


def test_secrets_never_print() -> None:
    settings = load_settings({"RAILWAY_API_TOKEN": "tok-very-secret", "SERVICES_API_KEY": "k-secret"})
    assert "tok-very-secret" not in repr(settings)
    assert "k-secret" not in repr(settings)
    assert settings.railway_token is not None and settings.railway_token.get_secret_value() == "tok-very-secret"


def test_run_requires_railway_settings() -> None:
    with pytest.raises(SettingsError, match="RAILWAY_API_TOKEN"):
        load_settings({}).require_railway()
    with pytest.raises(SettingsError, match="RAILWAY_ENVIRONMENT_ID or RAILWAY_ENVIRONMENT_NAME"):
        load_settings({"RAILWAY_API_TOKEN": "t", "RAILWAY_PROJECT_ID": "p"}).require_railway()


def test_retry_after_seconds_and_http_date() -> None:
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("garbage") is None
    now = 1_700_000_000.0
    assert parse_retry_after("Tue, 14 Nov 2023 22:13:40 GMT", now=now) == pytest.approx(20.0)


def test_redact_masks_known_and_shaped_secrets() -> None:
    text = redact("bad key sk-or-v1-abcdef123 and Bearer tok123 and mine-xyz", secrets=["mine-xyz"])
    assert "sk-or-v1-abcdef123" not in text and "tok123" not in text and "mine-xyz" not in text
