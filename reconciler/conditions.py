"""Conditions: the instance's state in the vocabulary Kubernetes operators already read.

Two condition types per instance, each ``{status, reason, message, lastTransitionTime,
observedGeneration}``:

* ``Ready``: the instance is usable: every resource exists and the deploy succeeded.
* ``Synced``: the last reconcile applied the current spec without an error.

They are computed here (pure) from a pass's result and written by ``FINISH_CLAIM`` in the same
statement as the phase; that statement keeps the previous ``lastTransitionTime`` when a
condition's status did not change, so the time says since when a row has been stuck.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

# Railway deployment statuses (the 13 values of DeploymentStatus) by what they mean for us.
DEPLOY_READY = frozenset({"SUCCESS", "SLEEPING"})
DEPLOY_FAILED = frozenset({"FAILED", "CRASHED", "REMOVED", "SKIPPED"})
DEPLOY_PROGRESSING = frozenset(
    {"QUEUED", "WAITING", "INITIALIZING", "BUILDING", "DEPLOYING", "NEEDS_APPROVAL", "REMOVING"}
)


@dataclass(frozen=True)
class PassResult:
    """What one reconcile pass concluded, in condition terms."""

    phase: str
    ready_reason: str
    ready_message: str = ""
    error: str | None = None


def conditions(result: PassResult, generation: int, now: datetime | None = None) -> dict[str, Any]:
    at = (now or datetime.now(UTC)).isoformat()
    ready = result.phase == "Ready"
    return {
        "Ready": {
            "status": "True" if ready else "False",
            "reason": result.ready_reason,
            "message": result.ready_message,
            "lastTransitionTime": at,
            "observedGeneration": generation,
        },
        "Synced": {
            "status": "False" if result.error else "True",
            "reason": "ReconcileError" if result.error else "ReconcileSuccess",
            "message": result.error or "",
            "lastTransitionTime": at,
            "observedGeneration": generation,
        },
    }
