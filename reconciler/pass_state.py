"""What one reconcile pass works with: the engine's timing, the claim, what it knows, its outcome.

These are the values the engine's parts hand each other (:mod:`reconciler.engine` runs the pass,
:mod:`reconciler.apply` changes resources, :mod:`reconciler.recording` writes what happened,
:mod:`reconciler.failures` schedules the retry). They live here so those parts depend on one small
module rather than on each other; :mod:`reconciler.engine` re-exports the public ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from desired_state.vocabulary import Phase, ReconcileResult
from providers.base import ResourceKind
from reconciler.plan import Action, ObservedRow


@dataclass(frozen=True)
class EngineSettings:
    """Timing of the loop. Every field is a number of seconds unless it says otherwise."""

    lease_seconds: float = 10.0
    """How long a claim stays exclusive without a renewal. The worker renews every claim it holds
    every ``lease_renew_seconds`` while it works, so this only bounds how long a *dead* replica's
    claims wait: another replica takes them over within ``lease_seconds`` plus one tick. Keep it
    well above the renewal interval (a database hiccup longer than the lease loses the claims,
    safely: the fence stops the old worker's writes)."""
    lease_renew_seconds: float = 0.0
    """Seconds between background lease renewals; 0 means a third of ``lease_seconds``."""
    poll_interval: float = 60.0
    """Converged rows are looked at again after this long (drift, deploy status)."""
    not_ready_interval: float = 1.0
    """A resource the provider is still converging (a build) is looked at again after this long."""
    backoff_base: float = 1.0
    """First retry delay after a transient error; doubles per attempt."""
    backoff_cap: float = 300.0
    """Longest retry delay after transient errors."""
    config_error_interval: float = 300.0
    """A configuration error (bad credentials) is retried only this often."""
    changed_share: float = 0.75
    """Share of each claim reserved for new and changed rows; the rest goes to the best-ranked of
    all, so a flood of changes cannot starve polls and a backlog of polls cannot delay new work.
    The share is rounded up, but a claim of two rows or more always keeps one for the others."""
    create_settle_seconds: float = 5.0
    """After a create whose outcome is unknown (a timeout, a 5xx, a dropped connection) the next
    pass looks the resource up by name before creating again; it waits at least this long, so a
    provider whose listings lag behind its writes shows what that create made (no duplicate)."""
    aging_seconds: float = 30.0
    """Claims rank new and changed rows, then retries, then periodic polls; a row of a lower class
    goes first once it has been due this much longer per class (aging, so none starves)."""
    batch_size: int = 32
    """Rows one worker reconciles at once (claimed as slots free up)."""


@dataclass(frozen=True)
class Claim:
    instance_id: str
    token: int
    generation: int
    attempts: int


@dataclass(frozen=True)
class Outcome:
    """What a reconcile pass did, for the CLI, the metrics and the tests."""

    instance_id: str
    kind: str  # converge | teardown
    result: ReconcileResult
    phase: Phase | None = None
    error: str | None = None
    actions: tuple[Action, ...] = ()


@dataclass
class PassState:
    """What we know of one instance's resources while reconciling it."""

    observed: dict[ResourceKind, ObservedRow] = field(default_factory=dict)
    secrets: dict[ResourceKind, str] = field(default_factory=dict)
    actions: list[Action] = field(default_factory=list)
    progress: int = 0  # provider-side changes this pass completed (and recorded)
    created_in_doubt: set[ResourceKind] = field(default_factory=set)  # a create sent, no answer read
