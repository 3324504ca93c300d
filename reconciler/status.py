"""Read-only views of what the reconciler knows, for ``reconciler status`` and the demo.

Everything here reads our own tables: zero provider calls, cheap enough to run in a loop.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import dict_row
from rich.table import Table

from desired_state import store
from desired_state.vocabulary import shown_phase
from reconciler import queries


@dataclass(frozen=True)
class ResourceStatus:
    kind: str
    external_id: str | None
    status: str
    provider_status: str | None
    attempts: int
    last_error: str | None


@dataclass(frozen=True)
class InstanceStatus:
    instance_id: str
    name: str
    tools: tuple[str, ...]
    present: bool
    phase: str
    generation: int
    observed_generation: int | None
    attempts: int
    next_attempt_at: datetime
    last_error: str | None
    resources: tuple[ResourceStatus, ...] = field(default=())

    def to_json(self) -> dict[str, Any]:
        return {
            "instanceId": self.instance_id,
            "name": self.name,
            "tools": list(self.tools),
            "desired": "present" if self.present else "absent",
            "phase": self.phase,
            "generation": self.generation,
            "observedGeneration": self.observed_generation,
            "attempts": self.attempts,
            "nextAttemptAt": self.next_attempt_at.isoformat(),
            "lastError": self.last_error,
            "resources": [
                {
                    "kind": r.kind,
                    "externalId": r.external_id,
                    "status": r.status,
                    "providerStatus": r.provider_status,
                    "attempts": r.attempts,
                    "lastError": r.last_error,
                }
                for r in self.resources
            ],
        }


async def instance_statuses(
    conn: AsyncConnection[Any], instance_ids: Sequence[str] | None = None
) -> list[InstanceStatus]:
    desired = await store.list_instances(conn, instance_ids)
    resources: dict[str, list[ResourceStatus]] = {}
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(queries.SELECT_OBSERVED_MANY, {"ids": list(instance_ids or []), "all": instance_ids is None})
        for row in await cur.fetchall():
            attributes = row["attributes"] or {}
            resources.setdefault(row["instance_id"], []).append(
                ResourceStatus(
                    kind=row["kind"],
                    external_id=row["external_id"],
                    status=row["status"],
                    provider_status=attributes.get("deploy_status") or attributes.get("provider_status"),
                    attempts=row["attempts"],
                    last_error=row["last_error"],
                )
            )
    return [
        InstanceStatus(
            instance_id=d.instance_id,
            name=d.spec.display_name(),
            tools=tuple(t.value for t in d.spec.tools),
            present=d.present,
            phase=shown_phase(d.phase, d.present),
            generation=d.generation,
            observed_generation=d.observed_generation,
            attempts=d.attempts,
            next_attempt_at=d.next_attempt_at,
            last_error=d.last_error,
            resources=tuple(resources.get(d.instance_id, ())),
        )
        for d in desired
    ]


async def phase_counts(conn: AsyncConnection[Any]) -> dict[str, int]:
    """Instances by phase (absent rows count as Deleting)."""
    counts: dict[str, int] = {}
    for phase, present, count in await (await conn.execute(queries.COUNT_BY_PHASE)).fetchall():
        key = shown_phase(phase, present)
        counts[key] = counts.get(key, 0) + count
    return counts


def status_table(rows: Sequence[InstanceStatus]) -> Table:
    """The table ``reconciler status`` and the demo print: one line per instance."""
    table = Table(title=f"{len(rows)} instance(s)")
    for column in ("instance", "tools", "phase", "gen", "resources", "deploy", "last error"):
        table.add_column(column, overflow="fold")
    for row in rows:
        ready = sum(r.status == "ready" for r in row.resources)
        deploy = next((r.provider_status for r in row.resources if r.kind == "railway_deployment"), None)
        table.add_row(
            row.instance_id,
            ",".join(row.tools) or "-",
            row.phase,
            f"{row.observed_generation or 0}/{row.generation}",
            f"{ready}/{len(row.resources)} ready",
            deploy or "-",
            row.last_error or "",
        )
    return table
