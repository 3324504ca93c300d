"""The SQL store callers write desired state through.

Callers own four columns of ``desired_instances``: ``instance_id``, ``name``, ``spec`` and
``present``. Everything else on the row belongs to the reconciler. A database trigger (migration
0001) turns every change of the caller's columns into a new ``generation``, makes the row due
now and sends ``NOTIFY reconciler_wake``, so a write through this module, through the HTTP API
or through plain SQL wakes the loop the same way.

``put`` is idempotent: writing the same spec again changes nothing (no new generation, no
wake-up). ``mark_absent`` does not delete: the row stays, marked for teardown, until the
reconciler has confirmed every provider resource gone (the finalizer of ARCHITECTURE.md 3.4).

Its statements live in :mod:`desired_state.queries` with the package's others.

Two writes serve the HTTP API, which must never lose a concurrent caller's change:

* ``create`` inserts only when the id is new; an existing row is compared, never overwritten, so
  a repeated create is idempotent and a different spec under the same id is a conflict.
* ``modify`` is a read-modify-write in one short transaction: lock the row, read the spec and its
  generation, apply a pure change, and write it with compare-and-set on the generation. The row
  lock serialises concurrent API writers (no retry storms: eight concurrent ``configure`` calls
  setting different variables all land, in some order); the generation check would also catch a
  writer that did not lock, and the change is then retried on the fresh row.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from psycopg import AsyncConnection
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from pydantic import ValidationError

from desired_state.models import InstanceSpec, describe_validation_error
from desired_state.queries import (
    ADOPT_FOR_TEARDOWN,
    COMPARE_EXISTING,
    INSERT_IF_ABSENT,
    MARK_ABSENT,
    SELECT_ALL,
    SELECT_ONE,
    SELECT_SOME,
    SELECT_SPEC_FOR_CHANGE,
    UPDATE_IF_GENERATION,
    UPSERT_DESIRED,
)
from desired_state.vocabulary import TOOL_CATALOGUE, Phase, Tool, name_space


class PutOutcome(enum.StrEnum):
    CREATED = "created"
    UPDATED = "updated"
    UNCHANGED = "unchanged"


@dataclass(frozen=True)
class PutResult:
    instance_id: str
    outcome: PutOutcome
    generation: int | None


class CreateOutcome(enum.StrEnum):
    CREATED = "created"
    EXISTS = "exists"
    """The same instance id with the same name and spec: nothing written."""
    CONFLICT = "conflict"
    """The instance id exists with a different name or spec: nothing written."""
    DELETING = "deleting"
    """The instance id exists and is marked absent (teardown in progress): nothing written."""


@dataclass(frozen=True)
class CreateResult:
    instance_id: str
    outcome: CreateOutcome
    generation: int


@dataclass(frozen=True)
class ModifyResult:
    spec: InstanceSpec
    """The spec as stored after the change."""
    generation: int
    """The generation that holds the change (unchanged when the change was a no-op)."""
    changed: bool


class InstanceNotFound(LookupError):
    """No desired row with this instance id."""


class InstanceDeleting(Exception):
    """The row is marked absent; its spec can no longer be changed."""


class ConcurrentUpdate(Exception):
    """Other writers kept changing the row; the change was not written."""


class StoredSpecInvalid(Exception):
    """The stored spec (written over plain SQL) is not valid, so it cannot be changed by merging."""


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
        try:
            spec = InstanceSpec.from_row(row["instance_id"], row["name"], row["spec"])
        except ValidationError:
            # Written over SQL (or before a rule existed) and breaking a rule: listed with its id
            # and name only; the reconciler's last_error on the row names the rule.
            spec = InstanceSpec.model_construct(instance_id=row["instance_id"], name=row["name"])
        return cls(
            spec=spec,
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


async def adopt_for_teardown(conn: AsyncConnection[Any], instance_ids: Iterable[str], name_prefix: str) -> list[str]:
    """Import for teardown the instances among ``instance_ids`` that only ``instance_infra`` knows.

    Returns the ids imported; ``mark_absent`` then finds them like any other row.
    """
    async with conn.cursor() as cur:
        await cur.execute(
            ADOPT_FOR_TEARDOWN,
            {
                "ids": list(instance_ids),
                "name_space": name_space(name_prefix),  # derived names, built in bulk here
                "tool_ids": [info.tool.value for info in TOOL_CATALOGUE],
                "tool_kinds": [info.kind for info in TOOL_CATALOGUE],
                "telnyx": Tool.TELNYX.value,
                "deleting": Phase.DELETING.value,
            },
        )
        return [row[0] for row in await cur.fetchall()]


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


async def create(conn: AsyncConnection[Any], spec: InstanceSpec, *, owner: UUID | None = None) -> CreateResult:
    """Insert a new desired instance, or report how the existing one compares (never overwrites).

    ``owner`` is the paying caller of an instance ``agents.provision`` writes.
    """
    params = {
        "instance_id": spec.instance_id,
        "name": spec.name,
        "spec": Jsonb(spec.spec_document()),
        "owner": owner,
    }
    for _ in range(3):  # the row may vanish between the insert and the compare (teardown finished)
        async with conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(INSERT_IF_ABSENT, params)
            inserted = await cur.fetchone()
            if inserted is not None:
                return CreateResult(spec.instance_id, CreateOutcome.CREATED, inserted["generation"])
            await cur.execute(COMPARE_EXISTING, params)
            row = await cur.fetchone()
        if row is None:
            continue
        if not row["present"]:
            outcome = CreateOutcome.DELETING
        else:
            outcome = CreateOutcome.EXISTS if row["same"] else CreateOutcome.CONFLICT
        return CreateResult(spec.instance_id, outcome, row["generation"])
    raise ConcurrentUpdate(spec.instance_id)


async def put_if_generation(conn: AsyncConnection[Any], spec: InstanceSpec, generation: int) -> int | None:
    """Write ``spec`` only if the row is present and still at ``generation``; the new generation or None."""
    params = {
        "instance_id": spec.instance_id,
        "name": spec.name,
        "spec": Jsonb(spec.spec_document()),
        "generation": generation,
    }
    async with conn.cursor() as cur:
        await cur.execute(UPDATE_IF_GENERATION, params)
        row = await cur.fetchone()
    return None if row is None else int(row[0])


async def modify(
    conn: AsyncConnection[Any],
    instance_id: str,
    change: Callable[[InstanceSpec], InstanceSpec],
    *,
    attempts: int = 5,
) -> ModifyResult:
    """Read-modify-write one spec: row lock, then compare-and-set on its generation.

    ``change`` gets the stored spec and returns the wanted one (or raises, which aborts with
    nothing written). Raises :class:`InstanceNotFound`, :class:`InstanceDeleting`,
    :class:`StoredSpecInvalid`, or :class:`ConcurrentUpdate` after ``attempts`` lost races.
    """
    for _ in range(attempts):
        async with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(SELECT_SPEC_FOR_CHANGE, {"instance_id": instance_id})
            row = await cur.fetchone()
            if row is None:
                raise InstanceNotFound(instance_id)
            if not row["present"]:
                raise InstanceDeleting(instance_id)
            try:
                current = InstanceSpec.from_row(instance_id, row["name"], row["spec"])
            except ValidationError as exc:
                raise StoredSpecInvalid("; ".join(describe_validation_error(exc, "spec."))) from None
            wanted = change(current)
            if wanted.instance_id != instance_id:
                raise ValueError("a change must not alter the instance id")
            if wanted == current:
                return ModifyResult(current, row["generation"], changed=False)
            generation = await put_if_generation(conn, wanted, row["generation"])
            if generation is not None:
                return ModifyResult(wanted, generation, changed=True)
    raise ConcurrentUpdate(instance_id)
