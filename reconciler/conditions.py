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

from desired_state.vocabulary import Phase


@dataclass(frozen=True)
class PassResult:
    """What one reconcile pass concluded, in condition terms."""

    phase: Phase
    ready_reason: str
    ready_message: str = ""
    error: str | None = None


def conditions(result: PassResult, generation: int, now: datetime | None = None) -> dict[str, Any]:
    at = (now or datetime.now(UTC)).isoformat()
    ready = result.phase == Phase.READY
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
