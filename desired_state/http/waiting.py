"""The convergence wait: a write answers once the loop has converged it, or 202 when it has not.

A write changes the desired row and then waits, bounded by ``wait_timeout``, for the reconcile
loop to converge that generation, polling the row the loop writes its progress to. With
``Prefer: respond-async`` (RFC 7240) it answers ``202`` at once with a status URL,
``/instances/{id}``; ``Prefer: wait=N`` bounds the wait further; a wait that runs out also answers
``202`` (the write stands: the loop carries on).

Why waiting is polling: the trigger on ``desired_instances`` notifies on caller changes only, not
on the loop's progress, and a primary-key read every few hundred milliseconds per waiting request
is cheaper than a second notification channel. A waiting request holds no connection between
two reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

from fastapi import Request
from fastapi.responses import JSONResponse, Response
from psycopg.rows import dict_row
from pydantic import BaseModel

from desired_state import queries
from desired_state.http.config import ApiConfig
from desired_state.http.database import Database
from desired_state.http.errors import ApiError
from desired_state.http.schemas import AcceptedResponse
from desired_state.vocabulary import Phase


@dataclass(frozen=True)
class Preferences:
    """RFC 7240 ``Prefer``: ``respond-async`` (answer 202 now) and ``wait=N`` (wait at most N s)."""

    respond_async: bool = False
    wait: float | None = None

    @classmethod
    def of(cls, request: Request) -> Preferences:
        respond_async = False
        wait: float | None = None
        for header in request.headers.getlist("prefer"):
            for token in header.split(","):
                name, _, argument = token.strip().partition("=")
                name = name.strip().lower()
                if name == "respond-async":
                    respond_async = True
                elif name == "wait":
                    with contextlib.suppress(ValueError):
                        seconds = float(argument.strip().strip('"'))
                        if seconds >= 0:
                            wait = seconds
        return cls(respond_async, wait)

    def wait_seconds(self, limit: float) -> float:
        if self.respond_async and self.wait is None:
            return 0.0
        return limit if self.wait is None else min(self.wait, limit)


class Progress(BaseModel):
    generation: int
    observed_generation: int | None
    present: bool
    last_error: str | None
    phase: str
    """As shown to callers: Deleting for every row marked absent."""
    stored_phase: str
    """As the reconciler wrote it (a teardown that cannot proceed is Failed)."""


@dataclass
class Waited:
    """How a wait ended: ``done``, ``failed``, ``gone`` (row deleted) or ``timeout``."""

    outcome: Literal["done", "failed", "gone", "timeout"]
    progress: Progress | None


def status_url(instance_id: str) -> str:
    return f"/instances/{instance_id}"


def json_answer(model: BaseModel, status: int = 200, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(model.model_dump(mode="json"), status_code=status, headers=headers)


class Convergence:
    """Waits for the loop; set :attr:`stopping` to make every waiting request answer 202 now."""

    def __init__(self, config: ApiConfig, database: Database) -> None:
        self.config = config
        self.database = database
        self.stopping = asyncio.Event()

    async def progress(self, instance_id: str) -> Progress | None:
        async with self.database.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(queries.SELECT_PROGRESS, {"instance_id": instance_id})
            row = await cur.fetchone()
        return None if row is None else Progress.model_validate(row)

    async def wait(
        self,
        instance_id: str,
        within: float,
        *,
        generation: int | None,
        extra: Callable[[], Awaitable[bool]] | None = None,
    ) -> Waited:
        """Poll until converged at ``generation`` (or, with None, until the row is gone)."""
        deadline = time.monotonic() + within
        pause = 0.02
        while True:
            progress = await self.progress(instance_id)
            if progress is None:
                return Waited("done" if generation is None else "gone", None)
            # The trigger clears last_error on every new generation, so a Failed row with an
            # error failed at (or after) the generation we wrote.
            if (
                progress.stored_phase == Phase.FAILED
                and progress.last_error
                and progress.generation >= (generation or 0)
            ):
                return Waited("failed", progress)
            if (
                generation is not None
                and progress.present
                and progress.phase == Phase.READY
                and (progress.observed_generation or 0) >= generation
                and (extra is None or await extra())
            ):
                return Waited("done", progress)
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.stopping.is_set():
                return Waited("timeout", progress)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), timeout=min(pause, remaining))
            pause = min(pause * 1.5, self.config.poll_interval)

    async def answer(
        self,
        request: Request,
        instance_id: str,
        generation: int | None,
        render: Callable[[], Awaitable[BaseModel]],
        extra: Callable[[], Awaitable[bool]] | None = None,
    ) -> Response:
        """Wait as the caller prefers, then answer 200 (converged), 202 (still going) or an error."""
        preferences = Preferences.of(request)
        waited = await self.wait(
            instance_id,
            preferences.wait_seconds(self.config.wait_timeout),
            generation=generation,
            extra=extra,
        )
        if waited.outcome == "done":
            return json_answer(await render())
        if waited.outcome == "gone":
            raise ApiError(409, f"instance {instance_id} was destroyed before it converged")
        progress = waited.progress
        assert progress is not None
        if waited.outcome == "failed":
            raise ApiError(
                502,
                f"instance {instance_id} failed: {progress.last_error}",
                headers={"Location": status_url(instance_id)},
            )
        accepted = AcceptedResponse(
            instanceId=instance_id, phase=progress.phase, generation=generation, statusUrl=status_url(instance_id)
        )
        headers = {"Location": status_url(instance_id)}
        if preferences.respond_async:
            headers["Preference-Applied"] = "respond-async"
        return json_answer(accepted, status=202, headers=headers)
