"""The instance read model: one JSON shape for ``GET /instances/{id}`` and ``reconciler status --json``.

Everything known about an instance, from our own tables (zero provider calls): the spec (env
variable *names* only: values may be secrets), generations, the phase callers see, conditions,
retry state, the URL and deploy status from the seed's ``instance_infra``, every provider
resource with its non-secret attributes, and the most recent events. The HTTP API serves it, the
CLI prints it, and ``docs/api.md`` documents it once. A spec written over plain SQL may be
invalid; it is shown as stored, as far as it can be read.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import dict_row
from pydantic import BaseModel, Field

from desired_state import queries

DEFAULT_EVENTS = 20


class SpecView(BaseModel):
    """The desired spec; env values are never returned (they may be secrets), only their names."""

    tools: list[str]
    envKeys: list[str]
    image: str | None
    openrouterLimit: float | None
    redeploy: int


class ResourceView(BaseModel):
    kind: str
    derivedName: str
    externalId: str | None
    status: str
    attributes: dict[str, Any]
    conditions: dict[str, Any]
    attempts: int
    lastError: str | None
    updatedAt: datetime


class EventView(BaseModel):
    id: int
    at: datetime
    kind: str | None
    action: str
    outcome: str
    detail: dict[str, Any]


class InstanceView(BaseModel):
    instanceId: str
    name: str
    present: bool = Field(description="false: marked absent, being destroyed.")
    spec: SpecView
    generation: int
    observedGeneration: int | None
    phase: str = Field(description="Pending, Provisioning, Ready, Deleting (every absent row) or Failed.")
    conditions: dict[str, Any]
    attempts: int
    nextAttemptAt: datetime
    lastError: str | None
    createdAt: datetime
    updatedAt: datetime
    readyAt: datetime | None
    url: str | None
    deployStatus: str | None
    resources: list[ResourceView]
    events: list[EventView] = Field(description="The most recent first.")


def spec_view(raw: Any) -> SpecView:
    """The stored spec for display; tolerant, since a spec written over SQL may be invalid."""
    spec = raw if isinstance(raw, dict) else {}
    tools = spec.get("tools")
    env = spec.get("env")
    limit = spec.get("openrouterLimit")
    redeploy = spec.get("redeploy")
    image = spec.get("image")
    return SpecView(
        tools=[str(t) for t in tools] if isinstance(tools, list) else [],
        envKeys=sorted(str(k) for k in env) if isinstance(env, dict) else [],
        image=image if isinstance(image, str) else None,
        openrouterLimit=float(limit) if isinstance(limit, int | float) and not isinstance(limit, bool) else None,
        redeploy=redeploy if isinstance(redeploy, int) and not isinstance(redeploy, bool) else 0,
    )


def _resource(r: dict[str, Any]) -> ResourceView:
    return ResourceView(
        kind=r["kind"],
        derivedName=r["derived_name"],
        externalId=r["external_id"],
        status=r["status"],
        attributes=r["attributes"] or {},
        conditions=r["conditions"] or {},
        attempts=r["attempts"],
        lastError=r["last_error"],
        updatedAt=r["updated_at"],
    )


def _event(e: dict[str, Any]) -> EventView:
    return EventView(
        id=e["id"], at=e["at"], kind=e["kind"], action=e["action"], outcome=e["outcome"], detail=e["detail"] or {}
    )


async def read_instances(
    conn: AsyncConnection[Any], instance_ids: Sequence[str] | None = None, *, events: int = DEFAULT_EVENTS
) -> list[InstanceView]:
    """The views of these instances (all with ``None``), in id order; unknown ids are left out."""
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(queries.SELECT_INSTANCES, {"all": instance_ids is None, "ids": list(instance_ids or [])})
        rows = await cur.fetchall()
        ids = [row["instance_id"] for row in rows]
        resources: dict[str, list[ResourceView]] = {}
        recent: dict[str, list[EventView]] = {}
        if ids:
            await cur.execute(queries.SELECT_INSTANCES_RESOURCES, {"ids": ids})
            for r in await cur.fetchall():
                resources.setdefault(r["instance_id"], []).append(_resource(r))
            if events > 0:
                await cur.execute(queries.SELECT_INSTANCES_EVENTS, {"ids": ids, "limit": events})
                for e in await cur.fetchall():
                    recent.setdefault(e["instance_id"], []).append(_event(e))
    return [
        InstanceView(
            instanceId=row["instance_id"],
            name=row["name"],
            present=row["present"],
            spec=spec_view(row["spec"]),
            generation=row["generation"],
            observedGeneration=row["observed_generation"],
            phase=row["phase"],
            conditions=row["conditions"] or {},
            attempts=row["attempts"],
            nextAttemptAt=row["next_attempt_at"],
            lastError=row["last_error"],
            createdAt=row["created_at"],
            updatedAt=row["updated_at"],
            readyAt=row["ready_at"],
            url=row["url"],
            deployStatus=row["deploy_status"],
            resources=resources.get(row["instance_id"], []),
            events=recent.get(row["instance_id"], []),
        )
        for row in rows
    ]


async def read_instance(
    conn: AsyncConnection[Any], instance_id: str, *, events: int = DEFAULT_EVENTS
) -> InstanceView | None:
    """One instance's view, or ``None`` when there is no such desired row."""
    views = await read_instances(conn, [instance_id], events=events)
    return views[0] if views else None
