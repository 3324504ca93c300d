"""The reconcile of one instance: claim, observe, plan, apply, record. Linear, on purpose.

A worker claims due rows (``FOR UPDATE SKIP LOCKED``, a lease, a fencing token bumped per
claim; the mechanism is :mod:`reconciler.claims`) and reconciles each one. Reconciling reads the
desired row and our observed rows, then walks the instance's resources in dependency order,
asking the pure :func:`reconciler.plan.decide` what to do with each, and doing it through the
resource's driver. The parts of a pass live beside this module:

* :mod:`reconciler.apply`: one action on one resource, in the crash-safe order of writes;
* :mod:`reconciler.recording`: every write, each fenced by the claim (a stale worker gets
  :class:`LeaseLost` and stops without writing), and the seed's tables the pool reads;
* :mod:`reconciler.failures`: what each provider error does to the row (retry, backoff, Failed);
* :mod:`reconciler.pass_state`: the values they hand each other (:class:`Claim`,
  :class:`Outcome`, :class:`EngineSettings`), re-exported here.

:meth:`Reconciler.reconcile` never raises for a provider's error or a bug in a pass: every way a
pass ends is written on the row (phase, conditions, next due time), so ``reconciler why`` shows
it and nothing spins. Only the database going away propagates: the claim expires and the next
one resumes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

import psycopg
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool
from pydantic import ValidationError

from desired_state.models import InstanceSpec, describe_validation_error
from desired_state.vocabulary import DEPLOYMENT_STATES, DeploymentState, Phase, ReconcileResult
from providers.base import CREATE_ORDER, ResourceDriver, ResourceKind
from reconciler import queries
from reconciler.apply import Applier
from reconciler.claims import ClaimStatements, LeaseLost, Leases, LeaseSettings
from reconciler.conditions import PassResult
from reconciler.failures import Failures, Retry, Wait
from reconciler.metrics import Metrics
from reconciler.pass_state import Claim, EngineSettings, Outcome, PassState
from reconciler.plan import Blocked, ResourceDefaults, decide, desired_resource, wanted_kinds
from reconciler.recording import Recorder
from reconciler.secrets_box import SecretBox

log = logging.getLogger(__name__)

INSTANCE_CLAIMS = ClaimStatements(
    table="instances",
    key="instance_id",
    claim=queries.CLAIM_DUE,
    renew=queries.RENEW_LEASES,
    release=queries.RELEASE_CLAIMS,
    fence=queries.CHECK_FENCE,
)


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
        self._recorder = Recorder(pool, self.leases, secrets, metrics, defaults)
        self._applier = Applier(drivers, self._recorder, defaults, self.settings)
        self._failures = Failures(self._recorder, metrics, self.settings)

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
        desired, state = await self._recorder.load(claim.instance_id)
        if desired is None:
            # Deleted since the claim (the finalizer ran elsewhere): nothing left to do.
            return Outcome(claim.instance_id, "converge", ReconcileResult.GONE)
        present = bool(desired["present"])
        kind = "converge" if present else "teardown"
        invalid: list[str] | None = None
        try:
            spec = InstanceSpec.from_row(desired["instance_id"], desired["name"], desired["spec"])
        except ValidationError as exc:
            # Teardown needs only the id, so an absent row is still cleaned up.
            invalid = describe_validation_error(exc, "spec.") if present else None
            spec = InstanceSpec(instance_id=desired["instance_id"])
        try:
            if invalid is not None:
                # Written over plain SQL and not a valid spec: nothing to converge to, so say why
                # and wait for the caller to fix it (a fix is a new generation: due at once).
                outcome = await self._failures.refuse_spec(claim, invalid)
            elif present:
                # Wanted: create, update or adopt every resource the spec asks for.
                outcome = await self._converge(claim, spec, state)
            else:
                # Deleted by the caller: tear every resource down, then let the row go.
                outcome = await self._teardown(claim, spec, state)
        except LeaseLost:
            # Another claim took the row over: stop without writing; that one carries on.
            self._metrics.lease_lost.inc()
            outcome = Outcome(claim.instance_id, kind, ReconcileResult.LEASE_LOST)
        except Retry as retry:
            # A provider refused or failed a step: record it and schedule the retry it calls for.
            outcome = await self._failures.record_failure(claim, kind, retry, state, present=present)
        except Wait as wait:
            # Too early for the next step (a create in doubt settling): run the pass again later.
            outcome = await self._failures.requeue(claim, kind, wait, present=present)
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            if not isinstance(exc, psycopg.errors.TransactionRollback):
                raise  # the database went away: the claim expires and the next one resumes
            # A deadlock or a serialization failure: retried with backoff like a bug.
            outcome = await self._failures.record_unexpected(claim, kind, exc, present=present)
        except Exception as exc:
            # A bug, or a database error no retry inside the pass can fix: recorded on the row
            # like any failure (with backoff), so `reconciler why` shows it and nothing spins.
            log.exception("reconcile of %s failed unexpectedly", claim.instance_id)
            outcome = await self._failures.record_unexpected(claim, kind, exc, present=present)
        self._metrics.reconcile_total.labels(kind, outcome.result).inc()
        self._metrics.reconcile_seconds.labels(kind).observe(time.monotonic() - started)
        return outcome

    async def _converge(self, claim: Claim, spec: InstanceSpec, state: PassState) -> Outcome:
        """Walk the wanted resources in creation order; stop at the first one not ready yet.

        A periodic pass over a converged instance makes no provider call: the batched observer
        (reconciler.observe) lists each provider once per cycle and flags what drifted, which
        :func:`decide` turns into a read or an update here.
        """
        wanted = wanted_kinds(spec)
        # Tools dropped from the spec are torn down first (reverse dependency order).
        for kind in reversed(CREATE_ORDER):
            if kind not in wanted and kind in state.observed:
                await self._applier.remove(claim, kind, spec, state)

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
            await self._applier.apply(claim, action, want, state)
            if state.observed[kind].status != "ready":
                not_ready.append(kind)
                break  # dependants wait for it (the deployment waits for every other resource)

        await self._recorder.publish(claim, spec, state)
        if not_ready:
            # Stopped at a resource the provider is still converging (or a failed deploy).
            waiting = not_ready[0]
            row = state.observed.get(waiting)
            provider_status = str(row.attributes.get("deploy_status") or row.status) if row else "pending"
            deployment_state = DEPLOYMENT_STATES.get(provider_status)
            if waiting is ResourceKind.RAILWAY_DEPLOYMENT and deployment_state is DeploymentState.FAILED:
                # Nothing to retry by ourselves: say so, and look again at the poll interval
                # (a redeploy or a new spec is what fixes it).
                result = PassResult(Phase.FAILED, "DeployFailed", f"the Railway deployment is {provider_status}")
                await self._recorder.finish(claim, result, delay=self.settings.poll_interval, observed=True)
                return Outcome(
                    claim.instance_id, "converge", ReconcileResult.DONE, Phase.FAILED, actions=tuple(state.actions)
                )
            # Still building: look again shortly.
            result = PassResult(Phase.PROVISIONING, "Provisioning", f"waiting for {waiting.value} ({provider_status})")
            await self._recorder.finish(claim, result, delay=self.settings.not_ready_interval)
            return Outcome(
                claim.instance_id, "converge", ReconcileResult.REQUEUE, Phase.PROVISIONING, actions=tuple(state.actions)
            )
        # Every wanted resource is there and ready: converged until the next poll or change.
        result = PassResult(Phase.READY, "Available", "every resource exists and the deploy succeeded")
        await self._recorder.finish(claim, result, delay=self.settings.poll_interval, observed=True)
        return Outcome(claim.instance_id, "converge", ReconcileResult.DONE, Phase.READY, actions=tuple(state.actions))

    async def _teardown(self, claim: Claim, spec: InstanceSpec, state: PassState) -> Outcome:
        """Delete every resource we have, dependants first, then let the desired row go."""
        for kind in reversed(CREATE_ORDER):
            if kind in state.observed:
                await self._applier.remove(claim, kind, spec, state)
        # Every resource is confirmed gone: the finalizer lets the row go, unless a caller wanted
        # the instance again meanwhile (present is back): then it is built afresh, from now.
        if not await self._recorder.delete_instance(claim):
            # Wanted again: the next pass converges it (due at once).
            wanted_again = PassResult(Phase.PROVISIONING, "Provisioning", "wanted again while being torn down")
            await self._recorder.finish(claim, wanted_again, delay=0)
            return Outcome(
                claim.instance_id, "teardown", ReconcileResult.REQUEUE, Phase.PROVISIONING, actions=tuple(state.actions)
            )
        return Outcome(claim.instance_id, "teardown", ReconcileResult.GONE, None, actions=tuple(state.actions))


__all__ = ["Claim", "EngineSettings", "LeaseLost", "Outcome", "Reconciler"]
