"""The row vocabulary: every term the callers' side and the reconciler share, defined once.

A desired-instance row is written by callers (``desired_state/``) and converged by the loop
(``reconciler/``). Both sides speak about it in the same words: its phases, the tools it may ask
for and what each tool becomes at a provider, the prefix of the names derived from its id, which
Railway deployment statuses count as ready, and the results a reconcile pass reports. Those words
live here and nowhere else. The module sits on the callers' side because the reconciler may
import ``desired_state`` and not the reverse (ARCHITECTURE.md section 2); it imports nothing of
ours, so anything may import it.

What is *not* here: the providers' own raw values (a Railway ``DeploymentStatus`` string, an
HTTP status) stay in ``providers/``; the reconciler maps them onto these terms.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final

DEFAULT_PREFIX: Final = "convos-agent"
"""Derived provider names are ``<prefix>-<instance_id>`` (ARCHITECTURE.md section 3.3)."""


def derived_name(prefix: str, instance_id: str) -> str:
    """The provider-side name of an instance's resources (SQL that builds it in bulk says so)."""
    return f"{name_space(prefix)}{instance_id}"


def name_space(prefix: str) -> str:
    """What every derived name under ``prefix`` starts with (listings filter and strip it)."""
    return f"{prefix}-"


class Phase(enum.StrEnum):
    """Where an instance stands, as callers read it (the seed's ``status`` values)."""

    PENDING = "Pending"
    PROVISIONING = "Provisioning"
    READY = "Ready"
    DELETING = "Deleting"
    FAILED = "Failed"


PHASES: Final[tuple[Phase, ...]] = tuple(Phase)


def shown_phase(phase: str, present: bool) -> Phase:
    """The phase a caller sees: a row marked absent shows as Deleting until it is gone.

    The stored phase of an absent row may still say Ready or Failed (the finalizer has not run
    yet); callers asked for it to go away, so that is what they are told.
    """
    return Phase(phase) if present else Phase.DELETING


SHOWN_PHASE_SQL: Final = "CASE WHEN {present} THEN {phase} ELSE 'Deleting' END"
""":func:`shown_phase` in SQL, for statements that filter or sort on it; format it with column
names only (``SHOWN_PHASE_SQL.format(present="d.present", phase="d.phase")``), never with input."""


class Tool(enum.StrEnum):
    """The per-instance tools the pool can ask for (the seed registry's ids)."""

    OPENROUTER = "openrouter"
    AGENTMAIL = "agentmail"
    TELNYX = "telnyx"


@dataclass(frozen=True)
class ToolInfo:
    """One entry of the tool catalogue: what a tool is to callers and to the reconciler."""

    tool: Tool
    name: str
    """Display name in the seed's ``GET /registry``."""
    mode: str
    """The seed registry's ``mode`` (how the tool is provisioned)."""
    env_keys: tuple[str, ...]
    """Variables the tool hands to the instance's runtime (the seed registry's ``envKeys``)."""
    kind: str
    """The resource kind the reconciler records for it (a ``providers.base.ResourceKind`` value)."""


TOOL_CATALOGUE: Final[tuple[ToolInfo, ...]] = (
    ToolInfo(Tool.OPENROUTER, "OpenRouter", "per-instance-key", ("OPENROUTER_API_KEY",), "openrouter_key"),
    ToolInfo(Tool.AGENTMAIL, "AgentMail", "per-instance-inbox", ("AGENTMAIL_INBOX_ID",), "agentmail_inbox"),
    ToolInfo(
        Tool.TELNYX,
        "Telnyx",
        "per-instance-phone",
        ("TELNYX_PHONE_NUMBER", "TELNYX_MESSAGING_PROFILE_ID"),
        "telnyx_number",
    ),
)
TOOLS: Final[dict[Tool, ToolInfo]] = {info.tool: info for info in TOOL_CATALOGUE}

INSTANCE_ID_ENV: Final = "INSTANCE_ID"
"""The variable that tells an instance's runtime its own id."""
REDEPLOY_ENV: Final = "RECONCILER_REDEPLOY"
"""The variable carrying the spec's ``redeploy`` count: changing a variable is what makes Railway
deploy again."""

RESERVED_ENV_KEYS: Final[frozenset[str]] = frozenset(
    key for info in TOOL_CATALOGUE for key in info.env_keys
) | {INSTANCE_ID_ENV, REDEPLOY_ENV}
"""Variables the reconciler sets itself; a caller's ``env`` may not set them (nor may a row
written over SQL: migrations/0005_input_rules.sql names them too, and a test keeps both equal)."""


class DeploymentState(enum.StrEnum):
    """What a Railway deployment status means for an instance."""

    READY = "ready"
    FAILED = "failed"
    PROGRESSING = "progressing"


# The 13 values of Railway's DeploymentStatus (specs/railway.schema.graphql), by meaning. A
# sleeping service (serverless, idle) is deployed and wakes on the next request: ready.
DEPLOYMENT_STATES: Final[dict[str, DeploymentState]] = {
    "SUCCESS": DeploymentState.READY,
    "SLEEPING": DeploymentState.READY,
    "FAILED": DeploymentState.FAILED,
    "CRASHED": DeploymentState.FAILED,
    "REMOVED": DeploymentState.FAILED,
    "SKIPPED": DeploymentState.FAILED,
    "QUEUED": DeploymentState.PROGRESSING,
    "WAITING": DeploymentState.PROGRESSING,
    "INITIALIZING": DeploymentState.PROGRESSING,
    "BUILDING": DeploymentState.PROGRESSING,
    "DEPLOYING": DeploymentState.PROGRESSING,
    "NEEDS_APPROVAL": DeploymentState.PROGRESSING,
    "REMOVING": DeploymentState.PROGRESSING,
}


class ReconcileResult(enum.StrEnum):
    """How one reconcile pass ended (the ``result`` label of ``reconciler_reconcile_total``)."""

    DONE = "done"
    """Converged: requeue at the poll interval."""
    REQUEUE = "requeue"
    """Progressing (for example a deploy in flight): look again soon."""
    RETRY = "retry"
    """A provider error: retry with durable backoff."""
    THROTTLED = "throttled"
    """A 429 or a shared rate limit: a deferral until Retry-After, not an error."""
    TERMINAL = "terminal"
    """A configuration error: needs a human, retried only slowly."""
    LEASE_LOST = "lease_lost"
    """Another claim owns the row now; this pass wrote nothing more."""
    GONE = "gone"
    """The row was deleted (teardown finished, or it vanished under us)."""
    ERROR = "error"
    """An unexpected error (a bug): recorded on the row with backoff."""


class CallOutcome(enum.StrEnum):
    """How one provider call ended (the ``outcome`` label of the provider-call metrics).

    Providers raise their own errors (``providers.base``); the reconciler maps each error class
    onto one of these in one place (``reconciler.metrics.call_outcome``).
    """

    OK = "ok"
    TRANSIENT = "transient"
    THROTTLED = "throttled"
    NOT_FOUND = "not_found"
    CONFLICT = "conflict"
    CONFIG_ERROR = "config_error"


class NotConvergedReason(enum.StrEnum):
    """Why a row is not converged (the ``reason`` label of ``reconciler_not_converged``)."""

    PROVISIONING = "provisioning"
    RETRYING = "retrying"
    THROTTLED = "throttled"
    FAILED = "failed"
    DELETING = "deleting"


class RailwayKind(enum.StrEnum):
    """The Railway resources every instance has (values of ``providers.base.ResourceKind``), for
    the callers' side, which may not import ``providers``; the tools' kinds are in the catalogue."""

    SERVICE = "railway_service"
    VOLUME = "railway_volume"
    DOMAIN = "railway_domain"
    DEPLOYMENT = "railway_deployment"
