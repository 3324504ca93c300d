"""The API's Postgres pool, tuned so a lost database fails fast and is found again fast.

Issue 11 found that with Postgres stopped every database route answered 503 only after 30 s (the
pool's default wait for a connection), and that after a long outage the API kept answering 503
for about 100 s once Postgres was back: the pool retries a lost connection with exponential
backoff, and a retry scheduled a minute out is what the next request waited behind. Here:

* a request waits at most ``database_timeout`` (1.5 s) for a connection, then answers 503 with
  ``Retry-After`` (also with ``Prefer: respond-async``: the write itself needs the database);
* every connection is checked on checkout (:meth:`Database.checkout`), so one ended by the server
  (a restart, ``pg_terminate_backend``) is dropped instead of failing the request that drew it.
  The check costs no round trip unless the connection has something to read: an idle
  connection's socket is readable only when the server wrote to it unasked, which for this pool
  (no ``LISTEN``) is nearly always its goodbye. Only then is the ``check_connection`` round trip
  run. A dead connection is replaced and the next one tried at once: psycopg_pool's own check
  loop backs off a second after each failed check, so a restart that ended four idle
  connections cost the next request 503. A round trip per checkout was also two of the four
  round trips of an HTTP admission (issue 14);
* a reconnection attempt gives up after :data:`RECONNECT_WINDOW` seconds, so its backoff never
  grows past a second or two, and the next request or probe starts a fresh attempt at once;
  connecting itself times out after :data:`CONNECT_TIMEOUT` seconds (a host that does not answer);
* a watcher probes the database every :data:`PROBE_INTERVAL` seconds even without traffic, which
  keeps the ``reconciler_api_database_up`` gauge true and starts the reconnection early.

The loop has its own pool (``reconciler/runtime.py``); this module only answers for the API's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import select
import time
from collections.abc import AsyncIterator
from typing import Any

import psycopg
from prometheus_client import Counter, Gauge
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from desired_state.http.config import ApiConfig, ApiStartError
from desired_state.http.errors import ApiError, DatabaseUnavailable

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 2
RECONNECT_WINDOW = 2.0
PROBE_INTERVAL = 2.0
START_TIMEOUT = 30.0

DATABASE_UP = Gauge(
    "reconciler_api_database_up",
    "1 while the HTTP API's last database probe or query succeeded, 0 after one failed.",
)
DATABASE_UNAVAILABLE = Counter(
    "reconciler_api_database_unavailable",
    "HTTP requests answered 503 because the database could not be reached.",
)

Pool = AsyncConnectionPool[psycopg.AsyncConnection[Any]]


async def is_alive(conn: psycopg.AsyncConnection[Any]) -> bool:
    """Whether an idle pooled connection still works; a round trip only when its socket is readable."""
    if conn.closed:
        return False
    poller = select.poll()  # not select.select: a busy process may hold descriptors above 1024
    poller.register(conn.fileno(), select.POLLIN)
    if not poller.poll(0):
        return True
    try:
        await AsyncConnectionPool.check_connection(conn)
    except psycopg.Error:
        return False
    return True


class Database:
    """The pool (opened by the app's lifespan), its fail-fast checkout and its health."""

    def __init__(self, config: ApiConfig) -> None:
        self.config = config
        self._pool: Pool | None = None
        self._watcher: asyncio.Task[None] | None = None

    @contextlib.asynccontextmanager
    async def opened(self) -> AsyncIterator[None]:
        pool: Pool = AsyncConnectionPool(
            self.config.database_url,
            min_size=1,
            max_size=self.config.pool_size,
            kwargs={"autocommit": True, "connect_timeout": CONNECT_TIMEOUT},
            open=False,
            name="api",
            timeout=self.config.database_timeout,
            reconnect_timeout=RECONNECT_WINDOW,
        )
        try:
            await pool.open(wait=True, timeout=START_TIMEOUT)
        except PoolTimeout:
            await pool.close()
            gave_up = f"gave up after {START_TIMEOUT:.0f} s"
            raise ApiStartError(f"the HTTP API cannot connect to Postgres ({gave_up})") from None
        self._pool = pool
        DATABASE_UP.set(1)
        self._watcher = asyncio.create_task(self._watch(), name="api-database-watcher")
        try:
            yield
        finally:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
            self._pool = None
            await pool.close()

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """A pooled connection, or :class:`DatabaseUnavailable` within ``database_timeout``."""
        if self._pool is None:
            raise ApiError(503, "the API is not ready (database pool closed)", headers={"Retry-After": "5"})
        pool = self._pool
        try:
            conn = await self.checkout(pool, self.config.database_timeout)
            try:
                async with conn:  # the pool's own context: commit, or roll back on an error
                    yield conn
            finally:
                await pool.putconn(conn)
        except PoolTimeout:
            raise DatabaseUnavailable from None

    @staticmethod
    async def checkout(pool: Pool, within: float) -> psycopg.AsyncConnection[Any]:
        """A live connection within ``within`` seconds (``PoolTimeout`` otherwise); dead ones are replaced."""
        deadline = time.monotonic() + within
        while True:
            conn = await pool.getconn(timeout=max(0.0, deadline - time.monotonic()))
            try:
                alive = await is_alive(conn)
            except BaseException:  # cancelled mid-check (a probe's timeout): the connection goes back
                await pool.putconn(conn)
                raise
            if alive:
                return conn
            await conn.close()
            await pool.putconn(conn)  # a closed connection is discarded and a new one opened

    def mark_unavailable(self) -> None:
        DATABASE_UP.set(0)
        DATABASE_UNAVAILABLE.inc()

    async def probe(self) -> tuple[float | None, str | None]:
        """``(latency in ms, None)`` after a ``SELECT 1``, or ``(None, error class)``."""
        if self._pool is None:
            return None, "PoolClosed"
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self.config.database_timeout):
                conn = await self.checkout(self._pool, self.config.database_timeout)
                try:
                    await conn.execute("SELECT 1")
                finally:
                    await self._pool.putconn(conn)
        except (psycopg.Error, PoolTimeout, TimeoutError) as exc:
            DATABASE_UP.set(0)
            return None, type(exc).__name__
        DATABASE_UP.set(1)
        return round((time.perf_counter() - started) * 1000, 2), None

    async def _watch(self) -> None:
        was_up = True
        while True:
            await asyncio.sleep(PROBE_INTERVAL)
            latency, error = await self.probe()
            if (latency is not None) != was_up:
                was_up = latency is not None
                if was_up:
                    log.warning("database reachable again")
                else:
                    log.error("database unreachable: %s", error)
