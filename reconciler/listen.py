"""Postgres ``LISTEN`` for the loops: one connection, kept open, reopened with backoff when lost.

The reconcile loop and the job loop both wake on ``NOTIFY`` (a write commits, the loop claims it
at once instead of at its next tick). A notification is a hint, never the only way work is
found: every loop also ticks on a timer, and :func:`listen_forever` calls ``on_connect`` after
every (re)connection so whatever was written while nobody listened is looked at right away.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence

import psycopg
from psycopg import sql

log = logging.getLogger(__name__)

FIRST_RECONNECT_DELAY = 0.5
"""Seconds before the first reconnection; doubles per failure up to :data:`MAX_RECONNECT_DELAY`."""
MAX_RECONNECT_DELAY = 10.0


async def listen_forever(
    database_url: str,
    channels: Sequence[str],
    stop: asyncio.Event,
    *,
    on_connect: Callable[[], None],
    on_notice: Callable[[psycopg.Notify], None],
    name: str,
) -> None:
    """``LISTEN`` on ``channels`` and hand each notification to ``on_notice`` until ``stop`` is set.

    ``name`` says whose connection it is in the warning logged when it is lost.
    """
    delay = FIRST_RECONNECT_DELAY
    while not stop.is_set():
        try:
            conn = await psycopg.AsyncConnection.connect(database_url, autocommit=True)
            async with conn:
                for channel in channels:
                    await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
                delay = FIRST_RECONNECT_DELAY
                on_connect()  # anything written while we were not listening
                async for notice in conn.notifies():
                    on_notice(notice)
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            log.warning("%s LISTEN connection lost (%s); reconnecting in %.1fs", name, type(exc).__name__, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_RECONNECT_DELAY)
