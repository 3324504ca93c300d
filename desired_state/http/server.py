"""Serving the app: uvicorn on a socket we bind, without uvicorn's signal handling.

The caller (``reconciler run``) owns the signals and sets ``stop``; the app's lifespan (the
Postgres pool) runs around the server, so a database that cannot be reached raises
:class:`ApiStartError` here instead of ending the process from inside uvicorn.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import Any

import uvicorn
from fastapi import FastAPI

from desired_state.http.config import ApiStartError


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: the caller owns signals and sets ``stop``."""

    @contextlib.contextmanager
    def capture_signals(self) -> Any:
        yield


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto=IPPROTO_TCP matters: asyncio sets TCP_NODELAY on accepted sockets only when the
    # listening socket says TCP; without it every response written in two parts (headers, body)
    # waits ~40 ms for the client's delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ApiStartError(f"the HTTP API cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.set_inheritable(True)
    return sock


def begin_shutdown(app: FastAPI) -> None:
    """Make requests that are waiting for convergence answer 202 now (the write stands)."""
    stopping = getattr(app.state, "stopping", None)
    if isinstance(stopping, asyncio.Event):
        stopping.set()


async def serve(app: FastAPI, host: str, port: int, stop: asyncio.Event) -> None:
    """Serve ``app`` on ``host:port`` until ``stop`` is set, then finish requests in flight."""
    sock = _listen(host, port)
    try:
        async with app.router.lifespan_context(app):
            server = _Server(
                uvicorn.Config(
                    app,
                    lifespan="off",
                    log_level="warning",
                    access_log=False,
                    timeout_graceful_shutdown=10,
                )
            )
            task = asyncio.create_task(server.serve(sockets=[sock]))
            stopped = asyncio.create_task(stop.wait())
            try:
                await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                begin_shutdown(app)
                server.should_exit = True
                stopped.cancel()
                try:
                    await task
                except SystemExit:
                    raise ApiStartError("the HTTP API stopped unexpectedly (see the log above)") from None
    finally:
        sock.close()
