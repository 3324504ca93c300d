"""What a handler is, what it gets (:class:`JobContext`), and the registry from service id to handler.

A job handler is an ``async`` callable taking a :class:`JobContext` and returning the job's result
(checked against the service's output model before it is stored). It reports progress with
``await job.progress(pct, note)``: a fenced write that raises :class:`JobCancelled` when the job is
no longer ours (cancelled, timed out, or re-claimed after a lost lease), and it writes anything
else of its own inside ``async with job.fenced() as conn:`` so a stale run writes nothing. The loop
stops a handler whose job ended elsewhere by cancelling its task, so handlers need not poll.

A handler ends a job as failed by raising :class:`JobFailed` with a code of
:class:`~desired_state.services.vocabulary.JobErrorCode`; any other exception fails it as
``handler_failed`` (its type is recorded, never its text, which might quote a secret).

A proxy handler (``runtime: proxy``) is called by the HTTP layer inside the request: an ``async``
callable from the validated input and the job id to the upstream's answer, raising
:class:`~desired_state.services.definitions.UpstreamError`. :meth:`HandlerRegistry.call_proxy` is
the one callable the paid routes are given (``PaidApiConfig.proxy_call``); the loop never calls
it, and never re-sends a proxy call.

Adding a service is its definition (``desired_state.services``) plus one ``register`` call here;
the loop and the routes look handlers up by id. A handler may also bring a periodic ``sweep``, a
level-triggered correction the loop runs every tick (``agents.provision`` tears down the instance
of every refunded provision job that still has one).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol
from uuid import UUID

from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from desired_state.services.definitions import ServiceDefinition, UpstreamError
from desired_state.services.vocabulary import JobErrorCode
from reconciler.claims import LeaseLost


class JobFailed(Exception):
    """End the job as ``failed`` (refunded) with this code and message (no secrets in either)."""

    def __init__(self, code: JobErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class JobCancelled(LeaseLost):
    """The job is no longer this worker's (cancelled, timed out or re-claimed): stop, write nothing."""


class ProgressWriter(Protocol):
    async def __call__(self, job: JobContext, pct: float, note: str | None) -> None: ...


@dataclass
class JobContext:
    """One run of one job, as its handler sees it."""

    job_id: UUID
    token: int
    service: ServiceDefinition
    caller_id: UUID
    input: dict[str, Any]
    attempt: int
    deadline: datetime
    pool: AsyncConnectionPool[AsyncConnection[Any]]
    _write_progress: ProgressWriter
    _fence: Callable[[AsyncConnection[Any]], Awaitable[None]]
    stopped: bool = field(default=False)
    """True once the loop decided this run must stop (its task is being cancelled)."""

    async def progress(self, pct: float, note: str | None = None) -> None:
        """Record progress (``pct`` in 0..1); raises :class:`JobCancelled` if the job is no longer ours."""
        if self.stopped:
            raise JobCancelled(str(self.job_id))
        await self._write_progress(self, min(1.0, max(0.0, float(pct))), note)

    @asynccontextmanager
    async def fenced(self) -> AsyncIterator[AsyncConnection[Any]]:
        """A transaction that commits only while the job is still running under this claim."""
        async with self.pool.connection() as conn, conn.transaction():
            try:
                await self._fence(conn)
            except LeaseLost:
                raise JobCancelled(str(self.job_id)) from None
            yield conn


JobHandler = Callable[[JobContext], Coroutine[Any, Any, Mapping[str, Any]]]
ProxyHandler = Callable[[Mapping[str, Any], UUID], Awaitable[Mapping[str, Any]]]
"""A proxy call: (validated input, job id) -> the upstream's answer; raises :class:`UpstreamError`."""
Sweep = Callable[[AsyncConnectionPool[AsyncConnection[Any]]], Awaitable[int]]
"""A handler's periodic correction; returns how many rows it fixed."""


class HandlerRegistry:
    """Service id -> the code that runs it."""

    def __init__(self) -> None:
        self._jobs: dict[str, JobHandler] = {}
        self._proxies: dict[str, ProxyHandler] = {}
        self._sweeps: dict[str, Sweep] = {}

    def register(self, service_id: str, handler: JobHandler, *, sweep: Sweep | None = None) -> None:
        if service_id in self._jobs or service_id in self._proxies:
            raise ValueError(f"service {service_id} has a handler already")
        self._jobs[service_id] = handler
        if sweep is not None:
            self._sweeps[service_id] = sweep

    def register_proxy(self, service_id: str, handler: ProxyHandler) -> None:
        if service_id in self._jobs or service_id in self._proxies:
            raise ValueError(f"service {service_id} has a handler already")
        self._proxies[service_id] = handler

    def job(self, service_id: str) -> JobHandler | None:
        return self._jobs.get(service_id)

    def proxy(self, service_id: str) -> ProxyHandler | None:
        return self._proxies.get(service_id)

    async def call_proxy(self, definition: ServiceDefinition, data: dict[str, Any], job_id: UUID) -> Any:
        """The paid routes' ``proxy_call``: run the proxy handler of ``definition``."""
        handler = self._proxies.get(definition.id)
        if handler is None:
            raise UpstreamError(JobErrorCode.UPSTREAM_NOT_CONFIGURED, f"{definition.id} has no handler here")
        return await handler(data, job_id)

    def sweeps(self) -> Mapping[str, Sweep]:
        return dict(self._sweeps)

    def __contains__(self, service_id: object) -> bool:
        return service_id in self._jobs or service_id in self._proxies
