"""Batched observation, drift detection and garbage collection: one listing per provider per cycle.

The per-instance reconcile never polls a converged resource. Instead, once per cycle, this
module asks every driver for what its provider holds under our name prefix (``list_managed`` of
the driver protocol, paginated: a constant number of calls per page, never one per instance; a
kind not listed on its own answers None), and diffs all our rows against it. No provider is a
special case here; what differs is per *kind* (a deployment is compared by its live config and
goes with its service, so it is never "gone" or garbage by itself):

* a resource we recorded that the listing no longer has is flagged ``drift = 'gone'`` (after a
  grace period covering providers whose lists lag behind their writes);
* a field we own that differs (an OpenRouter key's limit or disabled flag, an inbox's display
  name, a deployment's variables or image) is flagged ``drift = 'config'``;
* a deployment whose status moved (a crash, a sleep) has its observed status refreshed, and the
  seed's ``instance_infra.deploy_status`` with it.

Flagging makes the instance due at once; the worker that claims it confirms with a direct read
and corrects it (``reconciler.plan.decide``), so every correction goes through the same fenced,
crash-safe path as a create. The observer itself never calls a mutating provider API.

Garbage collection uses the same inventory: a listed resource whose derived name maps to no
desired row, or that is a second resource under a live row's name, is an orphan *candidate*.
An instance the seed's ``instance_infra`` still records without a desired row (one made by the
system this replaces, in a database upgraded in place) is not ours: its resources are left alone.
Candidates are remembered in ``gc_candidates``; one is deleted (through its driver, 404 = gone)
only after it has been seen orphaned for the whole grace period, so a resource created by an
in-flight create, whose id is not recorded yet, is never collected.

Only one replica observes at a time (a session advisory lock); the others skip the cycle.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from desired_state.vocabulary import DEPLOYMENT_STATES, DeploymentState, name_space
from providers.base import (
    CREATE_ORDER,
    DesiredResource,
    NotFound,
    Observed,
    ProviderError,
    ResourceDriver,
    ResourceKind,
)
from reconciler import queries
from reconciler.metrics import Metrics
from reconciler.plan import variables_digest

log = logging.getLogger(__name__)

OBSERVER_LOCK_KEY = 7_266_524_502

RECORDED_PAGE_ROWS = 1000
"""Recorded rows diffed per query: bounds the observer's memory whatever the fleet's size."""


@dataclass(frozen=True, slots=True)
class Listed:
    """One listed resource, cut down to what the diff and the garbage collector read.

    A cycle holds one per resource each provider lists (40,000 for 10,000 instances with every
    tool), so only the compared fields (``COMPARED``) are kept, not the whole listed object.
    """

    name: str
    attributes: Mapping[str, Any]
    secrets: Mapping[str, str] = field(default_factory=dict, repr=False)
    """Live values compared as a digest (a deployment's variables); empty for other kinds."""

    @classmethod
    def of(cls, kind: ResourceKind, observed: Observed) -> Listed:
        fields = COMPARED.get(kind, ())
        attributes = {f: observed.attributes[f] for f in fields if f in observed.attributes}
        return cls(observed.name, attributes, observed.secrets if kind in COMPARES_SECRETS else {})


COMPARED: dict[ResourceKind, tuple[str, ...]] = {
    ResourceKind.OPENROUTER_KEY: ("limit", "disabled"),
    ResourceKind.AGENTMAIL_INBOX: ("display_name",),
    ResourceKind.RAILWAY_DEPLOYMENT: ("deploy_status", "image", "configured"),
}
"""The listed fields the observer reads, by kind (see ``Observer.drift_of``)."""
COMPARES_SECRETS = frozenset({ResourceKind.RAILWAY_DEPLOYMENT})
"""Kinds whose listed ``secrets`` (live variables) are compared with what was applied."""
COLLECTED_WITH_PARENT = frozenset({ResourceKind.RAILWAY_DEPLOYMENT})
"""Listed kinds that are never garbage on their own: a deployment goes with its service."""


@dataclass
class Inventory:
    """What each provider holds under our prefix, by kind and external id."""

    resources: dict[ResourceKind, dict[str, Listed]] = field(default_factory=dict)
    failed: dict[ResourceKind, str] = field(default_factory=dict)

    def listed(self, kind: ResourceKind) -> bool:
        return kind in self.resources


@dataclass(frozen=True)
class Orphan:
    kind: ResourceKind
    external_id: str
    name: str
    instance_id: str
    why: str
    seen_for_seconds: float = 0.0


@dataclass
class CycleReport:
    listed: dict[str, int] = field(default_factory=dict)
    drift: list[tuple[str, str, str]] = field(default_factory=list)  # (instance, kind, drift)
    status_changes: int = 0
    orphans: list[Orphan] = field(default_factory=list)
    collected: list[Orphan] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)


class Observer:
    """Lists providers, flags drift, collects garbage. Cheap to construct; one per process."""

    def __init__(
        self,
        pool: AsyncConnectionPool[AsyncConnection[Any]],
        drivers: Mapping[ResourceKind, ResourceDriver],
        metrics: Metrics,
        *,
        name_prefix: str,
        list_lag_grace: float = 60.0,
        gc_grace: float = 600.0,
        recorded_page_rows: int = RECORDED_PAGE_ROWS,
    ) -> None:
        self._pool = pool
        self._drivers = drivers
        self._metrics = metrics
        self._prefix = name_space(name_prefix)
        self.list_lag_grace = list_lag_grace
        self.gc_grace = gc_grace
        self.recorded_page_rows = recorded_page_rows

    # -- inventory --------------------------------------------------------------------------------

    async def inventory(self) -> Inventory:
        """One paginated listing per listed kind. A kind whose listing fails is left out of this cycle."""
        inventory = Inventory()
        for kind in CREATE_ORDER:
            driver = self._drivers.get(kind)
            if driver is None:
                continue
            try:
                listing = await driver.list_managed(self._prefix)
            except ProviderError as exc:
                inventory.failed[kind] = str(exc)
                continue
            if listing is not None:  # None: not listed on its own, or not configured
                inventory.resources[kind] = {item.external_id: Listed.of(kind, item) for item in listing}
        return inventory

    # -- observation ------------------------------------------------------------------------------

    async def observe(self, inventory: Inventory | None = None) -> CycleReport:
        """Diff every recorded resource against the inventory; flag drift, refresh statuses."""
        started = time.monotonic()
        inventory = inventory or await self.inventory()
        report = CycleReport(
            listed={k.value: len(v) for k, v in inventory.resources.items()},
            failed={k.value: v for k, v in inventory.failed.items()},
        )
        deployments = inventory.resources.get(ResourceKind.RAILWAY_DEPLOYMENT)
        async with self._pool.connection() as conn:
            async for row in self._recorded(conn):
                kind = ResourceKind(row["kind"])
                if kind is ResourceKind.RAILWAY_DEPLOYMENT and deployments is not None:
                    deployment = deployments.get(row["external_id"])
                    if deployment is not None:
                        report.status_changes += await self._refresh_deployment(conn, row, deployment)
                drift = self.drift_of(kind, row, inventory)
                if drift is not None:
                    await self._flag_and_report(conn, row, kind, drift, report)
        self._metrics.observation_seconds.observe(time.monotonic() - started)
        return report

    async def _recorded(self, conn: AsyncConnection[Any]) -> AsyncIterator[dict[str, Any]]:
        """Every recorded resource of a live instance, a page at a time (keyset order)."""
        after = ("", "")
        while True:
            async with conn.cursor(row_factory=dict_row) as cur:
                await cur.execute(
                    queries.SELECT_RECORDED_PAGE,
                    {"after_instance": after[0], "after_kind": after[1], "limit": self.recorded_page_rows},
                )
                page = await cur.fetchall()
            for row in page:
                yield row
            if len(page) < self.recorded_page_rows:
                return
            after = (page[-1]["instance_id"], page[-1]["kind"])

    def drift_of(self, kind: ResourceKind, row: Mapping[str, Any], inventory: Inventory) -> str | None:
        """What the listing says about one recorded resource: 'gone', 'config' or None."""
        if row["drift"] is not None:
            return None
        if not inventory.listed(kind):
            return None
        if kind is ResourceKind.RAILWAY_DEPLOYMENT:
            # Compared by its live config only: a deployment that is gone went with its service.
            live = inventory.resources[kind].get(row["external_id"])
            drifted = live is not None and _config_drifted(row["attributes"] or {}, live)
            return "config" if drifted else None
        listed = inventory.resources[kind].get(row["external_id"])
        if listed is None:
            # Lists may lag behind writes: only a resource recorded a while ago counts as gone.
            return "gone" if float(row["age_seconds"]) > self.list_lag_grace else None
        applied = row["attributes"] or {}
        if kind is ResourceKind.OPENROUTER_KEY:
            changed = listed.attributes.get("disabled") or _differs(applied, listed.attributes, "limit")
        elif kind is ResourceKind.AGENTMAIL_INBOX:
            changed = _differs(applied, listed.attributes, "display_name")
        else:
            changed = False
        return "config" if changed else None

    async def _flag_and_report(
        self, conn: AsyncConnection[Any], row: Mapping[str, Any], kind: ResourceKind, drift: str, report: CycleReport
    ) -> None:
        if await self._flag(conn, row, kind, drift):
            report.drift.append((row["instance_id"], kind.value, drift))

    async def _flag(self, conn: AsyncConnection[Any], row: Mapping[str, Any], kind: ResourceKind, drift: str) -> bool:
        async with conn.transaction():
            await conn.execute(queries.LOCK_DESIRED, {"instance_id": row["instance_id"]})
            cur = await conn.execute(
                queries.FLAG_DRIFT,
                {
                    "instance_id": row["instance_id"],
                    "kind": kind.value,
                    "external_id": row["external_id"],
                    "drift": drift,
                    "detail": Jsonb({"external_id": row["external_id"]}),
                },
            )
            flagged = await cur.fetchone() is not None
        if not flagged:
            return False
        self._metrics.drift_detected.labels(kind.value, drift).inc()
        self._metrics.resource_mutations.labels(kind.value, "drift").inc()
        log.info("drift detected", extra={"instance_id": row["instance_id"], "kind": kind.value, "drift": drift})
        return True

    async def _refresh_deployment(
        self, conn: AsyncConnection[Any], row: Mapping[str, Any], deployment: Listed
    ) -> int:
        status = deployment.attributes.get("deploy_status")
        recorded = (row["attributes"] or {}).get("deploy_status")
        if status is None or status == recorded:
            return 0
        async with conn.transaction():
            await conn.execute(queries.LOCK_DESIRED, {"instance_id": row["instance_id"]})
            await conn.execute(
                queries.REFRESH_DEPLOY_STATUS,
                {
                    "instance_id": row["instance_id"],
                    "status": status,
                    "ready": DEPLOYMENT_STATES.get(status) is DeploymentState.READY,
                },
            )
        return 1

    # -- garbage collection -----------------------------------------------------------------------

    async def orphans(self, inventory: Inventory) -> list[Orphan]:
        """Listed resources that belong to no desired row, or duplicate a live row's resource."""
        async with self._pool.connection() as conn:
            rows = await (await conn.execute(queries.SELECT_LIVE_NAMES)).fetchall()
            unmanaged = {row[0] for row in await (await conn.execute(queries.SELECT_UNMANAGED)).fetchall()}
        live: set[str] = set()
        recorded: dict[tuple[str, str], str | None] = {}
        for instance_id, kind, external_id in rows:
            live.add(instance_id)
            if kind is not None:
                recorded[(instance_id, kind)] = external_id
        found: list[Orphan] = []
        for kind, items in inventory.resources.items():
            if kind in COLLECTED_WITH_PARENT:
                continue
            for external_id, item in items.items():
                if not item.name.startswith(self._prefix):
                    continue
                instance_id = item.name.removeprefix(self._prefix)
                if instance_id in unmanaged:
                    continue
                if instance_id not in live:
                    found.append(Orphan(kind, external_id, item.name, instance_id, "no desired instance"))
                    continue
                mine = recorded.get((instance_id, kind.value), "absent")
                if mine is not None and mine != external_id:
                    # A second resource under a live instance's name (a create whose record was
                    # lost). With no recorded id yet (None) a create may be in flight: leave it.
                    found.append(Orphan(kind, external_id, item.name, instance_id, "duplicate of a live resource"))
        return found

    async def collect(self, inventory: Inventory | None = None, *, dry_run: bool = False) -> CycleReport:
        """Delete orphans seen for longer than the grace period (``dry_run``: only report them)."""
        async with self._pool.connection() as conn:
            # The database's clock, which stamps last_seen_at: the process's may run ahead of it.
            cycle_started = await _fetch_value(conn, queries.DATABASE_NOW)
        inventory = inventory or await self.inventory()
        report = CycleReport(listed={k.value: len(v) for k, v in inventory.resources.items()})
        found = await self.orphans(inventory)
        async with self._pool.connection() as conn:
            for orphan in found:
                if dry_run:
                    report.orphans.append(orphan)
                    continue
                row = await (
                    await conn.execute(
                        queries.UPSERT_CANDIDATE,
                        {"kind": orphan.kind.value, "external_id": orphan.external_id, "name": orphan.name},
                    )
                ).fetchone()
                seen = float(row[0]) if row else 0.0
                report.orphans.append(
                    Orphan(orphan.kind, orphan.external_id, orphan.name, orphan.instance_id, orphan.why, seen)
                )
            if not dry_run:
                await conn.execute(queries.FORGET_CANDIDATES_NOT_SEEN, {"cycle_started": cycle_started})
        if dry_run:
            return report
        for orphan in report.orphans:
            if orphan.seen_for_seconds >= self.gc_grace and await self._delete_orphan(orphan):
                report.collected.append(orphan)
        return report

    async def _delete_orphan(self, orphan: Orphan) -> bool:
        async with self._pool.connection() as conn:
            # Re-check right before deleting, as the listing may be minutes old: the instance may
            # have been created since, or a worker may have adopted this very resource (a lookup
            # by name finds the oldest), or started a create whose id is not recorded yet.
            if orphan.why == "no desired instance":
                if await (await conn.execute(queries.INSTANCE_KNOWN, {"instance_id": orphan.instance_id})).fetchone():
                    return False
            else:
                params = {"instance_id": orphan.instance_id, "kind": orphan.kind.value}
                recorded = await (await conn.execute(queries.RECORDED_ID, params)).fetchone()
                if recorded is not None and recorded[0] in (None, orphan.external_id):
                    return False
        driver = self._drivers[orphan.kind]
        want = DesiredResource(kind=orphan.kind, instance_id=orphan.instance_id, name=orphan.name)
        outcome = "ok"
        try:
            await driver.delete(orphan.external_id, want)
        except NotFound:
            outcome = "already_gone"
        except ProviderError as exc:
            log.warning("garbage collection of %s failed: %s", orphan.kind.value, exc)
            return False
        async with self._pool.connection() as conn, conn.transaction():
            await conn.execute(queries.DELETE_CANDIDATE, {"kind": orphan.kind.value, "external_id": orphan.external_id})
            await conn.execute(
                queries.GC_EVENT,
                {
                    "instance_id": orphan.instance_id,
                    "kind": orphan.kind.value,
                    "outcome": outcome,
                    "detail": Jsonb({"external_id": orphan.external_id, "why": orphan.why}),
                },
            )
        self._metrics.orphans_collected.labels(orphan.kind.value).inc()
        return True

    # -- one cycle, one replica -------------------------------------------------------------------

    async def cycle(self, *, collect_garbage: bool) -> CycleReport | None:
        """Observe (and collect) if no other replica is doing it now; None when skipped."""
        async with self._pool.connection() as conn:
            locked = await (await conn.execute(queries.ADVISORY_TRY_LOCK, (OBSERVER_LOCK_KEY,))).fetchone()
            if not locked or not locked[0]:
                return None
            try:
                inventory = await self.inventory()
                report = await self.observe(inventory)
                if collect_garbage:
                    collected = await self.collect(inventory)
                    report.orphans, report.collected = collected.orphans, collected.collected
                return report
            finally:
                await conn.execute(queries.ADVISORY_UNLOCK, (OBSERVER_LOCK_KEY,))


def _config_drifted(applied: Mapping[str, Any], live: Listed) -> bool:
    """Do the variables we own (names and values) or the image differ from what we applied?

    Only our own variables count: Railway's and anything added by hand are not ours to remove.
    """
    if not live.attributes.get("configured"):
        return False  # the environment's config has no entry for the service: nothing to compare
    names = applied.get("variable_names")
    if not isinstance(names, list) or "variables_digest" not in applied:
        return False  # applied before fingerprints were recorded: nothing to compare with
    variables = live.secrets
    if variables_digest({name: variables.get(name) for name in names}) != applied["variables_digest"]:
        return True
    image = live.attributes.get("image")
    return bool(applied.get("image")) and image not in (None, applied["image"])


def _differs(applied: Mapping[str, Any], listed: Mapping[str, Any], key: str) -> bool:
    return key in applied and key in listed and applied[key] != listed[key]


async def _fetch_value(conn: AsyncConnection[Any], query: str) -> Any:
    row = await (await conn.execute(query)).fetchone()
    return None if row is None else row[0]
