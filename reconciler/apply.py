"""Doing one planned action on one resource through its driver, crash-safely.

:func:`reconciler.plan.decide` says what to do with a resource (observe, update, replace, adopt or
create, delete); :class:`Applier` does it and has :class:`~reconciler.recording.Recorder` write
the result. Crash safety (ARCHITECTURE.md section 3.3) comes from the order of writes around
every create::

    commit intent (status 'creating', intent_at)  ->  provider create  ->  commit external id

A process killed between the first commit and the second leaves an intent and no id; the next
claim sees it and looks the resource up by its derived name before creating (``ADOPT_OR_CREATE``),
so there is never a duplicate. A first create that our own rate-limit admission deferred before
its first request left (:func:`providers.http.counting_sent`) clears its intent instead: nothing
can have landed, and a lookup would spend provider calls under the limit that deferred it (an
intent left by an earlier create still in doubt is kept). A kill
before the first commit leaves nothing at the provider. A create that failed without a clear
answer (a timeout, a 5xx) may have landed too: its retry waits ``create_settle_seconds`` first,
so a listing that lags behind writes shows it to the lookup.

Deletes mirror it: mark the row 'deleting', delete at the provider (404 is success), forget the
row. A provider error becomes a :class:`~reconciler.failures.Retry` for the engine to record.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping

from desired_state.models import InstanceSpec
from providers.base import (
    DesiredResource,
    NameTaken,
    NotFound,
    ProviderError,
    ResourceDriver,
    ResourceKind,
    Throttled,
)
from providers.http import counting_sent
from reconciler.failures import Wait, retry_for
from reconciler.pass_state import Claim, EngineSettings, PassState
from reconciler.plan import Action, ResourceDefaults, Verb, decide, params_hash
from reconciler.recording import Recorder


class Applier:
    """Applies planned actions to resources through their drivers; records through ``recorder``."""

    def __init__(
        self,
        drivers: Mapping[ResourceKind, ResourceDriver],
        recorder: Recorder,
        defaults: ResourceDefaults,
        settings: EngineSettings,
    ) -> None:
        self._drivers = drivers
        self._recorder = recorder
        self._defaults = defaults
        self._settings = settings

    async def apply(self, claim: Claim, action: Action, want: DesiredResource, state: PassState) -> None:
        """Do ``action``; raises Retry (a provider error) or Wait (too early to create again)."""
        kind = action.kind
        driver = self._drivers[kind]
        row = state.observed.get(kind)
        if action.verb is not Verb.NOOP:
            state.actions.append(action)
        try:
            if action.verb is Verb.NOOP:
                # Converged and no drift flagged: no provider call at all.
                return
            if action.verb is Verb.OBSERVE:
                # It exists: read its status (not ready yet, or drift flagged).
                assert row is not None and row.external_id is not None
                try:
                    found = await driver.observe(row.external_id, want)
                except NotFound:
                    await self._recreate(claim, driver, want, state)
                    return
                await self._recorder.record(claim, want, found, state, applied_hash=row.applied_hash, action=None)
                return
            if action.verb is Verb.UPDATE:
                # A field we own changed (in the spec or behind our back): set it in place.
                assert row is not None and row.external_id is not None
                await self._recorder.heartbeat(claim)
                try:
                    found = await driver.update(row.external_id, want)
                except NotFound:
                    await self._recreate(claim, driver, want, state)
                    return
                await self._recorder.record(claim, want, found, state, applied_hash=params_hash(want), action="update")
                return
            if action.verb is Verb.REPLACE:
                # A value we need was lost (a secret): delete it and create it again.
                assert row is not None and row.external_id is not None
                await self._recorder.heartbeat(claim)
                await _delete_at_provider(driver, row.external_id, want)
                await self._recorder.forget(claim, kind, state, action="delete", outcome="replaced")
                await self._create(claim, driver, want, state)
                return
            if action.verb is Verb.ADOPT_OR_CREATE:
                # An intent without an id: an earlier create may have landed. Look before creating.
                existing = await driver.lookup(want)
                if existing is not None:
                    await self._recorder.record(claim, want, existing, state, applied_hash=None, action="adopt")
                    # Adopted: bring the fields we own to the spec (or replace if a secret is lost).
                    await self.apply(claim, decide(kind, want, state.observed[kind]), want, state)
                    return
                if row is not None and row.retry_in > 0:
                    # This pass came early (a spec change, a forced pass): the last create's
                    # outcome is unknown and the listing may not show it yet. Not before its time.
                    raise Wait(row.retry_in, f"{kind.value}: looking for an earlier create again before creating")
            # CREATE, or ADOPT_OR_CREATE that found nothing.
            await self._create(claim, driver, want, state)
        except ProviderError as error:
            retry = retry_for(error, kind, self._settings)
            if isinstance(error, NameTaken):
                # Refused outright: nothing was created, so no create is in doubt any more.
                await self._recorder.clear_intent(claim, kind, state)
            elif kind in state.created_in_doubt:
                # Whatever failed (a timeout, a 5xx, or a later call of a create that makes
                # several), the create may have landed.
                retry.at_least = self._settings.create_settle_seconds
            raise retry from None

    async def remove(self, claim: Claim, kind: ResourceKind, spec: InstanceSpec, state: PassState) -> None:
        """Delete one resource at the provider (404 = gone) and forget it."""
        row = state.observed[kind]
        action = decide(kind, None, row)
        if action.verb is Verb.NOOP:
            # Nothing to delete.
            return
        state.actions.append(action)
        driver = self._drivers[kind]
        want = self._teardown_want(kind, spec, state)
        try:
            external_id = row.external_id
            if action.verb is Verb.FIND_AND_DELETE:
                # An intent without an id: delete whatever that create made, if anything.
                found = await driver.lookup(want)
                external_id = found.external_id if found is not None else None
            if external_id is not None:
                # DELETE, or a lookup that found it (FORGET has nothing at the provider).
                await self._recorder.mark_deleting(claim, kind)
                await _delete_at_provider(driver, external_id, want)
        except ProviderError as error:
            raise retry_for(error, kind, self._settings) from None
        # Only a resource that was there is reported deleted: an intent whose lookup found nothing
        # made nothing (the destroy answer is built from these facts).
        outcome = "ok" if external_id is not None else "not_found"
        await self._recorder.forget(claim, kind, state, action="delete", outcome=outcome, external_id=external_id)

    async def _recreate(self, claim: Claim, driver: ResourceDriver, want: DesiredResource, state: PassState) -> None:
        """The resource is gone behind our back (or with a parent that was): record it, create anew."""
        await self._recorder.forget(claim, want.kind, state, action="drift", outcome="gone")
        await self._create(claim, driver, want, state)

    async def _create(self, claim: Claim, driver: ResourceDriver, want: DesiredResource, state: PassState) -> None:
        earlier = state.observed.get(want.kind)
        earlier_in_doubt = earlier is not None and earlier.intent_at is not None  # kept by record_intent
        await self._recorder.record_intent(claim, want)
        state.created_in_doubt.add(want.kind)  # until the answer is read: it may have landed
        with counting_sent() as sent:
            try:
                found = await driver.create(want)
            except Throttled:
                if sent.count == 0 and not earlier_in_doubt:
                    # Our admission refused the first request: nothing of this create left, and
                    # no earlier one is in doubt. Without the intent the next pass creates at
                    # once instead of looking first.
                    await self._recorder.clear_intent(claim, want.kind, state)
                raise
        state.created_in_doubt.discard(want.kind)
        await self._recorder.record(claim, want, found, state, applied_hash=params_hash(want), action="create")

    def _teardown_want(self, kind: ResourceKind, spec: InstanceSpec, state: PassState) -> DesiredResource:
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
            name=self._defaults.derived_name(spec.instance_id),
            depends=depends,
            params={"phone_number": phone_number} if phone_number else {},
        )


async def _delete_at_provider(driver: ResourceDriver, external_id: str, want: DesiredResource) -> None:
    with contextlib.suppress(NotFound):  # already gone: exactly what we wanted
        await driver.delete(external_id, want)
