"""What operators ask: "what would you do?" (``plan``) and "why is this row stuck?" (``why``).

Both are read-only. ``plan`` lists each provider once (the observer's inventory), marks in memory
what the observer would flag as drift, and runs the same pure :func:`reconciler.plan.plan_instance`
the engine uses, so the plan is what the next passes will do, not a separate guess. It prints in
Terraform's vocabulary (``+`` create, ``~`` update, ``-`` destroy, ``-/+`` replace) and ends with
``Plan: N to add, M to change, K to destroy.``
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import dict_row
from pydantic import ValidationError

from desired_state.models import InstanceSpec, describe_validation_error
from providers.base import ResourceKind
from reconciler import queries
from reconciler.observe import Inventory, Observer, Orphan
from reconciler.plan import Action, ObservedRow, ResourceDefaults, Verb, plan_instance
from reconciler.secrets_box import SecretBox


@dataclass
class InstancePlan:
    instance_id: str
    generation: int
    actions: list[Action]
    drift: list[tuple[ResourceKind, str]] = field(default_factory=list)
    error: str | None = None


@dataclass
class Plan:
    instances: list[InstancePlan]
    orphans: list[Orphan]
    unlisted: dict[str, str]

    def counts(self) -> tuple[int, int, int]:
        add = change = destroy = 0
        for instance in self.instances:
            for action in instance.actions:
                if action.verb in (Verb.CREATE, Verb.ADOPT_OR_CREATE):
                    add += 1
                elif action.verb in (Verb.UPDATE, Verb.OBSERVE):
                    change += 1
                elif action.verb in (Verb.DELETE, Verb.FIND_AND_DELETE):
                    destroy += 1
                elif action.verb is Verb.REPLACE:
                    add += 1
                    destroy += 1
        return add, change, destroy + len(self.orphans)

    @property
    def has_changes(self) -> bool:
        return any(self.counts())


async def build_plan(
    conn: AsyncConnection[Any],
    observer: Observer,
    defaults: ResourceDefaults,
    instance_ids: Sequence[str] | None = None,
    *,
    secrets: SecretBox,
) -> Plan:
    inventory = await observer.inventory()
    params = {"ids": list(instance_ids or []), "all": instance_ids is None}
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(queries.SELECT_DESIRED_ALL, params)
        desired = await cur.fetchall()
        await cur.execute(queries.SELECT_OBSERVED_FOR_PLAN, params)
        observed_rows = await cur.fetchall()
    by_instance: dict[str, list[dict[str, Any]]] = {}
    for row in observed_rows:
        by_instance.setdefault(row["instance_id"], []).append(row)

    plans: list[InstancePlan] = []
    for row in desired:
        observed, drift = _observed_with_drift(observer, inventory, by_instance.get(row["instance_id"], []))
        try:
            spec: InstanceSpec | None = InstanceSpec.from_row(row["instance_id"], row["name"], row["spec"])
        except ValidationError as exc:
            problems = "; ".join(describe_validation_error(exc, "spec."))
            plans.append(InstancePlan(row["instance_id"], row["generation"], [], error=f"invalid spec: {problems}"))
            continue
        # Secret values take part in the deployment's digest (never printed): the same comparison
        # the engine makes.
        rows = by_instance.get(row["instance_id"], [])
        values = {ResourceKind(r["kind"]): secrets.open_(r["secret"]) for r in rows if r["secret"]}
        actions = plan_instance(spec, row["present"], defaults, observed, values)
        plans.append(InstancePlan(row["instance_id"], row["generation"], actions, drift))
    orphans = await observer.orphans(inventory) if instance_ids is None else []
    return Plan(plans, orphans, {k.value: v for k, v in inventory.failed.items()})


def _observed_with_drift(
    observer: Observer, inventory: Inventory, rows: list[dict[str, Any]]
) -> tuple[dict[ResourceKind, ObservedRow], list[tuple[ResourceKind, str]]]:
    observed: dict[ResourceKind, ObservedRow] = {}
    drift: list[tuple[ResourceKind, str]] = []
    for row in rows:
        kind = ResourceKind(row["kind"])
        found = row["drift"]
        if found is None and row["external_id"] is not None:
            found = observer.drift_of(kind, row, inventory)  # what the next cycle would flag
        observed[kind] = ObservedRow.from_row(row)
        if found is not None:
            observed[kind] = replace(observed[kind], drift=found)
            drift.append((kind, found))
    return observed, drift


def render_plan(plan: Plan) -> list[str]:
    lines: list[str] = []
    changed = [p for p in plan.instances if p.actions or p.error]
    if changed:
        lines.append("Reconciler will perform the following actions:")
    for instance in changed:
        lines.append("")
        lines.append(f"  # {instance.instance_id} (generation {instance.generation})")
        if instance.error:
            lines.append(f"  ! {instance.error}")
        for action in instance.actions:
            lines.append(f"  {action.verb.symbol:>3} {action.kind.value:<20} {action.reason}")
    drifted = [(p.instance_id, kind, what) for p in plan.instances for kind, what in p.drift]
    if drifted:
        lines += ["", "Drift (changed outside the reconciler; the actions above correct it):"]
        lines += [f"  ~ {iid} {kind.value}: {_DRIFT_WORDS[what]}" for iid, kind, what in drifted]
    if plan.orphans:
        lines += ["", "Orphans (garbage collection deletes them once past the grace period):"]
        lines += [f"  - {o.kind.value:<20} {o.external_id} ({o.name}: {o.why})" for o in plan.orphans]
    for provider, error in plan.unlisted.items():
        lines += ["", f"Warning: could not list {provider}: {error}"]
    add, change, destroy = plan.counts()
    if not plan.has_changes:
        lines += ["", "No changes. Providers match the desired state."]
    else:
        lines += ["", f"Plan: {add} to add, {change} to change, {destroy} to destroy."]
    return lines


_DRIFT_WORDS = {
    "gone": "missing from the provider (deleted out of band)",
    "config": "fields we own differ from what we applied",
}


async def why(conn: AsyncConnection[Any], instance_id: str, events: int = 10) -> list[str] | None:
    """A human explanation of one instance's state; None if it does not exist."""
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(queries.SELECT_WHY, {"instance_id": instance_id})
        row = await cur.fetchone()
        if row is None:
            return None
        await cur.execute(queries.SELECT_OBSERVED, {"instance_id": instance_id})
        resources = await cur.fetchall()
        await cur.execute(queries.SELECT_RECENT_EVENTS, {"instance_id": instance_id, "limit": events})
        recent = await cur.fetchall()
    desired = "present" if row["present"] else "absent (tearing down)"
    lines = [
        f"{instance_id}: phase {row['phase']}, desired {desired}, "
        f"generation {row['generation']} (observed {row['observed_generation'] or 0})",
    ]
    for name, condition in sorted((row["conditions"] or {}).items()):
        lines.append(
            f"  {name}={condition.get('status')} ({condition.get('reason')}) since "
            f"{condition.get('lastTransitionTime')}: {condition.get('message') or '-'}"
        )
    if row["last_error"]:
        lines.append(f"  last error: {row['last_error']}")
    lines.append(f"  attempts: {row['attempts']}; next attempt in {float(row['next_in_seconds']):.1f}s")
    if row["lease_owner"]:
        lines.append(f"  claimed by {row['lease_owner']} until {row['lease_expires_at']}")
    lines.append("  resources:")
    if not resources:
        lines.append("    (none yet)")
    for resource in sorted(resources, key=lambda r: list(ResourceKind).index(ResourceKind(r["kind"]))):
        extra = f" drift={resource['drift']}" if resource["drift"] else ""
        error = f" error: {resource['last_error']}" if resource["last_error"] else ""
        lines.append(
            f"    {resource['kind']:<20} {resource['status']:<9} {resource['external_id'] or '-'}{extra}{error}"
        )
    lines.append("  recent events (newest first):")
    for event in recent:
        lines.append(
            f"    {event['at']:%Y-%m-%d %H:%M:%S} {event['kind'] or 'instance':<20} {event['action']} "
            f"{event['outcome']}"
        )
    return lines
