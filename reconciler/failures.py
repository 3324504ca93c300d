"""What a failed or unfinished pass does to the row: durable, visible in ``reconciler why``.

A resource step that fails raises :class:`Retry` (built by :func:`retry_for` from the provider's
error); a step that cannot go on yet raises :class:`Wait`. The engine catches both at the top of
the pass and hands them to :class:`Failures`, which records the error on the resource's row and
releases the claim with the next pass scheduled:

=============  ================================================================
Throttled      defer exactly ``retry_after`` (at least 1 s); attempts unchanged
               (a first create our admission deferred before it left: intent cleared)
Transient      capped exponential backoff with jitter
Conflict       as Transient (the next pass looks again)
NameTaken      phase Failed like ConfigError; the create made nothing, so its intent is cleared
NotFound       on delete: gone (success); on observe: drift, create again
ConfigError    phase Failed, retried only at the slow config-error interval
(other)        a bug or a deadlock: result ``error``, backoff, the type in last_error
=============  ================================================================

Backoff grows with failures in a row *without progress* (``attempts`` on the row): a pass that
changed something at the provider before failing starts the count again.
"""

from __future__ import annotations

import logging
import random

from desired_state.vocabulary import Phase, ReconcileResult
from providers.base import ConfigError, NameTaken, ProviderError, ResourceKind, Throttled
from reconciler.claims import LeaseLost
from reconciler.conditions import PassResult
from reconciler.metrics import Metrics, call_outcome
from reconciler.pass_state import Claim, EngineSettings, Outcome, PassState
from reconciler.recording import Recorder

log = logging.getLogger("reconciler.engine")  # the pass's log, whichever part writes it

MIN_THROTTLE_DELAY = 1.0
"""Seconds a throttled pass waits at least, whatever the provider's ``Retry-After`` says."""


class Wait(Exception):
    """The pass cannot go on yet (not a failure); run it again in ``seconds``."""

    def __init__(self, seconds: float, message: str) -> None:
        super().__init__(message)
        self.seconds = seconds
        self.message = message


class Retry(Exception):
    """A resource step failed; carries the delay and how to record it."""

    def __init__(self, error: ProviderError, kind: ResourceKind, delay: float, result: ReconcileResult) -> None:
        super().__init__(str(error))
        self.error = error
        self.kind = kind
        self.delay = delay
        self.result = result
        self.at_least = 0.0


def retry_for(error: ProviderError, kind: ResourceKind, settings: EngineSettings) -> Retry:
    if isinstance(error, Throttled):
        # Exactly as asked, but never sooner than a second: "Retry-After: 0" would spin.
        return Retry(error, kind, max(MIN_THROTTLE_DELAY, error.retry_after), ReconcileResult.THROTTLED)
    if isinstance(error, ConfigError | NameTaken):  # retrying soon cannot help: for a human
        return Retry(error, kind, settings.config_error_interval, ReconcileResult.TERMINAL)
    return Retry(error, kind, -1.0, ReconcileResult.RETRY)  # backoff computed from the attempt count


def backoff(attempts: int, settings: EngineSettings) -> float:
    """Capped exponential backoff with full jitter in its upper half."""
    ceiling = min(settings.backoff_cap, settings.backoff_base * 2.0 ** max(0, attempts - 1))
    return ceiling * random.uniform(0.5, 1.0)


def _ongoing(present: bool) -> Phase:
    """The phase of an instance whose pass did not finish: still being built, or torn down."""
    return Phase.PROVISIONING if present else Phase.DELETING


class Failures:
    """Records a pass that failed or must wait, and releases its claim with the next pass set."""

    def __init__(self, recorder: Recorder, metrics: Metrics, settings: EngineSettings) -> None:
        self._recorder = recorder
        self._metrics = metrics
        self._settings = settings

    async def refuse_spec(self, claim: Claim, problems: list[str]) -> Outcome:
        """The desired row holds no valid spec: Failed until a new generation fixes it."""
        message = "invalid spec: " + "; ".join(problems)
        result = PassResult(Phase.FAILED, "InvalidSpec", message, error=message)
        return await self._finish(
            claim,
            result,
            delay=self._settings.config_error_interval,
            attempts=claim.attempts + 1,
            outcome=Outcome(claim.instance_id, "converge", ReconcileResult.TERMINAL, Phase.FAILED, error=message),
        )

    async def requeue(self, claim: Claim, kind: str, wait: Wait, *, present: bool) -> Outcome:
        phase = _ongoing(present)
        result = PassResult(phase, "Provisioning" if present else "Deleting", wait.message)
        return await self._finish(
            claim,
            result,
            delay=wait.seconds,
            attempts=claim.attempts,
            outcome=Outcome(claim.instance_id, kind, ReconcileResult.REQUEUE, phase),
        )

    async def record_unexpected(self, claim: Claim, kind: str, exc: Exception, *, present: bool) -> Outcome:
        """Record a failure that is not a provider's answer (a deadlock, a bug); retry with backoff."""
        attempts = claim.attempts + 1
        # The type only: a database error's text may quote row values.
        message = f"internal error ({type(exc).__name__}); details in the reconciler's log"
        phase = _ongoing(present)
        result = PassResult(phase, "InternalError" if present else "Deleting", message, error=message)
        return await self._finish(
            claim,
            result,
            delay=backoff(attempts, self._settings),
            attempts=attempts,
            outcome=Outcome(claim.instance_id, kind, ReconcileResult.ERROR, phase, error=message),
        )

    async def record_failure(
        self, claim: Claim, kind: str, retry: Retry, state: PassState, *, present: bool
    ) -> Outcome:
        """Record a provider's error on its resource and schedule the retry it calls for."""
        self._metrics.retried.labels(retry.error.provider, call_outcome(retry.error).value).inc()
        throttled = retry.result is ReconcileResult.THROTTLED
        # A throttled pass failed nothing; otherwise progress this pass restarts the count.
        attempts = claim.attempts if throttled else (1 if state.progress else claim.attempts + 1)
        delay = max(retry.at_least, retry.delay if retry.delay >= 0 else backoff(attempts, self._settings))
        message = f"{retry.kind.value}: {retry.error}"
        terminal = retry.result is ReconcileResult.TERMINAL
        phase = Phase.FAILED if terminal else _ongoing(present)
        log.warning(
            "reconcile of %s deferred %.1fs: %s",
            claim.instance_id,
            delay,
            message,
            extra={"instance_id": claim.instance_id, "result": retry.result},
        )
        try:
            await self._recorder.record_error(claim, retry.kind, retry.result, message, delay)
        except LeaseLost:
            self._metrics.lease_lost.inc()
            return Outcome(claim.instance_id, kind, ReconcileResult.LEASE_LOST, error=message)
        reason = {ReconcileResult.TERMINAL: "ConfigError", ReconcileResult.THROTTLED: "Throttled"}.get(
            retry.result, "ProviderError"
        )
        if isinstance(retry.error, NameTaken):
            reason = "NameTaken"
        if not present:
            reason = "Deleting"
        return await self._finish(
            claim,
            PassResult(phase, reason, message, error=message),
            delay=delay,
            attempts=attempts,
            outcome=Outcome(claim.instance_id, kind, retry.result, phase, error=message, actions=tuple(state.actions)),
        )

    async def _finish(
        self,
        claim: Claim,
        result: PassResult,
        *,
        delay: float,
        attempts: int,
        outcome: Outcome,
    ) -> Outcome:
        """Release the claim; ``outcome`` when that worked, a lease-lost outcome when it did not."""
        try:
            await self._recorder.finish(claim, result, delay=delay, attempts=attempts)
        except LeaseLost:
            self._metrics.lease_lost.inc()
            return Outcome(claim.instance_id, outcome.kind, ReconcileResult.LEASE_LOST, error=outcome.error)
        return outcome
