"""Every write of a reconcile pass: observed rows, events, the seed's tables, the claim's release.

Claims, leases and fences are :mod:`reconciler.claims` (one mechanism for instances and jobs):
the lease is short and the worker renews it in the background for as long as the pass runs.
Every write here opens with :data:`~reconciler.queries.CHECK_FENCE` (:meth:`Recorder.fenced`): it
locks the desired row and checks that our claim is still the latest (the token). A worker whose
lease expired and whose row was claimed again gets :class:`~reconciler.claims.LeaseLost` and stops
without writing; :meth:`Recorder.heartbeat` runs the same check right before an update or a
replace, which have no row to write first.

What the pass learns is written twice: to our ``observed_resources`` rows (with an event per
provider-side change, for ``reconciler why`` and the destroy answer) and, once the service exists,
to the seed's ``instance_infra``/``instance_services`` rows the pool reads (:meth:`Recorder.publish`).
:meth:`Recorder.finish` releases the claim in the statement that schedules the next pass and writes
phase and conditions.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from desired_state.models import InstanceSpec
from desired_state.vocabulary import DEPLOYMENT_STATES, TOOLS, DeploymentState, Tool
from providers.base import DesiredResource, Observed, ResourceKind
from reconciler import queries
from reconciler.claims import LeaseLost, Leases
from reconciler.conditions import PassResult, conditions
from reconciler.metrics import Metrics
from reconciler.pass_state import Claim, PassState
from reconciler.plan import TOOL_KINDS, ObservedRow, ResourceDefaults, deployment_fingerprint
from reconciler.secrets_box import SecretBox


class Recorder:
    """Writes what a pass learns and does, each write fenced by the pass's claim."""

    def __init__(
        self,
        pool: AsyncConnectionPool[AsyncConnection[Any]],
        leases: Leases,
        secrets: SecretBox,
        metrics: Metrics,
        defaults: ResourceDefaults,
    ) -> None:
        self._pool = pool
        self._leases = leases
        self._secrets = secrets
        self._metrics = metrics
        self._defaults = defaults

    # -- reading ----------------------------------------------------------------------------------

    async def load(self, instance_id: str) -> tuple[dict[str, Any] | None, PassState]:
        """The desired row (None when gone) and our observed rows, secrets opened."""
        state = PassState()
        async with self._pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(queries.SELECT_DESIRED_FOR_RECONCILE, {"instance_id": instance_id})
            desired = await cur.fetchone()
            await cur.execute(queries.SELECT_OBSERVED, {"instance_id": instance_id})
            for row in await cur.fetchall():
                kind = ResourceKind(row["kind"])
                if row["secret"] is not None:
                    state.secrets[kind] = self._secrets.open_(row["secret"])
                state.observed[kind] = ObservedRow.from_row(row)
        return desired, state

    # -- fencing ----------------------------------------------------------------------------------

    @asynccontextmanager
    async def fenced(self, claim: Claim) -> AsyncIterator[AsyncConnection[Any]]:
        """A transaction that only commits if our claim is still the latest."""
        async with self._pool.connection() as conn, conn.transaction():
            await self._leases.check_fence(conn, claim.instance_id, claim.token)
            yield conn

    async def heartbeat(self, claim: Claim) -> None:
        """Check the fence (and extend the lease) right before a mutating provider call.

        Creates and deletes write a row first, which does the same; an update or a replace has
        nothing to write before it, and a pass whose lease ran out during slow calls before must
        not change a resource a newer claim now owns.
        """
        async with self.fenced(claim):
            pass

    # -- resources --------------------------------------------------------------------------------

    async def record_intent(self, claim: Claim, want: DesiredResource) -> None:
        """Commit the intent to create (status 'creating', intent_at) before the provider call."""
        async with self.fenced(claim) as conn:
            await conn.execute(
                queries.RECORD_INTENT,
                {
                    "instance_id": want.instance_id,
                    "kind": want.kind.value,
                    "derived_name": want.name,
                    "token": claim.token,
                },
            )

    async def mark_deleting(self, claim: Claim, kind: ResourceKind) -> None:
        async with self.fenced(claim) as conn:
            await conn.execute(
                queries.MARK_RESOURCE_DELETING,
                {"instance_id": claim.instance_id, "kind": kind.value, "token": claim.token},
            )

    async def record(
        self,
        claim: Claim,
        want: DesiredResource,
        found: Observed,
        state: PassState,
        *,
        applied_hash: str | None,
        action: str | None,
    ) -> None:
        """Record what the provider answered for ``want``; ``action`` (if any) is logged as an event."""
        ready = found.ready
        if want.kind is ResourceKind.RAILWAY_DEPLOYMENT:
            # The driver passes Railway's raw status on; the vocabulary says what it means.
            ready = DEPLOYMENT_STATES.get(found.status) is DeploymentState.READY
        status = "ready" if ready else "creating"
        attributes = dict(found.attributes)
        attributes.setdefault("provider_status", found.status)
        if want.kind is ResourceKind.RAILWAY_DEPLOYMENT:
            attributes.update(deployment_fingerprint(want))
        async with self.fenced(claim) as conn:
            await conn.execute(
                queries.RECORD_OBSERVED,
                {
                    "instance_id": want.instance_id,
                    "kind": want.kind.value,
                    "derived_name": want.name,
                    "external_id": found.external_id,
                    "status": status,
                    "attributes": Jsonb(attributes),
                    "secret": None if found.secret is None else self._secrets.seal(found.secret),
                    "applied_hash": applied_hash,
                    "token": claim.token,
                },
            )
            if action is not None:
                await event(conn, claim, want.kind, action, "ok", {"external_id": found.external_id})
        if action is not None:
            self._metrics.resource_mutations.labels(want.kind.value, action).inc()
            state.progress += 1
        if found.secret is not None:
            state.secrets[want.kind] = found.secret
        previous = state.observed.get(want.kind)
        state.observed[want.kind] = ObservedRow(
            kind=want.kind,
            derived_name=want.name,
            external_id=found.external_id,
            status=status,
            attributes=attributes,
            has_secret=want.kind in state.secrets,
            applied_hash=applied_hash,
            intent_at=previous.intent_at if previous else None,
        )

    async def forget(
        self,
        claim: Claim,
        kind: ResourceKind,
        state: PassState,
        *,
        action: str,
        outcome: str,
        external_id: str | None = None,
    ) -> None:
        """Drop our row of ``kind``; ``external_id`` names what was acted on (default: the row's)."""
        row = state.observed.get(kind)
        async with self.fenced(claim) as conn:
            await conn.execute(queries.FORGET_RESOURCE, {"instance_id": claim.instance_id, "kind": kind.value})
            if row is not None and (row.external_id is not None or row.intent_at is not None):
                acted_on = external_id if external_id is not None else row.external_id
                await event(conn, claim, kind, action, outcome, {"external_id": acted_on})
        if row is not None and row.external_id is not None:
            self._metrics.resource_mutations.labels(kind.value, action).inc()
            state.progress += 1
        state.observed.pop(kind, None)
        state.secrets.pop(kind, None)

    async def clear_intent(self, claim: Claim, kind: ResourceKind, state: PassState) -> None:
        """Record that a create of ``kind`` made nothing (so teardown reports nothing destroyed)."""
        async with self.fenced(claim) as conn:
            await conn.execute(queries.CLEAR_INTENT, {"instance_id": claim.instance_id, "kind": kind.value})
        state.created_in_doubt.discard(kind)
        row = state.observed.get(kind)
        if row is not None and row.external_id is None:
            state.observed[kind] = replace(row, intent_at=None, status="pending")

    async def record_error(self, claim: Claim, kind: ResourceKind, result: str, message: str, delay: float) -> None:
        """Put a provider's error on the resource's row (and the event log)."""
        async with self.fenced(claim) as conn:
            await conn.execute(
                queries.RECORD_RESOURCE_ERROR,
                {
                    "instance_id": claim.instance_id,
                    "kind": kind.value,
                    "error": message,
                    "delay": delay,
                    "token": claim.token,
                },
            )
            await event(conn, claim, kind, "error", result, {"error": message})

    # -- the instance -----------------------------------------------------------------------------

    async def publish(self, claim: Claim, spec: InstanceSpec, state: PassState) -> None:
        """Keep the seed's ``instance_infra``/``instance_services`` rows current for the pool."""
        observed = state.observed
        service = observed.get(ResourceKind.RAILWAY_SERVICE)
        if service is None or service.external_id is None:
            return
        domain = observed.get(ResourceKind.RAILWAY_DOMAIN)
        volume = observed.get(ResourceKind.RAILWAY_VOLUME)
        deployment = observed.get(ResourceKind.RAILWAY_DEPLOYMENT)
        host = domain.attributes.get("domain") if domain else None
        infra = {
            "instance_id": spec.instance_id,
            "service_id": service.external_id,
            "env_id": service.attributes.get("environment_id") or "unknown",
            "project_id": service.attributes.get("project_id"),
            "url": f"https://{host}" if host else None,
            "deploy_status": deployment.attributes.get("deploy_status") if deployment else None,
            "image": (spec.image or self._defaults.runtime_image) if deployment else None,
            "volume_id": volume.external_id if volume else None,
        }
        published: list[str] = []
        async with self.fenced(claim) as conn:
            await conn.execute(queries.UPSERT_INSTANCE_INFRA, infra)
            for tool in spec.tools:
                row = observed.get(TOOL_KINDS[tool])
                if row is None or row.external_id is None:
                    continue
                await conn.execute(queries.UPSERT_INSTANCE_SERVICE, service_row(spec, tool, row, state))
                published.append(tool.value)
            await conn.execute(
                queries.DELETE_INSTANCE_SERVICES_EXCEPT, {"instance_id": spec.instance_id, "keep": published}
            )

    async def delete_instance(self, claim: Claim) -> bool:
        """Let the desired row go (the finalizer); False when it is wanted again meanwhile."""
        async with self.fenced(claim) as conn:
            # The published record points at deleted resources either way.
            await conn.execute(queries.DELETE_INSTANCE_INFRA, {"instance_id": claim.instance_id})
            cur = await conn.execute(queries.DELETE_DESIRED, {"instance_id": claim.instance_id, "token": claim.token})
            deleted = await cur.fetchone() is not None
            if deleted:
                await event(conn, claim, None, "delete_instance", "ok", {})
        return deleted

    async def finish(
        self,
        claim: Claim,
        result: PassResult,
        *,
        delay: float,
        observed: bool = False,
        attempts: int = 0,
    ) -> None:
        """Release the claim, schedule the next pass and write phase and conditions."""
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                queries.FINISH_CLAIM,
                {
                    "instance_id": claim.instance_id,
                    "token": claim.token,
                    "generation": claim.generation,
                    "delay": delay,
                    "attempts": attempts,
                    "error": result.error,
                    "phase": result.phase,
                    "observed_generation": claim.generation if observed else None,
                    "conditions": Jsonb(conditions(result, claim.generation)),
                },
            )
            row = await cur.fetchone()
        if row is None:
            raise LeaseLost(claim.instance_id)
        became_ready, age_seconds = row
        if became_ready and claim.generation == 1:
            self._metrics.time_to_ready_seconds.observe(float(age_seconds))


async def event(
    conn: AsyncConnection[Any],
    claim: Claim,
    kind: ResourceKind | None,
    action: str,
    outcome: str,
    detail: dict[str, Any],
) -> None:
    await conn.execute(
        queries.INSERT_EVENT,
        {
            "instance_id": claim.instance_id,
            "kind": kind.value if kind else None,
            "action": action,
            "outcome": outcome,
            "detail": Jsonb(detail),
            "token": claim.token,
        },
    )


def service_row(spec: InstanceSpec, tool: Tool, row: ObservedRow, state: PassState) -> dict[str, Any]:
    """One ``instance_services`` row with the seed's values for this tool."""
    assert row.external_id is not None
    env_key = TOOLS[tool].env_keys[0]
    if tool is Tool.OPENROUTER:
        return {
            "instance_id": spec.instance_id,
            "tool_id": tool.value,
            "resource_id": row.external_id,
            "meta": Jsonb({"limit": row.attributes.get("limit")}),
            "env_key": env_key,
            "env_value": state.secrets.get(ResourceKind.OPENROUTER_KEY),
        }
    if tool is Tool.AGENTMAIL:
        return {
            "instance_id": spec.instance_id,
            "tool_id": tool.value,
            "resource_id": row.external_id,
            "meta": Jsonb({}),
            "env_key": env_key,
            "env_value": row.external_id,
        }
    number = str(row.attributes.get("phone_number") or row.external_id)
    return {
        "instance_id": spec.instance_id,
        "tool_id": tool.value,
        "resource_id": number,
        "meta": Jsonb(
            {
                "messagingProfileId": row.attributes.get("messaging_profile_id"),
                "phoneNumberId": row.external_id,
            }
        ),
        "env_key": env_key,
        "env_value": number,
    }
