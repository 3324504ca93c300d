"""The pure plan: every decision the reconciler can take, without I/O."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from desired_state.models import InstanceSpec, Tool
from providers.base import ResourceKind
from reconciler.plan import (
    Blocked,
    ObservedRow,
    ResourceDefaults,
    Verb,
    decide,
    desired_resource,
    params_hash,
    plan_instance,
    wanted_kinds,
)

DEFAULTS = ResourceDefaults(base_env={"XMTP_ENV": "dev"})
SPEC = InstanceSpec(instance_id="abc123", tools=(Tool.OPENROUTER, Tool.AGENTMAIL), env={"FOO": "bar"})
NOW = datetime(2026, 1, 1, tzinfo=UTC)


def row(kind: ResourceKind, external_id: str | None = "x", **kw: object) -> ObservedRow:
    return ObservedRow(kind=kind, derived_name="convos-agent-abc123", external_id=external_id, **kw)  # type: ignore[arg-type]


def test_wanted_kinds_follow_creation_order_and_tools() -> None:
    assert wanted_kinds(SPEC) == [
        ResourceKind.OPENROUTER_KEY,
        ResourceKind.AGENTMAIL_INBOX,
        ResourceKind.RAILWAY_SERVICE,
        ResourceKind.RAILWAY_VOLUME,
        ResourceKind.RAILWAY_DOMAIN,
        ResourceKind.RAILWAY_DEPLOYMENT,
    ]


def test_names_are_derived_from_the_instance_id() -> None:
    want = desired_resource(ResourceKind.OPENROUTER_KEY, SPEC, DEFAULTS, {}, {})
    assert want.name == "convos-agent-abc123"
    assert want.params == {"limit": 20.0, "limit_reset": None}


def test_deployment_is_blocked_until_tools_volume_and_domain_exist() -> None:
    observed = {ResourceKind.RAILWAY_SERVICE: row(ResourceKind.RAILWAY_SERVICE, "svc")}
    with pytest.raises(Blocked):
        desired_resource(ResourceKind.RAILWAY_DEPLOYMENT, SPEC, DEFAULTS, observed, {})


def test_deployment_carries_every_variable_with_managed_values_winning() -> None:
    spec = SPEC.model_copy(update={"env": {"FOO": "bar", "AGENTMAIL_INBOX_ID": "spoofed"}})
    observed = {
        ResourceKind.RAILWAY_SERVICE: row(ResourceKind.RAILWAY_SERVICE, "svc"),
        ResourceKind.RAILWAY_VOLUME: row(ResourceKind.RAILWAY_VOLUME, "vol"),
        ResourceKind.RAILWAY_DOMAIN: row(ResourceKind.RAILWAY_DOMAIN, "dom"),
        ResourceKind.OPENROUTER_KEY: row(ResourceKind.OPENROUTER_KEY, "hash", has_secret=True),
        ResourceKind.AGENTMAIL_INBOX: row(ResourceKind.AGENTMAIL_INBOX, "convos-agent-abc123@agentmail.to"),
    }
    want = desired_resource(
        ResourceKind.RAILWAY_DEPLOYMENT, spec, DEFAULTS, observed, {ResourceKind.OPENROUTER_KEY: "sk-or-v1-s"}
    )
    assert want.depends == {"railway_service": "svc"}
    assert want.secrets == {
        "XMTP_ENV": "dev",
        "FOO": "bar",
        "INSTANCE_ID": "abc123",
        "OPENROUTER_API_KEY": "sk-or-v1-s",
        "AGENTMAIL_INBOX_ID": "convos-agent-abc123@agentmail.to",
    }
    assert "sk-or-v1-s" not in repr(want)


def test_decide_covers_every_case() -> None:
    kind = ResourceKind.AGENTMAIL_INBOX
    want = desired_resource(kind, SPEC, DEFAULTS, {}, {})
    in_sync = row(kind, status="ready", applied_hash=params_hash(want))
    assert decide(kind, want, None).verb is Verb.CREATE
    assert decide(kind, want, row(kind, None, intent_at=NOW)).verb is Verb.ADOPT_OR_CREATE
    assert decide(kind, want, in_sync).verb is Verb.NOOP
    assert decide(kind, want, in_sync, poll=True).verb is Verb.OBSERVE
    assert (
        decide(kind, want, row(kind, status="creating", applied_hash=params_hash(want))).verb is Verb.OBSERVE
    )
    assert decide(kind, want, row(kind, status="ready", applied_hash="old")).verb is Verb.UPDATE
    assert decide(kind, None, in_sync).verb is Verb.DELETE
    assert decide(kind, None, row(kind, None, intent_at=NOW)).verb is Verb.FIND_AND_DELETE
    assert decide(kind, None, row(kind, None)).verb is Verb.FORGET
    assert decide(kind, None, None).verb is Verb.NOOP


def test_an_adopted_key_without_its_secret_is_replaced() -> None:
    kind = ResourceKind.OPENROUTER_KEY
    want = desired_resource(kind, SPEC, DEFAULTS, {}, {})
    assert decide(kind, want, row(kind, status="ready", has_secret=False)).verb is Verb.REPLACE


def test_changed_limit_changes_the_hash() -> None:
    kind = ResourceKind.OPENROUTER_KEY
    a = desired_resource(kind, SPEC, DEFAULTS, {}, {})
    b = desired_resource(kind, SPEC, ResourceDefaults(openrouter_limit=50.0), {}, {})
    assert params_hash(a) != params_hash(b)


def test_plan_for_new_instance_creates_everything_and_absent_deletes_in_reverse() -> None:
    actions = plan_instance(SPEC, True, DEFAULTS, {}, {})
    assert [a.verb for a in actions] == [Verb.CREATE] * 6
    observed = {
        k: row(k, f"id-{k.value}", status="ready")
        for k in (ResourceKind.OPENROUTER_KEY, ResourceKind.RAILWAY_SERVICE, ResourceKind.RAILWAY_VOLUME)
    }
    teardown = plan_instance(SPEC, False, DEFAULTS, observed, {})
    assert [(a.kind, a.verb) for a in teardown] == [
        (ResourceKind.RAILWAY_VOLUME, Verb.DELETE),
        (ResourceKind.RAILWAY_SERVICE, Verb.DELETE),
        (ResourceKind.OPENROUTER_KEY, Verb.DELETE),
    ]
