"""One claim primitive: due rows with a short lease, renewed by the worker, and a fencing token.

Desired instances and jobs (and later webhook deliveries) are all worked the same way
(ARCHITECTURE.md sections 3.6 and 8), and this module is the one implementation of it. Each table
supplies its own named statements (:class:`ClaimStatements`); the mechanism is the same for all:

* **Claim** a batch in one statement: ``UPDATE … FROM (SELECT … FOR UPDATE SKIP LOCKED LIMIT n)
  … RETURNING``. Replicas claim disjoint rows; each claim bumps the row's fencing token and sets
  ``lease_owner`` and a short ``lease_expires_at``.
* **Renew** every claim this worker holds, in one statement every ``renew_every`` seconds, from a
  background task, whether or not the work in progress writes anything. So a slow but living
  worker is never overtaken, and a dead one's claims expire ``lease_seconds`` after its last
  renewal: another replica picks them up within that (plus one tick). The lease is only about
  liveness; it is separate from a job's deadline and from the fencing token.
* **Fence** every write: the table's fence statement locks the row and matches the token; no row
  back means another claim (or a cancellation, or a termination) came in between, and the writer
  gets :class:`LeaseLost` and stops. A renewal that matches nothing reports the claim lost too
  (``on_lost``), so a job's handler can be stopped without waiting for its next write.
* **Release** at once, on shutdown, the claims this worker took but has not started: they are due
  again for any replica immediately instead of after the lease.

A held claim is ``queued`` from the claim until its work starts (:meth:`Leases.start`) and
``started`` after; :meth:`Leases.done` forgets it once the work's own finishing statement has
released the row.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Hashable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import AsyncConnection
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

log = logging.getLogger(__name__)


class LeaseLost(Exception):
    """Another claim, a cancellation or a termination came first; this worker must stop writing the row."""


@dataclass(frozen=True)
class ClaimStatements:
    """The named SQL one table supplies. Parameters every statement receives:

    ``claim``: ``owner``, ``limit``, ``lease_seconds`` and any table-specific ones; returns the
    claimed rows, with the row's key in column ``key`` and the new token in ``fencing_token``.
    ``renew``: ``owner``, ``keys``, ``tokens`` (parallel arrays), ``lease_seconds``; returns the
    key and token of every claim still ours.
    ``release``: ``owner``, ``keys``, ``tokens``; hands the claims back (due now, no lease).
    ``fence``: ``key``, ``token``, ``lease_seconds``; locks the row and returns it while the claim
    is still the latest, nothing otherwise.
    """

    table: str
    key: str
    claim: str
    renew: str
    release: str
    fence: str


@dataclass(frozen=True)
class LeaseSettings:
    lease_seconds: float = 10.0
    """How long a claim stays exclusive without a renewal."""
    renew_every: float = 0.0
    """Seconds between renewals; 0 means a third of ``lease_seconds``."""

    @property
    def renew_interval(self) -> float:
        return self.renew_every if self.renew_every > 0 else self.lease_seconds / 3.0


Held = tuple[Hashable, int]
"""A claim this worker holds: (row key, fencing token)."""


class Leases:
    """The claims one worker holds on one table, and the background renewal of their leases."""

    def __init__(
        self,
        pool: AsyncConnectionPool[AsyncConnection[Any]],
        statements: ClaimStatements,
        *,
        owner: str,
        settings: LeaseSettings,
        on_lost: Callable[[Hashable, int], None] | None = None,
        params: Callable[[], Mapping[str, Any]] | None = None,
    ) -> None:
        self._pool = pool
        self.statements = statements
        self.owner = owner
        self.settings = settings
        self.on_lost = on_lost
        self._params = params  # added to every statement (a table whose times follow a clock: ``now``)
        self._held: dict[Held, bool] = {}  # claim -> started
        self._renewing = 0
        self._renewer: asyncio.Task[None] | None = None

    # -- holding ----------------------------------------------------------------------------------

    async def claim(self, limit: int, params: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        """Claim up to ``limit`` due rows in one statement; they are held (queued) from now on."""
        if limit <= 0:
            return []
        values = self._values(params, limit=limit, lease_seconds=self.settings.lease_seconds)
        async with self._pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(self.statements.claim, values)
            rows = await cur.fetchall()
        for row in rows:
            self._held[(row[self.statements.key], int(row["fencing_token"]))] = False
        return rows

    def start(self, key: Hashable, token: int) -> bool:
        """Mark a claim started; False when it was handed back or lost meanwhile (do not start it)."""
        if (key, token) not in self._held:
            return False
        self._held[(key, token)] = True
        return True

    def done(self, key: Hashable, token: int) -> None:
        """Forget a claim whose row the work itself released (finished, requeued, or lost)."""
        self._held.pop((key, token), None)

    def unstarted(self) -> list[Held]:
        return [claim for claim, started in self._held.items() if not started]

    # -- renewing ---------------------------------------------------------------------------------

    async def renew(self) -> list[Held]:
        """Extend the lease of every held claim in one statement; returns (and forgets) the lost ones."""
        held = list(self._held)
        if not held:
            return []
        async with self._pool.connection() as conn, conn.cursor() as cur:
            await cur.execute(
                self.statements.renew, self._values(self._pairs(held), lease_seconds=self.settings.lease_seconds)
            )
            kept = {(row[0], int(row[1])) for row in await cur.fetchall()}
        # A claim finished while the statement ran is no longer held either way: not "lost".
        lost = [claim for claim in held if claim not in kept and claim in self._held]
        for claim in lost:
            self._held.pop(claim, None)
            if self.on_lost is not None:
                self.on_lost(*claim)
        return lost

    @asynccontextmanager
    async def renewing(self) -> AsyncIterator[None]:
        """Renew the held claims in the background while the block runs (re-entrant)."""
        self._renewing += 1
        if self._renewer is None or self._renewer.done():
            self._renewer = asyncio.create_task(self._renew_forever(), name=f"renew-{self.statements.table}")
        try:
            yield
        finally:
            self._renewing -= 1
            if self._renewing == 0 and self._renewer is not None:
                self._renewer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._renewer
                self._renewer = None

    async def _renew_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.renew_interval)
            try:
                await self.renew()
            except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
                # The next renewal tries again; if none gets through within the lease, the claims
                # expire and the fence stops this worker's writes.
                log.warning("lease renewal of %s failed: %s", self.statements.table, type(exc).__name__)
            except Exception:
                log.exception("lease renewal of %s failed", self.statements.table)

    # -- handing back -----------------------------------------------------------------------------

    async def release(self, claims: Sequence[Held]) -> list[Held]:
        """Hand claims back (due now, no lease); returns those that were still ours."""
        for claim in claims:
            self._held.pop(claim, None)  # first: a queued task that wakes up now does not start
        if not claims:
            return []
        async with self._pool.connection() as conn, conn.cursor() as cur:
            await cur.execute(self.statements.release, self._values(self._pairs(claims)))
            return [(row[0], int(row[1])) for row in await cur.fetchall()]

    async def release_unstarted(self) -> list[Held]:
        """Shutting down: hand back at once every claim whose work has not started."""
        released = await self.release(self.unstarted())
        if released:
            log.info("handed back %d unstarted %s claims", len(released), self.statements.table)
        return released

    # -- fencing ----------------------------------------------------------------------------------

    async def check_fence(
        self, conn: AsyncConnection[Any], key: Hashable, token: int, params: Mapping[str, Any] | None = None
    ) -> tuple[Any, ...]:
        """Inside a write transaction: lock the row if our claim is still the latest, else LeaseLost."""
        values = self._values(params, key=key, token=token, lease_seconds=self.settings.lease_seconds)
        cur = await conn.execute(self.statements.fence, values)
        row = await cur.fetchone()
        if row is None:
            raise LeaseLost(str(key))
        return tuple(row)

    def _pairs(self, claims: Sequence[Held]) -> dict[str, Any]:
        return {"keys": [key for key, _ in claims], "tokens": [token for _, token in claims]}

    def _values(self, params: Mapping[str, Any] | None, **values: Any) -> dict[str, Any]:
        return {**(self._params() if self._params else {}), **(params or {}), "owner": self.owner, **values}
