"""The handlers of the four built-in services (their definitions: :mod:`desired_state.services.builtin`).

* ``util.delay-echo``: sleeps ``seconds``, reporting progress each second, and echoes ``payload``;
  ``fail: true`` fails it (refunded).
* ``util.echo`` (proxy): forwards its input to ``UTIL_ECHO_BASE_URL`` + ``/echo`` with our job id as
  the ``Idempotency-Key`` and returns the answer. The HTTP layer calls it inside the request
  (:meth:`HandlerRegistry.proxy`); the loop never does, and never re-sends one.
* ``agents.provision``: writes a desired instance (id derived from the job id, owned by the caller)
  through :mod:`desired_state.store`, inside a fenced transaction (a cancelled job writes
  nothing), and completes when the instance reconciler has made it Ready. A configuration error
  (phase Failed) fails it. Idempotent: a re-run finds the same instance. Whatever way a provision
  job ends refunded (failed, cancelled, timed out, its worker lost), its sweep marks the instance
  absent, and the instance finalizer deletes every resource.
* ``agents.destroy`` (free): marks an instance the caller owns absent and completes when every
  resource is gone (the row is deleted by the finalizer).

Both agent handlers use the instance reconciler as it is: they write desired rows and read the
progress columns, nothing more.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Mapping
from typing import Any
from uuid import UUID

import httpx
from psycopg import AsyncConnection
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from desired_state import store
from desired_state.models import SpecError, parse_instance
from desired_state.queries import SELECT_CREATE_ANSWER
from desired_state.services.builtin import (
    DELAY_ECHO,
    DESTROY,
    ECHO,
    PROVISION,
    UTIL_ECHO_BASE_URL,
    provision_instance_id,
)
from desired_state.services.definitions import UpstreamError
from desired_state.services.vocabulary import REFUNDED_STATUSES, JobErrorCode
from desired_state.vocabulary import Phase
from reconciler.jobs.handlers import HandlerRegistry, JobContext, JobFailed

POLL_SECONDS = 0.25
"""How often the agent handlers look at the instance they wait for (a primary-key read)."""

# The instance's progress, read from the reconciler's own columns (no provider call).
SELECT_INSTANCE_PROGRESS = """
SELECT d.present, d.phase, d.generation, d.observed_generation, d.last_error, d.owner_caller_id,
       (SELECT count(*) FROM observed_resources o WHERE o.instance_id = d.instance_id AND o.status = 'ready')
           AS ready_resources,
       (SELECT count(*) FROM observed_resources o WHERE o.instance_id = d.instance_id) AS resources
  FROM desired_instances d WHERE d.instance_id = %(instance_id)s
"""

# Instances provisioned for a caller that are still wanted, with their owners.
SELECT_OWNED_PRESENT = """
SELECT instance_id, owner_caller_id FROM desired_instances WHERE present AND owner_caller_id IS NOT NULL
"""

# Refunded provision jobs of these callers (the sweep derives their instance ids).
SELECT_REFUNDED_PROVISIONS = """
SELECT job_id FROM service_jobs
 WHERE service_id = %(service_id)s AND caller_id = ANY(%(callers)s) AND status = ANY(%(statuses)s)
"""


async def delay_echo(job: JobContext) -> Mapping[str, Any]:
    seconds = float(job.input["seconds"])
    slept = 0.0
    while slept < seconds:
        step = min(1.0, seconds - slept)
        await asyncio.sleep(step)
        slept += step
        await job.progress(slept / seconds, f"slept {math.floor(slept)} s of {seconds:g} s")
    if job.input["fail"]:
        raise JobFailed(JobErrorCode.HANDLER_FAILED, "asked to fail (fail: true); the credits were refunded")
    return {"payload": job.input["payload"], "seconds": seconds}


class EchoUpstream:
    """The ``util.echo`` proxy: one POST to the upstream, inside the caller's request."""

    def __init__(self, client: httpx.AsyncClient, base_url: str | None, timeout: float = 30.0) -> None:
        self._client = client
        self._base_url = base_url.rstrip("/") if base_url else None
        self._timeout = timeout

    async def __call__(self, data: Mapping[str, Any], job_id: UUID) -> Mapping[str, Any]:
        if self._base_url is None:
            raise UpstreamError(
                JobErrorCode.UPSTREAM_NOT_CONFIGURED, f"{UTIL_ECHO_BASE_URL} is not set, so util.echo has no upstream"
            )
        try:
            response = await self._client.post(
                f"{self._base_url}/echo",
                json=dict(data),
                headers={"Idempotency-Key": str(job_id)},
                timeout=self._timeout,
            )
        except httpx.HTTPError as exc:
            raise UpstreamError(
                JobErrorCode.UPSTREAM_UNREACHABLE, f"the upstream did not answer ({type(exc).__name__})"
            ) from None
        if response.status_code in (401, 403):
            raise UpstreamError(JobErrorCode.UPSTREAM_AUTH_MISSING, f"the upstream refused us ({response.status_code})")
        if response.status_code >= 400:
            raise UpstreamError(JobErrorCode.UPSTREAM_FAILED, f"the upstream answered {response.status_code}")
        try:
            answer = response.json()
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            raise UpstreamError(JobErrorCode.UPSTREAM_FAILED, "the upstream's answer is not a JSON object")
        return answer


async def provision(job: JobContext) -> Mapping[str, Any]:
    instance_id = provision_instance_id(job.job_id)
    try:
        spec = parse_instance(
            {"instanceId": instance_id, "name": job.input["name"], "tools": job.input["tools"], "env": job.input["env"]}
        )
    except SpecError as exc:
        raise JobFailed(JobErrorCode.INVALID_INPUT, "; ".join(exc.problems)) from None
    async with job.fenced() as conn:
        created = await store.create(conn, spec, owner=job.caller_id)
    if created.outcome is not store.CreateOutcome.CREATED and created.outcome is not store.CreateOutcome.EXISTS:
        # Being torn down (an earlier run of this job was refunded), or changed behind our back.
        raise JobFailed(JobErrorCode.CONFIGURATION_ERROR, f"instance {instance_id} is {created.outcome.value}")
    reported = -1.0
    while True:
        async with job.pool.connection() as conn:
            row = await _progress(conn, instance_id)
        if row is None or not row["present"]:
            raise JobFailed(JobErrorCode.CONFIGURATION_ERROR, f"instance {instance_id} was deleted")
        if row["phase"] == Phase.READY and row["observed_generation"] == row["generation"]:
            break
        if row["phase"] == Phase.FAILED:
            raise JobFailed(
                JobErrorCode.CONFIGURATION_ERROR, f"the instance cannot be provisioned: {row['last_error'] or 'failed'}"
            )
        share = row["ready_resources"] / max(row["resources"], 1) if row["resources"] else 0.0
        pct = round(0.9 * share, 2)
        if pct != reported:
            await job.progress(pct, f"{row['phase']}: {row['ready_resources']} resources ready")
            reported = pct
        await asyncio.sleep(POLL_SECONDS)
    async with job.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(SELECT_CREATE_ANSWER, {"instance_id": instance_id})
        answer = await cur.fetchone()
    return {
        "instanceId": instance_id,
        "url": answer["url"] if answer else None,
        "services": dict(answer["services"]) if answer else {},
    }


async def tear_down_refunded_provisions(pool: AsyncConnectionPool[AsyncConnection[Any]]) -> int:
    """The provision sweep: a provision job that ended refunded leaves no instance behind."""
    async with pool.connection() as conn:
        owned = await (await conn.execute(SELECT_OWNED_PRESENT)).fetchall()
        if not owned:
            return 0
        cur = await conn.execute(
            SELECT_REFUNDED_PROVISIONS,
            {
                "service_id": PROVISION,
                "callers": sorted({owner for _, owner in owned}),
                "statuses": sorted(status.value for status in REFUNDED_STATUSES),
            },
        )
        refunded = {provision_instance_id(row[0]) for row in await cur.fetchall()}
        leftovers = [instance_id for instance_id, _ in owned if instance_id in refunded]
        if leftovers:
            await store.mark_absent(conn, leftovers)
    return len(leftovers)


async def destroy(job: JobContext) -> Mapping[str, Any]:
    instance_id = str(job.input["instanceId"])
    async with job.fenced() as conn:
        row = await _progress(conn, instance_id)
        if row is None and job.attempt > 1:
            return {"instanceId": instance_id, "destroyed": True}  # an earlier run saw it through
        if row is None or row["owner_caller_id"] != job.caller_id:
            raise JobFailed(JobErrorCode.INVALID_INPUT, "instanceId: no instance of yours has this id")
        await store.mark_absent(conn, [instance_id])
    total = max(1, int(row["resources"]))
    reported = -1.0
    while True:
        async with job.pool.connection() as conn:
            row = await _progress(conn, instance_id)
        if row is None:
            return {"instanceId": instance_id, "destroyed": True}
        pct = round(1 - int(row["resources"]) / total, 2)
        if pct != reported:
            await job.progress(pct, f"{row['resources']} resources left")
            reported = pct
        await asyncio.sleep(POLL_SECONDS)


async def _progress(conn: AsyncConnection[Any], instance_id: str) -> dict[str, Any] | None:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(SELECT_INSTANCE_PROGRESS, {"instance_id": instance_id})
        return await cur.fetchone()


def builtin_handlers(client: httpx.AsyncClient, echo_base_url: str | None) -> HandlerRegistry:
    """The handlers of the built-in services; a test registers its own services' next to them."""
    handlers = HandlerRegistry()
    handlers.register(DELAY_ECHO, delay_echo)
    handlers.register_proxy(ECHO, EchoUpstream(client, echo_base_url))
    handlers.register(PROVISION, provision, sweep=tear_down_refunded_provisions)
    handlers.register(DESTROY, destroy)
    return handlers
