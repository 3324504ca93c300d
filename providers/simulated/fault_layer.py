"""The fault layer: ASGI middleware that makes one fake slow, flaky, throttled or laggy.

Every fake puts a :class:`Faults` in front of its ASGI app (``faults.wrap(app, operation_of)``).
The wrapper names each request's *operation* (for Railway the GraphQL root field, such as
``volumeCreate`` or ``project``; for the REST fakes the name of the route, such as
``create_key``), looks up the :class:`~providers.simulated.fault_plan.Knobs` the plan in force
gives it, then, in this order:

1. sleeps for the **latency** drawn for it (fixed, fixed + uniform jitter, and/or lognormal);
2. serves a **queued failure** if one matches (:meth:`Faults.fail_next`: a scripted 429, 503,
   HTML page or provider error body, for tests that need one exact answer);
3. applies the **rate limit** (a token bucket of N calls per window; over it, a 429 with the
   exact ``Retry-After``, or what the fake answers instead: Railway's ``volumeCreate`` says
   "You are creating volumes too quickly" in an HTTP 200, as production did);
4. draws one number from the operation's seeded RNG and, by the configured rates, makes the
   call **time out** (hang, then 504 or a dropped connection), get **throttled** (429 with
   ``Retry-After``), fail with an **error status** (in the provider's own error envelope), or,
   Railway only, answer a **GraphQL error** in a 200;
5. otherwise lets the fake serve it. A fake reports what it created (:meth:`Faults.created`) and
   filters its listings (:meth:`Faults.is_listed`), which is how **list lag** (eventual
   consistency: a new resource missing from LIST answers for a while, GET by id still working)
   is modelled.

Every request is counted per operation in a bounded log (:meth:`Faults.requests`), with the
times of recent calls and of every throttle answer with its ``Retry-After``;
:func:`early_calls` checks that log for clients that did not wait.

Random decisions come from one RNG per operation and purpose, seeded from the simulator's seed,
the provider and the operation, so a run with the same seed and the same calls per operation
fails the same calls, whatever the other operations do meanwhile.

This module imports only the plan model (:mod:`providers.simulated.fault_plan`) and the shared
helpers; the fakes import it, never the reverse.
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import math
import random
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from starlette.responses import Response
from starlette.routing import BaseRoute, Match, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from providers.simulated._common import ErrorBody, error_response
from providers.simulated.fault_plan import UNKNOWN, FaultPlan, Knobs, RateLimit

HISTORY = 256
"""Recent call times and throttle answers kept per operation (totals are always exact)."""

OperationNamer = Callable[[Scope, bytes], str]
"""``(scope, body) -> operation``: how a fake names a request."""
RateLimitAnswer = Callable[[str, float], Response | None]
"""``(operation, retry_after) -> response``: a fake's own answer to a call over its rate limit,
or None for the default 429 with ``Retry-After``."""


# --- queued failures --------------------------------------------------------------------------


@dataclass(frozen=True)
class Failure:
    """One scripted answer, served instead of the next matching request.

    It answers ``status`` with ``message`` in the provider's envelope (for Railway, status 200
    is a GraphQL error in a 200), or ``body`` as given (a provider's specific error), or ``raw``
    as a literal ``text/html`` page (a proxy's error page). ``retry_after`` adds that header.
    It matches requests to ``operation`` (any if None), with ``method`` and a path containing
    ``path_contains`` when those are given. With ``after_serving`` the fake serves the request
    first and only its answer is replaced: a create that landed but whose answer was lost.
    """

    status: int
    message: str = "Simulated failure"
    body: Mapping[str, Any] | None = None
    retry_after: float | None = None
    raw: str | None = None
    operation: str | None = None
    method: str | None = None
    path_contains: str | None = None
    after_serving: bool = False

    def matches(self, scope: Scope, operation: str) -> bool:
        if self.operation is not None and self.operation != operation:
            return False
        if self.method is not None and scope.get("method") != self.method.upper():
            return False
        return self.path_contains is None or self.path_contains in str(scope.get("path", ""))

    def response(self, envelope: ErrorBody) -> Response:
        headers = {} if self.retry_after is None else {"Retry-After": _seconds(self.retry_after)}
        if self.raw is not None:
            return Response(self.raw, status_code=self.status, headers=headers, media_type="text/html")
        body = dict(self.body) if self.body is not None else envelope(self.status, self.message)
        return error_response(self.status, body, headers)


# --- the per-provider engine ------------------------------------------------------------------


@dataclass
class _Bucket:
    tokens: float
    updated: float

    def take(self, now: float, limit: RateLimit) -> float:
        """0 if a token was taken, else the seconds until one will be there."""
        elapsed = max(0.0, now - self.updated)
        self.tokens = min(float(limit.calls), self.tokens + elapsed * limit.calls / limit.per_seconds)
        self.updated = now
        if self.tokens >= 1.0 - 1e-9:
            self.tokens = max(0.0, self.tokens - 1.0)
            return 0.0
        return (1.0 - self.tokens) * limit.per_seconds / limit.calls


@dataclass
class _OperationLog:
    count: int = 0
    throttled: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    faults: Counter[str] = field(default_factory=Counter)
    calls: deque[float] = field(default_factory=lambda: deque(maxlen=HISTORY))
    throttles: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=HISTORY))

    def to_json(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "statuses": dict(sorted(self.statuses.items())),
            "faults": dict(sorted(self.faults.items())),
            "throttled": self.throttled,
            "calls": list(self.calls),
            "throttles": list(self.throttles),
        }


@dataclass(frozen=True)
class _Decision:
    at: float
    fault: str | None = None
    """What answered: None (the fake), queued, rate_limit, timeout, throttle_rate, error_rate,
    graphql_error_rate."""
    response: Response | None = None
    retry_after: float | None = None
    serve_first: bool = False
    """Let the fake serve the request, then send ``response`` instead of its answer."""


class Faults:
    """One provider's fault layer: the knobs in force, queued failures, buckets, list lag, log.

    ``envelope`` builds the provider's error body; ``seed`` seeds the decisions (None: random);
    ``clock`` (monotonic seconds) times rate limits, list lag and the log, so a test can move
    time; ``rate_limited`` lets a fake answer a call over its rate limit its own way;
    ``graphql_errors`` enables ``graphql_error_rate`` (Railway).
    """

    def __init__(
        self,
        provider: str,
        envelope: ErrorBody,
        *,
        seed: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        rate_limited: RateLimitAnswer | None = None,
        graphql_errors: bool = False,
    ) -> None:
        self.provider = provider
        self.envelope = envelope
        self.clock = clock
        self._seed = seed
        self._rate_limited = rate_limited
        self._graphql_errors = graphql_errors
        self._lock = threading.Lock()
        self._plan = FaultPlan()
        self._queued: list[tuple[Failure, int]] = []
        self._buckets: dict[str, _Bucket] = {}
        self._streams: dict[tuple[str, str], random.Random] = {}
        self._hidden: dict[str, float] = {}
        self._log: dict[str, _OperationLog] = {}

    # -- configuration ---------------------------------------------------------------------------

    @property
    def plan(self) -> FaultPlan:
        return self._plan

    @plan.setter
    def plan(self, plan: FaultPlan) -> None:
        """Put ``plan`` in force; buckets and random streams start afresh (same seed, same run)."""
        with self._lock:
            self._plan = plan
            self._buckets.clear()
            self._streams.clear()

    def knobs(self, operation: str) -> Knobs:
        return self._plan.knobs(self.provider, operation)

    def fail_next(
        self,
        status: int,
        message: str = "Simulated failure",
        *,
        body: Mapping[str, Any] | None = None,
        retry_after: float | None = None,
        raw: str | None = None,
        operation: str | None = None,
        method: str | None = None,
        path_contains: str | None = None,
        after_serving: bool = False,
        times: int = 1,
    ) -> None:
        """Answer the next ``times`` matching requests with a :class:`Failure` built from these."""
        failure = Failure(status, message, body, retry_after, raw, operation, method, path_contains, after_serving)
        self.inject(failure, times)

    def inject(self, failure: Failure, times: int = 1) -> None:
        """Serve ``failure`` to the next ``times`` matching requests (after those queued before)."""
        if times >= 1:
            with self._lock:
                self._queued.append((failure, times))

    def clear(self) -> None:
        """Drop every queued failure."""
        with self._lock:
            self._queued.clear()

    def reset(self) -> None:
        """Forget queued failures, buckets, list lag and the request log (the plan stays)."""
        with self._lock:
            self._queued.clear()
            self._buckets.clear()
            self._streams.clear()
            self._hidden.clear()
            self._log.clear()

    # -- list lag --------------------------------------------------------------------------------

    def created(self, operation: str, resource_id: str) -> None:
        """``operation`` made ``resource_id``: keep it out of listings for its ``list_lag``."""
        lag = self.knobs(operation).list_lag
        if lag <= 0:
            return
        now = self.clock()
        with self._lock:
            if len(self._hidden) >= HISTORY:
                self._hidden = {rid: until for rid, until in self._hidden.items() if until > now}
            self._hidden[resource_id] = now + lag

    def is_listed(self, resource_id: str) -> bool:
        """Whether a listing shows ``resource_id`` yet (GET by id always does)."""
        with self._lock:
            until = self._hidden.get(resource_id)
            if until is None:
                return True
            if self.clock() >= until:
                del self._hidden[resource_id]
                return True
            return False

    # -- the request log -------------------------------------------------------------------------

    def requests(self) -> dict[str, Any]:
        """Calls per operation: counts by status and by fault, recent call times and throttles."""
        with self._lock:
            operations = {name: log.to_json() for name, log in sorted(self._log.items())}
        return {"now": self.clock(), "operations": operations}

    def clear_requests(self) -> None:
        with self._lock:
            self._log.clear()

    def _record(
        self, operation: str, at: float, status: int | None, fault: str | None, retry_after: float | None
    ) -> None:
        with self._lock:
            log = self._log.setdefault(operation, _OperationLog())
            log.count += 1
            log.statuses["none" if status is None else str(status)] += 1
            if fault is not None:
                log.faults[fault] += 1
            log.calls.append(at)
            if status == 429 or fault == "rate_limit":
                log.throttled += 1
                log.throttles.append({"at": at, "status": status, "retry_after": retry_after})

    # -- serving ---------------------------------------------------------------------------------

    def wrap(self, app: ASGIApp, operation_of: OperationNamer) -> ASGIApp:
        """``app`` behind this fault layer; ``operation_of`` names each request."""
        return _Faulty(self, app, operation_of)

    async def serve(
        self, app: ASGIApp, operation_of: OperationNamer, scope: Scope, receive: Receive, send: Send
    ) -> None:
        """Serve one ASGI call of ``app`` through this fault layer."""
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        body = await _read_body(receive)
        if body is None:
            return  # the client left before its request was complete
        operation = operation_of(scope, body)
        await self._serve(app, scope, _replay(body, receive), receive, send, operation)

    async def _serve(
        self, app: ASGIApp, scope: Scope, replayed: Receive, receive: Receive, send: Send, operation: str
    ) -> None:
        knobs = self.knobs(operation)
        if knobs.latency is not None:
            with self._lock:
                delay = knobs.latency.sample(self._stream(operation, "latency"))
            if delay > 0:
                await asyncio.sleep(delay)
        decision = self._decide(scope, operation, knobs)
        tracker = _Tracker(send)
        try:
            if decision.fault == "timeout":
                if not await _hang(knobs.timeout_seconds, receive):
                    if knobs.timeout_mode == "drop":
                        await _drop(send)
                    else:
                        timed_out = self.envelope(504, "Gateway Timeout (simulated)")
                        await error_response(504, timed_out)(scope, replayed, tracker.send)
            elif decision.response is not None:
                if decision.serve_first:
                    await app(scope, replayed, _discard)
                await decision.response(scope, replayed, tracker.send)
            else:
                await app(scope, replayed, tracker.send)
        finally:
            retry_after = decision.retry_after if decision.retry_after is not None else tracker.retry_after
            self._record(operation, decision.at, tracker.status, decision.fault, retry_after)

    def _decide(self, scope: Scope, operation: str, knobs: Knobs) -> _Decision:
        with self._lock:
            at = self.clock()
            draw = self._stream(operation, "outcome").random()  # drawn for every call: stable streams
            for index, (failure, times) in enumerate(self._queued):
                if failure.matches(scope, operation):
                    if times > 1:
                        self._queued[index] = (failure, times - 1)
                    else:
                        del self._queued[index]
                    scripted = failure.response(self.envelope)
                    return _Decision(at, "queued", scripted, failure.retry_after, failure.after_serving)
            if knobs.rate_limit is not None:
                bucket = self._buckets.setdefault(knobs.rate_limit_scope, _Bucket(float(knobs.rate_limit.calls), at))
                wait = bucket.take(at, knobs.rate_limit)
                if wait > 0:
                    wait = math.ceil(wait * 1000 - 1e-6) / 1000  # exact, rounded up to the millisecond
                    return _Decision(at, "rate_limit", self._over_limit(operation, wait, knobs), wait)
        threshold = knobs.timeout_rate
        if draw < threshold:
            return _Decision(at, "timeout")
        threshold += knobs.throttle_rate
        if draw < threshold:
            throttled = self.envelope(429, "Too many requests (simulated)")
            headers = {"Retry-After": _seconds(knobs.retry_after)}
            return _Decision(at, "throttle_rate", error_response(429, throttled, headers), knobs.retry_after)
        for status, rate in sorted(knobs.error_rates.items()):
            threshold += rate
            if draw < threshold:
                message = f"{_phrase(status)} (simulated)"
                return _Decision(at, "error_rate", error_response(status, self.envelope(status, message)))
        if self._graphql_errors:
            threshold += knobs.graphql_error_rate
            if draw < threshold:
                answer = self.envelope(200, "Problem processing request")
                return _Decision(at, "graphql_error_rate", error_response(200, answer))
        return _Decision(at)

    def _over_limit(self, operation: str, wait: float, knobs: Knobs) -> Response:
        if self._rate_limited is not None:
            answer = self._rate_limited(operation, wait)
            if answer is not None:
                return answer
        assert knobs.rate_limit is not None
        limit = knobs.rate_limit
        message = f"Rate limit exceeded: {limit.calls} per {limit.per_seconds:g}s (simulated)"
        return error_response(429, self.envelope(429, message), {"Retry-After": _seconds(wait)})

    def _stream(self, operation: str, purpose: str) -> random.Random:
        key = (operation, purpose)
        stream = self._streams.get(key)
        if stream is None:
            seed = None if self._seed is None else f"{self._seed}/{self.provider}/{operation}/{purpose}"
            stream = self._streams[key] = random.Random(seed)
        return stream


def early_calls(requests: Mapping[str, Any], in_flight: float = 0.0) -> list[str]:
    """Calls made to an operation before the ``Retry-After`` of an earlier throttle had elapsed.

    ``requests`` is the answer of ``GET /_admin/requests`` (``Simulator.requests()``). Checked
    per operation, over the recent calls and throttles the log keeps; for Railway's "too
    quickly" (sent without ``Retry-After``) the wait checked is the exact one the bucket needed.
    ``in_flight`` excuses calls arriving within that many seconds of the throttle: a concurrent
    client's request already on its way when the 429 left cannot be recalled, so only calls sent
    after the client could have read the 429 count. An empty list means every client waited.
    """
    found = []
    for provider, served in requests.items():
        for operation, log in served["operations"].items():
            for throttle in log["throttles"]:
                start, wait = throttle["at"], throttle["retry_after"] or 0.0
                for called in log["calls"]:
                    if start + in_flight < called < start + wait - 1e-6:
                        found.append(
                            f"{provider} {operation}: called {called - start:.3f}s after a throttle "
                            f"that asked for {wait:g}s"
                        )
    return found


def route_operations(routes: Iterable[BaseRoute]) -> OperationNamer:
    """Names requests by the ``name`` of the Starlette route that serves them (else ``unknown``)."""
    named = [route for route in routes if isinstance(route, Route)]

    def operation_of(scope: Scope, body: bytes) -> str:
        for route in named:
            match, _ = route.matches(scope)
            if match is Match.FULL:
                return route.name
        return UNKNOWN

    return operation_of


# --- ASGI helpers -----------------------------------------------------------------------------


class _Faulty:
    """An ASGI app behind a fault layer (an object, not a function: Starlette's ``Route`` would
    take a plain function for a request handler)."""

    def __init__(self, faults: Faults, app: ASGIApp, operation_of: OperationNamer) -> None:
        self._faults = faults
        self._app = app
        self._operation_of = operation_of

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._faults.serve(self._app, self._operation_of, scope, receive, send)


class _Tracker:
    """Passes messages on, noting the status and ``Retry-After`` of the answer."""

    def __init__(self, send: Send) -> None:
        self._send = send
        self.status: int | None = None
        self.retry_after: float | None = None

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = int(message["status"])
            for name, value in message.get("headers", []):
                if name.lower() == b"retry-after":
                    with contextlib.suppress(ValueError):
                        self.retry_after = float(value.decode("latin-1"))
        await self._send(message)


async def _read_body(receive: Receive) -> bytes | None:
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _discard(message: Message) -> None:
    """A ``send`` that loses the answer (the fake's, under a :class:`Failure` ``after_serving``)."""


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that hands over the already read ``body`` first."""
    pending = True

    async def replayed() -> Message:
        nonlocal pending
        if pending:
            pending = False
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed


async def _hang(seconds: float, receive: Receive) -> bool:
    """Wait ``seconds``, or less if the client goes away; True if it did."""

    async def disconnected() -> bool:
        while (await receive())["type"] != "http.disconnect":
            pass
        return True

    waiter = asyncio.ensure_future(disconnected())
    try:
        done, _ = await asyncio.wait({waiter}, timeout=seconds)
        return bool(done) and waiter.result()
    finally:
        if not waiter.done():
            waiter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await waiter


async def _drop(send: Send) -> None:
    """Start an answer that never comes: the server closes the connection mid-response.

    Under a real server (uvicorn) the client sees the connection closed before the body
    arrived; an in-process ``httpx.ASGITransport`` cannot show that and fails an assertion.
    """
    headers = [(b"content-type", b"application/json"), (b"content-length", b"1024")]
    await send({"type": "http.response.start", "status": 504, "headers": headers})


def _seconds(value: float) -> str:
    """A ``Retry-After`` value: delta-seconds, with a fraction only when there is one."""
    return f"{value:.3f}".rstrip("0").rstrip(".") if value != int(value) else str(int(value))


def _phrase(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return f"HTTP {status}"
