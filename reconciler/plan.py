"""The pure half of a reconcile: what each resource should be, and what to do about it.

Nothing here does I/O, so every decision the reconciler takes can be tested, and printed by
``reconciler plan``, without a database or a provider.

Two steps:

* :func:`desired_resources` turns an :class:`~desired_state.models.InstanceSpec` (plus what is
  already known of the instance's other resources) into one :class:`~providers.base.DesiredResource`
  per resource kind the instance needs. Resources hang off each other: a volume needs the service
  id, and the deployment carries every tool's value in its variables. A value not known yet (a
  key not created yet) leaves its dependant *blocked*; the reconciler creates in
  :data:`~providers.base.CREATE_ORDER`, so it is known by the time the dependant's turn comes.
* :func:`decide` compares one desired resource with its observed row and returns an
  :class:`Action`, a value object naming the verb and the reason.

The fields we own are hashed (:func:`params_hash`); an observed row whose ``applied_hash`` differs
is updated. The hash covers secret values too (the deployment's variables include the OpenRouter
key), but only as a digest, which is safe to store.
"""

from __future__ import annotations

import enum
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from desired_state.models import InstanceSpec
from desired_state.vocabulary import (
    DEFAULT_PREFIX,
    INSTANCE_ID_ENV,
    REDEPLOY_ENV,
    TOOL_CATALOGUE,
    TOOLS,
    Tool,
    derived_name,
)
from providers.base import CREATE_ORDER, DesiredResource, ResourceKind

RAILWAY_KINDS: tuple[ResourceKind, ...] = (
    ResourceKind.RAILWAY_SERVICE,
    ResourceKind.RAILWAY_VOLUME,
    ResourceKind.RAILWAY_DOMAIN,
    ResourceKind.RAILWAY_DEPLOYMENT,
)
TOOL_KINDS: dict[Tool, ResourceKind] = {info.tool: ResourceKind(info.kind) for info in TOOL_CATALOGUE}
"""The catalogue's kind names as resource kinds (the catalogue is the one home of the mapping)."""
KIND_TOOLS: dict[ResourceKind, Tool] = {kind: tool for tool, kind in TOOL_KINDS.items()}


@dataclass(frozen=True)
class ResourceDefaults:
    """Per-deployment choices that are not part of an instance's spec (from settings)."""

    name_prefix: str = DEFAULT_PREFIX
    runtime_image: str = "ghcr.io/xmtplabs/convos-runtime:latest"
    start_command: str = "node scripts/pool-server.js"
    cpu: int = 4
    memory_bytes: int = 8 * 1024**3
    volume_mount_path: str = "/data"
    openrouter_limit: float = 20.0
    openrouter_limit_reset: str | None = None
    agentmail_domain: str | None = None
    agentmail_display_name: str = "Convos Agent"
    telnyx_country_code: str = "US"
    base_env: Mapping[str, str] = field(default_factory=dict, repr=False)

    def derived_name(self, instance_id: str) -> str:
        return derived_name(self.name_prefix, instance_id)


@dataclass(frozen=True)
class ObservedRow:
    """What our ``observed_resources`` row says about one resource (never the secret itself)."""

    kind: ResourceKind
    derived_name: str
    external_id: str | None = None
    status: str = "pending"
    attributes: Mapping[str, Any] = field(default_factory=dict)
    has_secret: bool = False
    applied_hash: str | None = None
    intent_at: datetime | None = None
    attempts: int = 0
    last_error: str | None = None
    drift: str | None = None
    """Set by the batched observer: 'gone' (missing from the listing) or 'config' (fields differ)."""
    retry_in: float = 0.0
    """Seconds before this resource may be tried again after its last failure (for a create whose
    answer was lost, long enough for the provider's listing to show what it made)."""

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> ObservedRow:
        """From an ``observed_resources`` row (with ``secret`` or ``has_secret``; never keeps the value)."""
        has_secret = row["has_secret"] if "has_secret" in row else row.get("secret") is not None
        return cls(
            kind=ResourceKind(row["kind"]),
            derived_name=row["derived_name"],
            external_id=row["external_id"],
            status=row["status"],
            attributes=row["attributes"] or {},
            has_secret=bool(has_secret),
            applied_hash=row["applied_hash"],
            intent_at=row["intent_at"],
            attempts=row["attempts"],
            last_error=row["last_error"],
            drift=row.get("drift"),
            retry_in=float(row.get("retry_in") or 0.0),
        )


class Blocked(Exception):
    """A resource cannot be described yet: something it depends on does not exist."""


def wanted_kinds(spec: InstanceSpec) -> list[ResourceKind]:
    """Every resource kind the instance needs, in creation order."""
    wanted = set(RAILWAY_KINDS) | {TOOL_KINDS[tool] for tool in spec.tools}
    return [kind for kind in CREATE_ORDER if kind in wanted]


def runtime_variables(
    spec: InstanceSpec,
    defaults: ResourceDefaults,
    observed: Mapping[ResourceKind, ObservedRow],
    secrets: Mapping[ResourceKind, str],
) -> dict[str, str]:
    """Every variable the runtime boots with.

    Order of precedence, lowest first: pass-through settings, the instance's own ``env``, then
    what we manage (``INSTANCE_ID`` and the tools' values), so a caller cannot point an instance
    at another instance's inbox by accident.
    """
    variables = dict(defaults.base_env)
    variables.update(spec.env)
    variables[INSTANCE_ID_ENV] = spec.instance_id
    if spec.redeploy:
        # A changed variable is what makes Railway deploy again (a bare redeploy may reuse a
        # cached image tag: study, section 5.3).
        variables[REDEPLOY_ENV] = str(spec.redeploy)
    for tool in spec.tools:
        kind = TOOL_KINDS[tool]
        row = observed.get(kind)
        if row is None or row.external_id is None:
            raise Blocked(f"{kind} does not exist yet")
        variables.update(zip(TOOLS[tool].env_keys, tool_values(tool, row, secrets), strict=True))
    return variables


def tool_values(tool: Tool, row: ObservedRow, secrets: Mapping[ResourceKind, str]) -> tuple[str, ...]:
    """The values a tool hands the runtime, in the order of its catalogue ``env_keys``.

    Raises :class:`Blocked` when a value is not known (an OpenRouter key adopted without its value).
    """
    assert row.external_id is not None
    if tool is Tool.OPENROUTER:
        if row.kind not in secrets:
            raise Blocked("the OpenRouter key value is not known")
        return (secrets[row.kind],)
    if tool is Tool.AGENTMAIL:
        return (row.external_id,)
    return (str(row.attributes.get("phone_number", "")), str(row.attributes.get("messaging_profile_id", "")))


def desired_resource(
    kind: ResourceKind,
    spec: InstanceSpec,
    defaults: ResourceDefaults,
    observed: Mapping[ResourceKind, ObservedRow],
    secrets: Mapping[ResourceKind, str],
) -> DesiredResource:
    """The desired state of one resource; raises :class:`Blocked` if a dependency is missing."""
    name = defaults.derived_name(spec.instance_id)
    params: dict[str, Any] = {}
    depends: dict[str, str] = {}
    resource_secrets: dict[str, str] = {}
    if kind in (ResourceKind.RAILWAY_VOLUME, ResourceKind.RAILWAY_DOMAIN, ResourceKind.RAILWAY_DEPLOYMENT):
        service = observed.get(ResourceKind.RAILWAY_SERVICE)
        if service is None or service.external_id is None:
            raise Blocked("the Railway service does not exist yet")
        depends[ResourceKind.RAILWAY_SERVICE.value] = service.external_id

    if kind is ResourceKind.OPENROUTER_KEY:
        limit = spec.openrouter_limit if spec.openrouter_limit is not None else defaults.openrouter_limit
        params = {"limit": limit, "limit_reset": defaults.openrouter_limit_reset}
    elif kind is ResourceKind.AGENTMAIL_INBOX:
        params = {"domain": defaults.agentmail_domain, "display_name": defaults.agentmail_display_name}
    elif kind is ResourceKind.TELNYX_NUMBER:
        params = {"country_code": defaults.telnyx_country_code}
    elif kind is ResourceKind.RAILWAY_VOLUME:
        params = {"mount_path": defaults.volume_mount_path}
    elif kind is ResourceKind.RAILWAY_DEPLOYMENT:
        # Volume and domain first, so the first deploy boots with both (study, section 5.3).
        for needed in (ResourceKind.RAILWAY_VOLUME, ResourceKind.RAILWAY_DOMAIN):
            row = observed.get(needed)
            if row is None or row.external_id is None:
                raise Blocked(f"{needed} does not exist yet")
        params = {
            "image": spec.image or defaults.runtime_image,
            "start_command": defaults.start_command,
            "cpu": defaults.cpu,
            "memory_bytes": defaults.memory_bytes,
        }
        resource_secrets = runtime_variables(spec, defaults, observed, secrets)
        applied = observed.get(ResourceKind.RAILWAY_DEPLOYMENT)
        previous = applied.attributes.get("variable_names") if applied else None
        if isinstance(previous, list):
            params["remove_variables"] = sorted(set(previous) - set(resource_secrets))
    return DesiredResource(
        kind=kind,
        instance_id=spec.instance_id,
        name=name,
        params=params,
        depends=depends,
        secrets=resource_secrets,
    )


def params_hash(want: DesiredResource) -> str:
    """A digest of every field we own (secrets included, as a digest only)."""
    # What to remove follows from what was applied before; it is not part of what we want.
    document = {
        "name": want.name,
        "params": {key: value for key, value in want.params.items() if key != "remove_variables"},
        "depends": dict(want.depends),
        "secrets": dict(want.secrets),
    }
    encoded = json.dumps(document, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(encoded.encode()).hexdigest()


def variables_digest(variables: Mapping[str, str | None]) -> str:
    """A digest of variable values (secrets among them), safe to store and compare."""
    encoded = json.dumps(dict(variables), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(encoded.encode()).hexdigest()


def deployment_fingerprint(want: DesiredResource) -> dict[str, Any]:
    """What the observer compares a service's live config against: the variable names we own, a
    digest of their values, and the image. Never the values themselves."""
    return {
        "variable_names": sorted(want.secrets),
        "variables_digest": variables_digest(want.secrets),
        "image": want.params.get("image"),
    }


class Verb(enum.StrEnum):
    NOOP = "noop"
    CREATE = "create"  # nothing was ever created
    ADOPT_OR_CREATE = "adopt_or_create"  # a create may have happened: look up by name first
    UPDATE = "update"
    REPLACE = "replace"  # delete and create again (a value we need was lost)
    OBSERVE = "observe"  # exists; read its status (not ready yet, or a periodic poll)
    DELETE = "delete"
    FIND_AND_DELETE = "find_and_delete"  # a create may have happened: look up, then delete
    FORGET = "forget"  # nothing exists at the provider: drop our row

    @property
    def symbol(self) -> str:
        return {
            Verb.CREATE: "+",
            Verb.ADOPT_OR_CREATE: "+",
            Verb.UPDATE: "~",
            Verb.REPLACE: "-/+",
            Verb.DELETE: "-",
            Verb.FIND_AND_DELETE: "-",
        }.get(self, " ")


@dataclass(frozen=True)
class Action:
    kind: ResourceKind
    verb: Verb
    reason: str


# Kinds whose value is handed out only once by the provider: without it the resource is useless.
SECRET_BEARING: frozenset[ResourceKind] = frozenset({ResourceKind.OPENROUTER_KEY})


def decide(kind: ResourceKind, want: DesiredResource | None, row: ObservedRow | None, *, poll: bool = False) -> Action:
    """What to do with one resource. ``want`` None means the resource should not exist."""
    if want is None:
        if row is None:
            return Action(kind, Verb.NOOP, "not wanted, not present")
        if row.external_id is not None:
            return Action(kind, Verb.DELETE, "no longer wanted")
        if row.intent_at is not None:
            return Action(kind, Verb.FIND_AND_DELETE, "a create was attempted; find it by name and delete it")
        return Action(kind, Verb.FORGET, "never created")
    if row is None or row.external_id is None:
        if row is not None and row.intent_at is not None:
            return Action(kind, Verb.ADOPT_OR_CREATE, "a create was attempted; adopt it by name if it exists")
        return Action(kind, Verb.CREATE, "does not exist")
    if kind in SECRET_BEARING and not row.has_secret:
        return Action(kind, Verb.REPLACE, "its secret value was never recorded (adopted after a crash)")
    if row.drift == "gone":
        return Action(kind, Verb.OBSERVE, "missing from the provider's listing: confirm, then create again")
    if row.drift == "config":
        return Action(kind, Verb.UPDATE, "changed at the provider: bring the fields we own back")
    if row.applied_hash != params_hash(want):
        reason = "adopted; bring owned fields to the spec" if row.applied_hash is None else "spec changed"
        return Action(kind, Verb.UPDATE, reason)
    if row.status != "ready":
        return Action(kind, Verb.OBSERVE, f"waiting for the provider ({row.status})")
    if poll:
        return Action(kind, Verb.OBSERVE, "periodic check for drift")
    return Action(kind, Verb.NOOP, "in sync")


def plan_instance(
    spec: InstanceSpec | None,
    present: bool,
    defaults: ResourceDefaults,
    observed: Mapping[ResourceKind, ObservedRow],
    secrets: Mapping[ResourceKind, str],
) -> list[Action]:
    """The whole plan for one instance as far as it can be known now (for ``reconciler plan``).

    A resource blocked on one not yet created is planned as a create ("known after apply").
    """
    wanted = wanted_kinds(spec) if spec is not None and present else []
    actions: list[Action] = []
    # Teardown first, in reverse dependency order.
    for kind in reversed(CREATE_ORDER):
        if kind not in wanted:
            action = decide(kind, None, observed.get(kind))
            if action.verb is not Verb.NOOP:
                actions.append(action)
    assert spec is not None or not wanted
    for kind in wanted:
        assert spec is not None
        try:
            want: DesiredResource | None = desired_resource(kind, spec, defaults, observed, secrets)
        except Blocked as blocked:
            row = observed.get(kind)
            if row is None or row.external_id is None:
                actions.append(Action(kind, Verb.CREATE, f"does not exist (after: {blocked})"))
            else:
                actions.append(Action(kind, Verb.UPDATE, f"known after apply ({blocked})"))
            continue
        action = decide(kind, want, observed.get(kind))
        if action.verb is not Verb.NOOP:
            actions.append(action)
    return actions
