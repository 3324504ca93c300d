"""The reconcile of one instance: claim, observe, plan, apply, record. Linear, on purpose.

A worker claims due rows (``FOR UPDATE SKIP LOCKED``, a lease, a fencing token bumped per
claim) and reconciles each one. Reconciling reads the desired row and our observed rows, then
walks the instance's resources in dependency order, asking the pure :func:`reconciler.plan.decide`
what to do with each, and doing it through the resource's driver.

Crash safety (ARCHITECTURE.md section 3.3) comes from the order of writes around every create::

    commit intent (status 'creating', intent_at)  ->  provider create  ->  commit external id

A process killed between the first commit and the second leaves an intent and no id; the next
claim sees it and looks the resource up by its derived name before creating (``ADOPT_OR_CREATE``),
so there is never a duplicate. A kill before the first commit leaves nothing at the provider. A
create that failed without a clear answer (a timeout, a 5xx) may have landed too: its retry waits
``create_settle_seconds`` first, so a listing that lags behind writes shows it to the lookup.

Claims, leases and fences are :mod:`reconciler.claims` (one mechanism for instances and jobs):
the lease is short and the worker renews it in the background for as long as the pass runs.
Every write opens with :data:`~reconciler.queries.CHECK_FENCE`: it locks the desired row and
checks that our claim is still the latest (the token). A worker whose lease expired and whose row
was claimed again gets :class:`LeaseLost` and stops without writing; the same check runs right
before an update or a replace, which have no row to write first.

What each provider error does to the row (all durable, all visible in ``reconciler why``):

=============  ================================================================
Throttled      defer exactly ``retry_after`` (at least 1 s); attempts unchanged
Transient      capped exponential backoff with jitter
Conflict       as Transient (the next pass looks again)
NameTaken      phase Failed like ConfigError; the create made nothing, so its intent is cleared
NotFound       on delete: gone (success); on observe: drift, create again
ConfigError    phase Failed, retried only at the slow config-error interval
(other)        a bug or a deadlock: result ``error``, backoff, the type in last_error
=============  ================================================================
"""

from __future__ import annotations

import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import psycopg
from psycopg import AsyncConnection
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool
from pydantic import ValidationError

from desired_state.models import InstanceSpec, describe_validation_error
from desired_state.vocabulary import (
    DEPLOYMENT_STATES,
    TOOLS,
    DeploymentState,
    Phase,
    ReconcileResult,
    Tool,
)
from providers.base import (
    CREATE_ORDER,
    ConfigError,
    DesiredResource,
    NameTaken,
    NotFound,
    Observed,
    ProviderError,
    ResourceDriver,
    ResourceKind,
    Throttled,
)
from reconciler import queries
from reconciler.claims import ClaimStatements, LeaseLost, Leases, LeaseSettings
from reconciler.conditions import PassResult, conditions
from reconciler.metrics import Metrics, call_outcome
from reconciler.plan import (
    TOOL_KINDS,
    Action,
    Blocked,
    ObservedRow,
    ResourceDefaults,
    Verb,
    decide,
    deployment_fingerprint,
    desired_resource,
    params_hash,
    wanted_kinds,
)
from reconciler.secrets_box import SecretBox

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EngineSettings:
    """Timing of the loop. Every field is a number of seconds unless it says otherwise."""

    lease_seconds: float = 10.0
    """How long a claim stays exclusive without a renewal. The worker renews every claim it holds
    every ``lease_renew_seconds`` while it works, so this only bounds how long a *dead* replica's
    claims wait: another replica takes them over within ``lease_seconds`` plus one tick. Keep it
    well above the renewal interval (a database hiccup longer than the lease loses the claims,
    safely: the fence stops the old worker's writes)."""
    lease_renew_seconds: float = 0.0
    """Seconds between background lease renewals; 0 means a third of ``lease_seconds``."""
    poll_interval: float = 60.0
    """Converged rows are looked at again after this long (drift, deploy status)."""
    not_ready_interval: float = 1.0
    """A resource the provider is still converging (a build) is looked at again after this long."""
    backoff_base: float = 1.0
    """First retry delay after a transient error; doubles per attempt."""
    backoff_cap: float = 300.0
    """Longest retry delay after transient errors."""
    config_error_interval: float = 300.0
    """A configuration error (bad credentials) is retried only this often."""
    changed_share: float = 0.75
    """Share of each claim reserved for new and changed rows; the rest goes to the best-ranked of
    all, so a flood of changes cannot starve polls and a backlog of polls cannot delay new work.
    The share is rounded up, but a claim of two rows or more always keeps one for the others."""
    create_settle_seconds: float = 5.0
    """After a create whose outcome is unknown (a timeout, a 5xx, a dropped connection) the next
    pass looks the resource up by name before creating again; it waits at least this long, so a
    provider whose listings lag behind its writes shows what that create made (no duplicate)."""
    aging_seconds: float = 30.0
    """Claims rank new and changed rows, then retries, then periodic polls; a row of a lower class
    goes first once it has been due this much longer per class (aging, so none starves)."""
    batch_size: int = 32
    """Rows one worker reconciles at once (claimed as slots free up)."""


INSTANCE_CLAIMS = ClaimStatements(
    table="instances",
    key="instance_id",
    claim=queries.CLAIM_DUE,
    renew=queries.RENEW_LEASES,
    release=queries.RELEASE_CLAIMS,
    fence=queries.CHECK_FENCE,
)

MIN_THROTTLE_DELAY = 1.0
"""Seconds a throttled pass waits at least, whatever the provider's ``Retry-After`` says."""


@dataclass(frozen=True)
class Claim:
    instance_id: str
    token: int
    generation: int
    attempts: int


@dataclass(frozen=True)
class Outcome:
    """What a reconcile pass did, for the CLI, the metrics and the tests."""

    instance_id: str
    kind: str  # converge | teardown
    result: ReconcileResult
    phase: Phase | None = None
    error: str | None = None
    actions: tuple[Action, ...] = ()


class _Wait(Exception):
    """Internal: the pass cannot go on yet (not a failure); run it again in ``seconds``."""

    def __init__(self, seconds: float, message: str) -> None:
        super().__init__(message)
        self.seconds = seconds
        self.message = message


class _Retry(Exception):
    """Internal: a resource step failed; carries the delay and how to record it."""

    def __init__(self, error: ProviderError, kind: ResourceKind, delay: float, result: ReconcileResult) -> None:
        super().__init__(str(error))
        self.error = error
        self.kind = kind
        self.delay = delay
        self.result = result
        self.at_least = 0.0


@dataclass
class _State:
    """What we know of one instance's resources while reconciling it."""

    observed: dict[ResourceKind, ObservedRow] = field(default_factory=dict)
    secrets: dict[ResourceKind, str] = field(default_factory=dict)
    actions: list[Action] = field(default_factory=list)
    progress: int = 0  # provider-side changes this pass completed (and recorded)
    created_in_doubt: set[ResourceKind] = field(default_factory=set)  # a create sent, no answer read


class Reconciler:
    """Claims and reconciles desired instances. One per process; safe to run in many processes."""

    def __init__(
        self,
        pool: AsyncConnectionPool[AsyncConnection[Any]],
        drivers: Mapping[ResourceKind, ResourceDriver],
        defaults: ResourceDefaults,
        metrics: Metrics,
        *,
        owner: str,
        secrets: SecretBox,
        settings: EngineSettings | None = None,
    ) -> None:
        self._pool = pool
        self.secrets = secrets
        self._drivers = drivers
        self.defaults = defaults
        self._metrics = metrics
        self.owner = owner
        self.settings = settings or EngineSettings()
        self.leases = Leases(
            pool,
            INSTANCE_CLAIMS,
            owner=owner,
            settings=LeaseSettings(self.settings.lease_seconds, self.settings.lease_renew_seconds),
        )

    # -- claiming ---------------------------------------------------------------------------------

    async def claim(self, limit: int | None = None) -> list[Claim]:
        params = {"changed_share": self.settings.changed_share, "aging_seconds": self.settings.aging_seconds}
        rows = await self.leases.claim(limit or self.settings.batch_size, params)
        for row in rows:
            self._metrics.claim_to_start_seconds.observe(float(row["waited_seconds"]))
        return [Claim(row["instance_id"], row["fencing_token"], row["generation"], row["attempts"]) for row in rows]

    async def make_due(self, instance_ids: list[str] | None) -> list[str]:
        """Force the next pass now for these rows (all rows when None)."""
        async with self._pool.connection() as conn, conn.cursor() as cur:
            await cur.execute(queries.MAKE_DUE, {"ids": instance_ids or [], "all": instance_ids is None})
            return [row[0] for row in await cur.fetchall()]

    # -- one instance ----------------------------------------------------------------------------

    async def reconcile(self, claim: Claim) -> Outcome:
        """Reconcile one claimed instance and release the claim; never raises for provider errors."""
        started = time.monotonic()
        async with self._pool.connection() as conn:
            desired = await _fetch_one(conn, queries.SELECT_DESIRED_FOR_RECONCILE, claim.instance_id)
            state = await self._load_state(conn, claim.instance_id)
        if desired is None:
            return Outcome(claim.instance_id, "converge", ReconcileResult.GONE)
        kind = "converge" if desired["present"] else "teardown"
        try:
            spec = InstanceSpec.from_row(desired["instance_id"], desired["name"], desired["spec"])
        except ValidationError as exc:
            # Written over plain SQL and not a valid spec: nothing to converge to, so say why
            # and wait for the caller to fix it (a fix is a new generation: due at once).
            # Teardown needs only the id, so an absent row is still cleaned up.
            if desired["present"]:
                return await self._refuse_spec(claim, describe_validation_error(exc, "spec."))
            spec = InstanceSpec(instance_id=desired["instance_id"])
        try:
            if desired["present"]:
                outcome = await self._converge(claim, spec, state)
            else:
                outcome = await self._teardown(claim, spec, state)
        except LeaseLost:
            self._metrics.lease_lost.inc()
            outcome = Outcome(claim.instance_id, kind, ReconcileResult.LEASE_LOST)
        except _Retry as retry:
            outcome = await self._record_failure(claim, kind, retry, state, present=desired["present"])
        except _Wait as wait:
            outcome = await self._requeue(claim, kind, wait, present=desired["present"])
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            if not isinstance(exc, psycopg.errors.TransactionRollback):
                raise  # the database went away: the claim expires and the next one resumes
            outcome = await self._record_unexpected(claim, kind, exc, present=desired["present"])
        except Exception as exc:
            # A bug, or a database error no retry inside the pass can fix: recorded on the row
            # like any failure (with backoff), so `reconciler why` shows it and nothing spins.
            log.exception("reconcile of %s failed unexpectedly", claim.instance_id)
            outcome = await self._record_unexpected(claim, kind, exc, present=desired["present"])
        self._metrics.reconcile_total.labels(kind, outcome.result).inc()
        self._metrics.reconcile_seconds.labels(kind).observe(time.monotonic() - started)
        return outcome

    async def _converge(self, claim: Claim, spec: InstanceSpec, state: _State) -> Outcome:
        """Walk the wanted resources in creation order; stop at the first one not ready yet.

        A periodic pass over a converged instance makes no provider call: the batched observer
        (reconciler.observe) lists each provider once per cycle and flags what drifted, which
        :func:`decide` turns into a read or an update here.
        """
        wanted = wanted_kinds(spec)
        # Tools dropped from the spec are torn down first (reverse dependency order).
        for kind in reversed(CREATE_ORDER):
            if kind not in wanted and kind in state.observed:
                await self._remove(claim, kind, spec, state)

        not_ready: list[ResourceKind] = []
        for kind in wanted:
            try:
                want = desired_resource(kind, spec, self.defaults, state.observed, state.secrets)
            except Blocked:
                # A dependency is not ready yet (cannot happen in creation order unless a
                # provider answered without a value); look again shortly.
                not_ready.append(kind)
                break
            action = decide(kind, want, state.observed.get(kind))
            await self._apply(claim, action, want, state)
            if state.observed[kind].status != "ready":
                not_ready.append(kind)
                break  # dependants wait for it (the deployment waits for every other resource)

        await self._publish(claim, spec, state)
        if not_ready:
            waiting = not_ready[0]
            row = state.observed.get(waiting)
            provider_status = str(row.attributes.get("deploy_status") or row.status) if row else "pending"
            deployment_state = DEPLOYMENT_STATES.get(provider_status)
            if waiting is ResourceKind.RAILWAY_DEPLOYMENT and deployment_state is DeploymentState.FAILED:
                # Nothing to retry by ourselves: say so, and look again at the poll interval
                # (a redeploy or a new spec is what fixes it).
                result = PassResult(Phase.FAILED, "DeployFailed", f"the Railway deployment is {provider_status}")
                await self._finish(claim, result, delay=self.settings.poll_interval, observed=True)
                return Outcome(
                    claim.instance_id, "converge", ReconcileResult.DONE, Phase.FAILED, actions=tuple(state.actions)
                )
            result = PassResult(Phase.PROVISIONING, "Provisioning", f"waiting for {waiting.value} ({provider_status})")
            await self._finish(claim, result, delay=self.settings.not_ready_interval)
            return Outcome(
                claim.instance_id, "converge", ReconcileResult.REQUEUE, Phase.PROVISIONING, actions=tuple(state.actions)
            )
        result = PassResult(Phase.READY, "Available", "every resource exists and the deploy succeeded")
        await self._finish(claim, result, delay=self.settings.poll_interval, observed=True)
        return Outcome(claim.instance_id, "converge", ReconcileResult.DONE, Phase.READY, actions=tuple(state.actions))

    async def _teardown(self, claim: Claim, spec: InstanceSpec, state: _State) -> Outcome:
        for kind in reversed(CREATE_ORDER):
            if kind in state.observed:
                await self._remove(claim, kind, spec, state)
        # Every resource is confirmed gone: the finalizer lets the row go, unless a caller wanted
        # the instance again meanwhile (present is back): then it is built afresh, from now.
        async with self._fenced(claim) as conn:
            # The published record points at deleted resources either way.
            await conn.execute(queries.DELETE_INSTANCE_INFRA, {"instance_id": claim.instance_id})
            cur = await conn.execute(queries.DELETE_DESIRED, {"instance_id": claim.instance_id, "token": claim.token})
            deleted = await cur.fetchone() is not None
            if deleted:
                await self._event(conn, claim, None, "delete_instance", "ok", {})
        if not deleted:
            wanted_again = PassResult(Phase.PROVISIONING, "Provisioning", "wanted again while being torn down")
            await self._finish(claim, wanted_again, delay=0)
            return Outcome(
                claim.instance_id, "teardown", ReconcileResult.REQUEUE, Phase.PROVISIONING, actions=tuple(state.actions)
            )
        return Outcome(claim.instance_id, "teardown", ReconcileResult.GONE, None, actions=tuple(state.actions))

    # -- applying one action ---------------------------------------------------------------------

    async def _apply(self, claim: Claim, action: Action, want: DesiredResource, state: _State) -> None:
        kind = action.kind
        driver = self._drivers[kind]
        row = state.observed.get(kind)
        if action.verb is not Verb.NOOP:
            state.actions.append(action)
        try:
            if action.verb is Verb.NOOP:
                return
            if action.verb is Verb.OBSERVE:
                assert row is not None and row.external_id is not None
                try:
                    found = await driver.observe(row.external_id, want)
                except NotFound:
                    await self._recreate(claim, driver, want, state)
                    return
                await self._record(claim, want, found, state, applied_hash=row.applied_hash, action=None)
                return
            if action.verb is Verb.UPDATE:
                assert row is not None and row.external_id is not None
                await self._heartbeat(claim)
                try:
                    found = await driver.update(row.external_id, want)
                except NotFound:
                    await self._recreate(claim, driver, want, state)
                    return
                await self._record(claim, want, found, state, applied_hash=params_hash(want), action="update")
                return
            if action.verb is Verb.REPLACE:
                assert row is not None and row.external_id is not None
                await self._heartbeat(claim)
                await self._delete_at_provider(driver, row.external_id, want)
                await self._forget(claim, kind, state, action="delete", outcome="replaced")
                await self._create(claim, driver, want, state)
                return
            if action.verb is Verb.ADOPT_OR_CREATE:
                existing = await driver.lookup(want)
                if existing is not None:
                    await self._record(claim, want, existing, state, applied_hash=None, action="adopt")
                    # Adopted: bring the fields we own to the spec (or replace if a secret is lost).
                    await self._apply(claim, decide(kind, want, state.observed[kind]), want, state)
                    return
                if row is not None and row.retry_in > 0:
                    # This pass came early (a spec change, a forced pass): the last create's
                    # outcome is unknown and the listing may not show it yet. Not before its time.
                    raise _Wait(row.retry_in, f"{kind.value}: looking for an earlier create again before creating")
            await self._create(claim, driver, want, state)
        except ProviderError as error:
            retry = self._retry_for(error, kind)
            if isinstance(error, NameTaken):
                # Refused outright: nothing was created, so no create is in doubt any more.
                await self._clear_intent(claim, kind, state)
            elif kind in state.created_in_doubt:
                # Whatever failed (a timeout, a 5xx, or a later call of a create that makes
                # several), the create may have landed.
                retry.at_least = self.settings.create_settle_seconds
            raise retry from None

    async def _clear_intent(self, claim: Claim, kind: ResourceKind, state: _State) -> None:
        """Record that a create of ``kind`` made nothing (so teardown reports nothing destroyed)."""
        async with self._fenced(claim) as conn:
            await conn.execute(queries.CLEAR_INTENT, {"instance_id": claim.instance_id, "kind": kind.value})
        state.created_in_doubt.discard(kind)
        row = state.observed.get(kind)
        if row is not None and row.external_id is None:
            state.observed[kind] = replace(row, intent_at=None, status="pending")

    async def _recreate(self, claim: Claim, driver: ResourceDriver, want: DesiredResource, state: _State) -> None:
        """The resource is gone behind our back (or with a parent that was): record it, create anew."""
        await self._forget(claim, want.kind, state, action="drift", outcome="gone")
        await self._create(claim, driver, want, state)

    async def _create(self, claim: Claim, driver: ResourceDriver, want: DesiredResource, state: _State) -> None:
        async with self._fenced(claim) as conn:
            await conn.execute(
                queries.RECORD_INTENT,
                {
                    "instance_id": want.instance_id,
                    "kind": want.kind.value,
                    "derived_name": want.name,
                    "token": claim.token,
                },
            )
        state.created_in_doubt.add(want.kind)  # until the answer is read: it may have landed
        found = await driver.create(want)
        state.created_in_doubt.discard(want.kind)
        await self._record(claim, want, found, state, applied_hash=params_hash(want), action="create")

    async def _remove(self, claim: Claim, kind: ResourceKind, spec: InstanceSpec, state: _State) -> None:
        """Delete one resource at the provider (404 = gone) and forget it."""
        row = state.observed[kind]
        action = decide(kind, None, row)
        if action.verb is Verb.NOOP:
            return
        state.actions.append(action)
        driver = self._drivers[kind]
        want = self._teardown_want(kind, spec, state)
        try:
            external_id = row.external_id
            if action.verb is Verb.FIND_AND_DELETE:
                found = await driver.lookup(want)
                external_id = found.external_id if found is not None else None
            if external_id is not None:
                async with self._fenced(claim) as conn:
                    await conn.execute(
                        queries.MARK_RESOURCE_DELETING,
                        {"instance_id": claim.instance_id, "kind": kind.value, "token": claim.token},
                    )
                await self._delete_at_provider(driver, external_id, want)
        except ProviderError as error:
            raise self._retry_for(error, kind) from None
        # Only a resource that was there is reported deleted: an intent whose lookup found nothing
        # made nothing (the destroy answer is built from these facts).
        outcome = "ok" if external_id is not None else "not_found"
        await self._forget(claim, kind, state, action="delete", outcome=outcome, external_id=external_id)

    @staticmethod
    async def _delete_at_provider(driver: ResourceDriver, external_id: str, want: DesiredResource) -> None:
        with contextlib.suppress(NotFound):  # already gone: exactly what we wanted
            await driver.delete(external_id, want)

    def _teardown_want(self, kind: ResourceKind, spec: InstanceSpec, state: _State) -> DesiredResource:
        """Enough of a resource's description to find and delete it (never blocked)."""
        depends: dict[str, str] = {}
        service = state.observed.get(ResourceKind.RAILWAY_SERVICE)
        if service is not None and service.external_id is not None:
            depends[ResourceKind.RAILWAY_SERVICE.value] = service.external_id
        row = state.observed.get(kind)
        # A number imported from the replaced system's records is known by its phone number only.
        phone_number = row.attributes.get("phone_number") if row is not None else None
        return DesiredResource(
            kind=kind,
            instance_id=spec.instance_id,
            name=self.defaults.derived_name(spec.instance_id),
            depends=depends,
            params={"phone_number": phone_number} if phone_number else {},
        )

    # -- recording --------------------------------------------------------------------------------

    @asynccontextmanager
    async def _fenced(self, claim: Claim) -> AsyncIterator[AsyncConnection[Any]]:
        """A transaction that only commits if our claim is still the latest."""
        async with self._pool.connection() as conn, conn.transaction():
            await self.leases.check_fence(conn, claim.instance_id, claim.token)
            yield conn

    async def _heartbeat(self, claim: Claim) -> None:
        """Check the fence (and extend the lease) right before a mutating provider call.

        Creates and deletes write a row first, which does the same; an update or a replace has
        nothing to write before it, and a pass whose lease ran out during slow calls before must
        not change a resource a newer claim now owns.
        """
        async with self._fenced(claim):
            pass

    async def _record(
        self,
        claim: Claim,
        want: DesiredResource,
        found: Observed,
        state: _State,
        *,
        applied_hash: str | None,
        action: str | None,
    ) -> None:
        ready = found.ready
        if want.kind is ResourceKind.RAILWAY_DEPLOYMENT:
            # The driver passes Railway's raw status on; the vocabulary says what it means.
            ready = DEPLOYMENT_STATES.get(found.status) is DeploymentState.READY
        status = "ready" if ready else "creating"
        attributes = dict(found.attributes)
        attributes.setdefault("provider_status", found.status)
        if want.kind is ResourceKind.RAILWAY_DEPLOYMENT:
            attributes.update(deployment_fingerprint(want))
        async with self._fenced(claim) as conn:
            await conn.execute(
                queries.RECORD_OBSERVED,
                {
                    "instance_id": want.instance_id,
                    "kind": want.kind.value,
                    "derived_name": want.name,
                    "external_id": found.external_id,
                    "status": status,
                    "attributes": Jsonb(attributes),
                    "secret": None if found.secret is None else self.secrets.seal(found.secret),
                    "applied_hash": applied_hash,
                    "token": claim.token,
                },
            )
            if action is not None:
                await self._event(conn, claim, want.kind, action, "ok", {"external_id": found.external_id})
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

    async def _forget(
        self,
        claim: Claim,
        kind: ResourceKind,
        state: _State,
        *,
        action: str,
        outcome: str,
        external_id: str | None = None,
    ) -> None:
        """Drop our row of ``kind``; ``external_id`` names what was acted on (default: the row's)."""
        row = state.observed.get(kind)
        async with self._fenced(claim) as conn:
            await conn.execute(queries.FORGET_RESOURCE, {"instance_id": claim.instance_id, "kind": kind.value})
            if row is not None and (row.external_id is not None or row.intent_at is not None):
                acted_on = external_id if external_id is not None else row.external_id
                await self._event(conn, claim, kind, action, outcome, {"external_id": acted_on})
        if row is not None and row.external_id is not None:
            self._metrics.resource_mutations.labels(kind.value, action).inc()
            state.progress += 1
        state.observed.pop(kind, None)
        state.secrets.pop(kind, None)

    async def _publish(self, claim: Claim, spec: InstanceSpec, state: _State) -> None:
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
            "image": (spec.image or self.defaults.runtime_image) if deployment else None,
            "volume_id": volume.external_id if volume else None,
        }
        published: list[str] = []
        async with self._fenced(claim) as conn:
            await conn.execute(queries.UPSERT_INSTANCE_INFRA, infra)
            for tool in spec.tools:
                row = observed.get(TOOL_KINDS[tool])
                if row is None or row.external_id is None:
                    continue
                await conn.execute(queries.UPSERT_INSTANCE_SERVICE, self._service_row(spec, tool, row, state))
                published.append(tool.value)
            await conn.execute(
                queries.DELETE_INSTANCE_SERVICES_EXCEPT, {"instance_id": spec.instance_id, "keep": published}
            )

    @staticmethod
    def _service_row(spec: InstanceSpec, tool: Tool, row: ObservedRow, state: _State) -> dict[str, Any]:
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

    async def _event(
        self,
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

    async def _finish(
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

    # -- failures ---------------------------------------------------------------------------------

    async def _refuse_spec(self, claim: Claim, problems: list[str]) -> Outcome:
        message = "invalid spec: " + "; ".join(problems)
        try:
            await self._finish(
                claim,
                PassResult(Phase.FAILED, "InvalidSpec", message, error=message),
                delay=self.settings.config_error_interval,
                attempts=claim.attempts + 1,
            )
        except LeaseLost:
            self._metrics.lease_lost.inc()
            return Outcome(claim.instance_id, "converge", ReconcileResult.LEASE_LOST, error=message)
        self._metrics.reconcile_total.labels("converge", ReconcileResult.TERMINAL.value).inc()
        return Outcome(claim.instance_id, "converge", ReconcileResult.TERMINAL, Phase.FAILED, error=message)

    def _retry_for(self, error: ProviderError, kind: ResourceKind) -> _Retry:
        if isinstance(error, Throttled):
            # Exactly as asked, but never sooner than a second: "Retry-After: 0" would spin.
            return _Retry(error, kind, max(MIN_THROTTLE_DELAY, error.retry_after), ReconcileResult.THROTTLED)
        if isinstance(error, ConfigError | NameTaken):  # retrying soon cannot help: for a human
            return _Retry(error, kind, self.settings.config_error_interval, ReconcileResult.TERMINAL)
        return _Retry(error, kind, -1.0, ReconcileResult.RETRY)  # backoff computed from the attempt count

    def backoff(self, attempts: int) -> float:
        """Capped exponential backoff with full jitter in its upper half."""
        ceiling = min(self.settings.backoff_cap, self.settings.backoff_base * 2.0 ** max(0, attempts - 1))
        return ceiling * random.uniform(0.5, 1.0)

    async def _requeue(self, claim: Claim, kind: str, wait: _Wait, *, present: bool) -> Outcome:
        phase = Phase.PROVISIONING if present else Phase.DELETING
        result = PassResult(phase, "Provisioning" if present else "Deleting", wait.message)
        try:
            await self._finish(claim, result, delay=wait.seconds, attempts=claim.attempts)
        except LeaseLost:
            self._metrics.lease_lost.inc()
            return Outcome(claim.instance_id, kind, ReconcileResult.LEASE_LOST)
        return Outcome(claim.instance_id, kind, ReconcileResult.REQUEUE, phase)

    async def _record_unexpected(self, claim: Claim, kind: str, exc: Exception, *, present: bool) -> Outcome:
        """Record a failure that is not a provider's answer (a deadlock, a bug); retry with backoff."""
        attempts = claim.attempts + 1
        # The type only: a database error's text may quote row values.
        message = f"internal error ({type(exc).__name__}); details in the reconciler's log"
        phase = Phase.PROVISIONING if present else Phase.DELETING
        result = PassResult(phase, "InternalError" if present else "Deleting", message, error=message)
        try:
            await self._finish(claim, result, delay=self.backoff(attempts), attempts=attempts)
        except LeaseLost:
            self._metrics.lease_lost.inc()
            return Outcome(claim.instance_id, kind, ReconcileResult.LEASE_LOST, error=message)
        return Outcome(claim.instance_id, kind, ReconcileResult.ERROR, phase, error=message)

    async def _record_failure(self, claim: Claim, kind: str, retry: _Retry, state: _State, *, present: bool) -> Outcome:
        self._metrics.retried.labels(retry.error.provider, call_outcome(retry.error).value).inc()
        throttled = retry.result is ReconcileResult.THROTTLED
        # Backoff grows with failures in a row *without progress*: a pass that created two
        # resources before failing on the third starts the count again.
        attempts = claim.attempts if throttled else (1 if state.progress else claim.attempts + 1)
        delay = max(retry.at_least, retry.delay if retry.delay >= 0 else self.backoff(attempts))
        message = f"{retry.kind.value}: {retry.error}"
        terminal = retry.result is ReconcileResult.TERMINAL
        phase = Phase.FAILED if terminal else (Phase.PROVISIONING if present else Phase.DELETING)
        log.warning(
            "reconcile of %s deferred %.1fs: %s",
            claim.instance_id,
            delay,
            message,
            extra={"instance_id": claim.instance_id, "result": retry.result},
        )
        try:
            async with self._fenced(claim) as conn:
                await conn.execute(
                    queries.RECORD_RESOURCE_ERROR,
                    {
                        "instance_id": claim.instance_id,
                        "kind": retry.kind.value,
                        "error": message,
                        "delay": delay,
                        "token": claim.token,
                    },
                )
                await self._event(conn, claim, retry.kind, "error", retry.result, {"error": message})
            reason = {ReconcileResult.TERMINAL: "ConfigError", ReconcileResult.THROTTLED: "Throttled"}.get(
                retry.result, "ProviderError"
            )
            if isinstance(retry.error, NameTaken):
                reason = "NameTaken"
            if not present:
                reason = "Deleting"
            await self._finish(claim, PassResult(phase, reason, message, error=message), delay=delay, attempts=attempts)
        except LeaseLost:
            self._metrics.lease_lost.inc()
            return Outcome(claim.instance_id, kind, ReconcileResult.LEASE_LOST, error=message)
        return Outcome(claim.instance_id, kind, retry.result, phase, error=message, actions=tuple(state.actions))

    # -- loading ----------------------------------------------------------------------------------

    async def _load_state(self, conn: AsyncConnection[Any], instance_id: str) -> _State:
        state = _State()
        async with conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(queries.SELECT_OBSERVED, {"instance_id": instance_id})
            for row in await cur.fetchall():
                kind = ResourceKind(row["kind"])
                if row["secret"] is not None:
                    state.secrets[kind] = self.secrets.open_(row["secret"])
                state.observed[kind] = ObservedRow.from_row(row)
        return state


async def _fetch_one(conn: AsyncConnection[Any], query: str, instance_id: str) -> dict[str, Any] | None:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(query, {"instance_id": instance_id})
        return await cur.fetchone()


__all__ = ["Claim", "EngineSettings", "LeaseLost", "Outcome", "Reconciler"]
