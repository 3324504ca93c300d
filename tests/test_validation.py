"""Bad input is refused before anything is written, with the field and the rule named."""

from __future__ import annotations

import time

import jsonschema
import pytest
from pydantic import ValidationError

from desired_state.models import (
    MAX_ENV_NAME_CHARS,
    MAX_ENV_VALUE_BYTES,
    MAX_ENV_VARS,
    MAX_IMAGE_CHARS,
    MAX_INSTANCE_ID_CHARS,
    MAX_NAME_CHARS,
    MAX_PROBLEMS,
    InstanceSpec,
    SpecError,
    Tool,
    describe_validation_error,
    parse_instance,
    parse_instances,
)
from desired_state.vocabulary import REDEPLOY_ENV, RESERVED_ENV_KEYS, TOOLS
from providers.http import parse_retry_after, redact
from reconciler.settings import PASS_THROUGH_VARIABLES, SettingsError, load_settings


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
    # The header is the other side's: nothing it says raises, or defers work for more than a day.
    for hostile in ("inf", "nan", "-inf", "Mon, 01 Jan 2020 00:00:00 +99999999999999999999", "Mon, 99 Foo"):
        assert parse_retry_after(hostile) is None, hostile
    assert parse_retry_after("1e12") == parse_retry_after("Fri, 01 Jan 9999 00:00:00 GMT") == 86_400.0
    assert parse_retry_after("-5") == 0.0
    now = 1_700_000_000.0
    assert parse_retry_after("Tue, 14 Nov 2023 22:13:40 GMT", now=now) == pytest.approx(20.0)


def test_redact_masks_known_and_shaped_secrets() -> None:
    text = redact("bad key sk-or-v1-abcdef123 and Bearer tok123 and mine-xyz", secrets=["mine-xyz"])
    assert "sk-or-v1-abcdef123" not in text and "tok123" not in text and "mine-xyz" not in text


# -- issue 11: bounded input, Railway's variable syntax, NUL characters ---------------------------


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("tools", ["openrouter"] * 1_600_000, "tools: has 1600000 tool ids; at most 3 are allowed"),
        ("tools", ["not-a-tool"] * 1_600_000, "tools: has 1600000 tool ids; at most 3 are allowed"),
        ("env", {f"K{i}": i for i in range(1_600_000)}, "env: has 1600000 variables; at most 200 are allowed"),
    ],
)
def test_oversize_containers_are_refused_before_their_items(field: str, value: object, expected: str) -> None:
    # Pydantic's max_length alone validated all 1.6 million items first: 14 s and a 300 MB error.
    started = time.perf_counter()
    with pytest.raises(SpecError) as caught:
        parse_instance({"instanceId": "ok", field: value})
    assert time.perf_counter() - started < 1.0
    assert caught.value.problems == [expected]


def test_a_tools_list_holds_each_tool_at_most_once() -> None:
    assert len(parse_instance({"instanceId": "ok", "tools": [t.value for t in Tool]}).tools) == len(TOOLS)
    with pytest.raises(SpecError, match="tools: has 4 tool ids; at most 3 are allowed"):
        parse_instance({"instanceId": "ok", "tools": ["openrouter", "agentmail", "telnyx", "telnyx"]})


def test_an_object_of_many_unknown_fields_is_one_bounded_problem() -> None:
    started = time.perf_counter()
    with pytest.raises(SpecError) as caught:
        parse_instance({"instanceId": "ok", **{f"field{i}": i for i in range(200_000)}})
    assert time.perf_counter() - started < 1.0
    assert caught.value.problems == ["(item): has 200001 fields; an instance has at most 7"]


@pytest.mark.parametrize(
    ("item", "expected"),
    [
        ({"instanceId": "ok", "name": "n" * (MAX_NAME_CHARS + 1)}, "name: String should have at most 200 characters"),
        ({"instanceId": "ok", "image": "a" * (MAX_IMAGE_CHARS + 1)}, "image: String should have at most 255"),
        ({"instanceId": "ok", "env": {"K" * (MAX_ENV_NAME_CHARS + 1): "v"}}, "env: variable name 'KKKK"),
        ({"instanceId": "ok", "env": {"K": "v" * (MAX_ENV_VALUE_BYTES + 1)}}, "env: value of K is longer than 32768"),
        ({"instanceId": "ok", "env": {"K": "é" * (MAX_ENV_VALUE_BYTES // 2 + 1)}}, "env: value of K is longer"),
    ],
)
def test_strings_have_documented_maxima(item: dict[str, object], expected: str) -> None:
    with pytest.raises(SpecError) as caught:
        parse_instance(item)
    assert caught.value.problems[0].startswith(expected), caught.value.problems


def test_the_maxima_reach_the_published_schema() -> None:
    schema = InstanceSpec.model_json_schema(by_alias=True)["properties"]
    assert schema["instanceId"]["maxLength"] == MAX_INSTANCE_ID_CHARS
    assert schema["name"]["maxLength"] == MAX_NAME_CHARS
    assert schema["tools"]["maxItems"] == len(TOOLS)
    assert schema["env"]["maxProperties"] == MAX_ENV_VARS
    assert schema["env"]["additionalProperties"]["maxLength"] == MAX_ENV_VALUE_BYTES
    assert "RAILWAY_*" in schema["env"]["description"] and "${{" in schema["env"]["description"]


def test_echoed_keys_are_cut_short_and_problems_counted_past_the_first_twenty() -> None:
    long_key = "x" * 100_000
    with pytest.raises(SpecError) as caught:
        parse_instance({"instanceId": "ok", long_key: 1, "env": {long_key: "v"}})
    assert all(len(problem) < 200 for problem in caught.value.problems), caught.value.problems
    with pytest.raises(SpecError) as many:
        parse_instances([{"instanceId": "bad id"} for _ in range(500)])
    assert len(many.value.problems) == MAX_PROBLEMS + 1
    assert many.value.problems[-1] == f"... and {500 - MAX_PROBLEMS} more problems"


REFERENCE = "${{convos-agent-OTHER.OPENROUTER_API_KEY}}"


@pytest.mark.parametrize("value", [REFERENCE, "https://${{shared.DOMAIN}}/x", "${{PORT}}"])
def test_railway_references_in_env_values_are_refused_naming_the_variable(value: str) -> None:
    with pytest.raises(SpecError) as caught:
        parse_instance({"instanceId": "ok", "env": {"MY_KEY": value}})
    (problem,) = caught.value.problems
    assert problem.startswith("env: value of MY_KEY holds a Railway variable reference")
    assert value not in problem


@pytest.mark.parametrize("value", ["$HOME", "${HOME}", "{{x}}", "$ {{x}}", "price: $5 {{each}}"])
def test_text_that_railway_does_not_interpret_is_kept(value: str) -> None:
    assert parse_instance({"instanceId": "ok", "env": {"V": value}}).env == {"V": value}


RESERVED_BY_RAILWAY = ["PORT", "port", "RAILWAY_ENVIRONMENT", "RAILWAY_PUBLIC_DOMAIN", "railway_token"]


@pytest.mark.parametrize(
    ("name", "owner"),
    [*((name, "Railway") for name in RESERVED_BY_RAILWAY)]
    + [(name, "the reconciler") for name in sorted(RESERVED_ENV_KEYS)]
    + [("instance_id", "the reconciler")],
)
def test_reserved_env_names_are_refused(name: str, owner: str) -> None:
    with pytest.raises(SpecError) as caught:
        parse_instance({"instanceId": "ok", "env": {name: "x"}})
    assert caught.value.problems == [f"env: {name} is set by {owner} and cannot be set in env"]


def test_reserved_names_cover_every_tool_key_and_what_the_reconciler_sets() -> None:
    for info in TOOLS.values():
        assert set(info.env_keys) <= RESERVED_ENV_KEYS
    assert {"INSTANCE_ID", REDEPLOY_ENV} <= RESERVED_ENV_KEYS


def test_pass_through_settings_stay_allowed_unless_the_reconciler_sets_them_per_instance() -> None:
    # TELNYX_PHONE_NUMBER and TELNYX_MESSAGING_PROFILE_ID are pass-through *settings* (the
    # operator's shared number reaches instances without the telnyx tool) and a tool's keys: an
    # instance with the tool gets its own number, so a caller may not set them.
    for name in PASS_THROUGH_VARIABLES:
        if name in RESERVED_ENV_KEYS:
            with pytest.raises(SpecError, match=f"env: {name} is set by the reconciler"):
                parse_instance({"instanceId": "ok", "env": {name: "x"}})
        else:
            assert parse_instance({"instanceId": "ok", "env": {name: "x"}}).env == {name: "x"}
    assert {"OPENCLAW_PRIMARY_MODEL", "XMTP_ENV"} <= set(PASS_THROUGH_VARIABLES) - RESERVED_ENV_KEYS


@pytest.mark.parametrize(
    ("item", "expected"),
    [
        ({"instanceId": "ok", "name": "a\x00b"}, "[0].name: must not contain NUL characters"),
        ({"instanceId": "ok", "env": {"A": "x\x00y"}}, "[0].env: value of A must not contain NUL characters"),
        ({"instanceId": "o\x00k"}, "[0].instanceId: must not contain NUL characters"),
        ({"instanceId": "ok", "image": "img\x00"}, "[0].image: must not contain NUL characters"),
        ({"instanceId": "ok", "env": {"A": "\ud800"}}, "[0].env: value of A is not valid Unicode text"),
    ],
)
def test_nul_characters_are_refused_with_the_field_named(item: dict[str, object], expected: str) -> None:
    with pytest.raises(SpecError) as caught:
        parse_instances([item])
    assert caught.value.problems == [expected]


@pytest.mark.parametrize(
    "spec",
    [
        {"env": "A=1"},
        {"env": ["A"]},
        {"tools": "openrouter"},
        {"redeploy": "soon"},
        {"env": {"A": REFERENCE}},
        {"tools": ["openrouter"] * 1000},
    ],
)
def test_a_stored_row_breaking_any_rule_is_a_validation_error(spec: dict[str, object]) -> None:
    # The reconciler turns exactly this error into a Failed row naming the field; anything else
    # would be an unexpected error retried with backoff.
    with pytest.raises(ValidationError) as caught:
        InstanceSpec.from_row("ok", "", spec)
    assert REFERENCE not in str(describe_validation_error(caught.value))


@pytest.mark.parametrize(
    "env",
    [
        {"OPENCLAW_PRIMARY_MODEL": "a/b"},
        {"PORT": "1"},
        {"Port": "1"},
        {"PORTS": "1"},
        {"RAILWAY_X": "1"},
        {"railway_x": "1"},
        {"RAILWAYX": "1"},
        {"INSTANCE_ID": "1"},
        {"MY_INSTANCE_ID": "1"},
        {"TELNYX_PHONE_NUMBER": "1"},
        {"V": "$HOME ${HOME} {{x}}"},
        {"V": "https://${{shared.DOMAIN}}"},
        {"V": "$${{x}}"},
        {"V": "a\x00b"},
    ],
)
def test_the_published_env_schema_says_what_the_model_checks(env: dict[str, str]) -> None:
    schema = InstanceSpec.model_json_schema(by_alias=True)["properties"]["env"]
    schema_accepts = jsonschema.Draft202012Validator(schema).is_valid(env)
    try:
        parse_instance({"instanceId": "ok", "env": env})
        model_accepts = True
    except SpecError:
        model_accepts = False
    assert schema_accepts == model_accepts
