"""The SQL store callers write desired state through.

Callers own four columns of ``desired_instances``: ``instance_id``, ``name``, ``spec`` and
``present``. Everything else on the row belongs to the reconciler. A database trigger (migration
0001) turns every change of the caller's columns into a new ``generation``, makes the row due
now and sends ``NOTIFY reconciler_wake``, so a write through this module, through the HTTP API
or through plain SQL wakes the loop the same way.

``put`` is idempotent: writing the same spec again changes nothing (no new generation, no
wake-up). ``mark_absent`` does not delete: the row stays, marked for teardown, until the
reconciler has confirmed every provider resource gone (the finalizer of ARCHITECTURE.md 3.4).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from desired_state.models import InstanceSpec

UPSERT_DESIRED = """
INSERT INTO desired_instances (instance_id, name, spec, present)
VALUES (%(instance_id)s, %(name)s, %(spec)s, TRUE)
ON CONFLICT (instance_id) DO UPDATE
   SET name = EXCLUDED.name, spec = EXCLUDED.spec, present = TRUE
 WHERE (desired_instances.name, desired_instances.spec, desired_instances.present)
       IS DISTINCT FROM (EXCLUDED.name, EXCLUDED.spec, TRUE)
RETURNING (xmax = 0) AS inserted, generation
"""

MARK_ABSENT = """
UPDATE desired_instances SET present = FALSE
 WHERE instance_id = ANY(%(ids)s)
RETURNING instance_id
"""

SELECT_DESIRED_COLUMNS = """
SELECT instance_id, name, spec, present, generation, observed_generation, phase, attempts,
       next_attempt_at, last_error, created_at, updated_at, ready_at
  FROM desired_instances
"""
SELECT_ONE = SELECT_DESIRED_COLUMNS + " WHERE instance_id = %(instance_id)s"
SELECT_ALL = SELECT_DESIRED_COLUMNS + " ORDER BY instance_id"
SELECT_SOME = SELECT_DESIRED_COLUMNS + " WHERE instance_id = ANY(%(ids)s) ORDER BY instance_id"


class PutOutcome(enum.StrEnum):
    CREATED = "created"
    UPDATED = "updated"
    UNCHANGED = "unchanged"


@dataclass(frozen=True)
class PutResult:
    instance_id: str
    outcome: PutOutcome
    generation: int | None


@dataclass(frozen=True)
class DesiredInstance:
    """A desired row as stored, with the reconciler's progress columns."""

    spec: InstanceSpec
    present: bool
    generation: int
    observed_generation: int | None
    phase: str
    attempts: int
    next_attempt_at: datetime
    last_error: str | None
    created_at: datetime
    updated_at: datetime
    ready_at: datetime | None

    @property
    def instance_id(self) -> str:
        return self.spec.instance_id

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> DesiredInstance:
        return cls(
            spec=InstanceSpec.from_row(row["instance_id"], row["name"], row["spec"]),
            present=row["present"],
            generation=row["generation"],
            observed_generation=row["observed_generation"],
            phase=row["phase"],
            attempts=row["attempts"],
            next_attempt_at=row["next_attempt_at"],
            last_error=row["last_error"],
            created_at=row["created_at"],
            updated_at=row["updated_at"],
            ready_at=row["ready_at"],
        )


async def put(conn: AsyncConnection[Any], spec: InstanceSpec) -> PutResult:
    """Write one desired instance; a no-op when nothing changed."""
    params = {"instance_id": spec.instance_id, "name": spec.name, "spec": Jsonb(spec.spec_document())}
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(UPSERT_DESIRED, params)
        row = await cur.fetchone()
    if row is None:
        return PutResult(spec.instance_id, PutOutcome.UNCHANGED, None)
    outcome = PutOutcome.CREATED if row["inserted"] else PutOutcome.UPDATED
    return PutResult(spec.instance_id, outcome, row["generation"])


async def put_many(conn: AsyncConnection[Any], specs: Sequence[InstanceSpec]) -> list[PutResult]:
    """Write several in one transaction: all land or none does."""
    async with conn.transaction():
        return [await put(conn, spec) for spec in specs]


async def mark_absent(conn: AsyncConnection[Any], instance_ids: Iterable[str]) -> list[str]:
    """Ask for teardown; returns the ids that exist (unknown ids are left to the caller to report)."""
    async with conn.cursor() as cur:
        await cur.execute(MARK_ABSENT, {"ids": list(instance_ids)})
        return [row[0] for row in await cur.fetchall()]


async def get(conn: AsyncConnection[Any], instance_id: str) -> DesiredInstance | None:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(SELECT_ONE, {"instance_id": instance_id})
        row = await cur.fetchone()
    return None if row is None else DesiredInstance.from_row(row)


async def list_instances(
    conn: AsyncConnection[Any], instance_ids: Sequence[str] | None = None
) -> list[DesiredInstance]:
    async with conn.cursor(row_factory=dict_row) as cur:
        if instance_ids is None:
            await cur.execute(SELECT_ALL)
        else:
            await cur.execute(SELECT_SOME, {"ids": list(instance_ids)})
        return [DesiredInstance.from_row(row) for row in await cur.fetchall()]
