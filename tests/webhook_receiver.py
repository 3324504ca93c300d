"""A real webhook receiver on loopback for the webhook tests.

It records every request (headers and exact body bytes), answers from a script of responses
(200 when the script is empty), can hold requests open (to kill a sender mid-request), and
deduplicates on ``webhook-id`` as the Standard Webhooks specification tells receivers to.
:func:`running_tls_receiver` serves the same receiver over TLS and records each handshake's SNI name.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import ssl
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import uvicorn
from starlette.types import Receive, Scope, Send

from providers.simulated.server import serve_in_background


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass(frozen=True)
class Answer:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b"ok"


class Receiver:
    def __init__(self) -> None:
        self.received: list[Received] = []
        self.script: list[Answer] = []
        self.delay: tuple[float, float] = (0.0, 0.0)
        self.hold: asyncio.Event | None = None
        self.root = ""
        self.arrived = asyncio.Event()
        self.server_names: list[str | None] = []
        """The SNI name of every TLS handshake (None: the client sent none); TLS receivers only."""

    @property
    def url(self) -> str:
        return f"{self.root}/hook"

    def deliveries(self) -> list[Received]:
        return [r for r in self.received if r.path == "/hook"]

    def ids(self) -> Counter[str]:
        return Counter(r.headers["webhook-id"] for r in self.deliveries())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert scope["type"] == "http"
        body = b""
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the sender died mid-request: nothing was delivered, nothing is recorded
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        self.received.append(Received(scope["path"], headers, body))
        self.arrived.set()
        if self.hold is not None:
            await self.hold.wait()
        low, high = self.delay
        if high > 0:
            await asyncio.sleep(random.uniform(low, high))
        answer = self.script.pop(0) if self.script else Answer()
        raw_headers = [(k.lower().encode(), v.encode()) for k, v in answer.headers.items()]
        await send({"type": "http.response.start", "status": answer.status, "headers": raw_headers})
        await send({"type": "http.response.body", "body": answer.body})


@asynccontextmanager
async def running_receiver() -> AsyncIterator[Receiver]:
    receiver = Receiver()
    async with serve_in_background(receiver) as root:
        receiver.root = root
        yield receiver


@asynccontextmanager
async def running_tls_receiver(certificate: ssl.SSLContext) -> AsyncIterator[Receiver]:
    """A receiver at ``https://localhost:PORT`` presenting ``certificate`` (a server context).

    ``serve_in_background`` has no TLS, so uvicorn is started here with the context put in its
    loaded config (the SNI callback must be on the very context that does the handshake).
    """
    receiver = Receiver()

    def record_server_name(_: ssl.SSLObject, name: str | None, __: ssl.SSLContext) -> None:
        receiver.server_names.append(name)

    certificate.sni_callback = record_server_name
    config = uvicorn.Config(receiver, log_level="warning", lifespan="off", access_log=False)
    config.load()
    config.ssl = certificate
    server = uvicorn.Server(config)
    sockets = _loopback_sockets()
    task = asyncio.create_task(server.serve(sockets=sockets))
    try:
        while not server.started:
            if task.done():
                task.result()  # re-raise why it could not start
            await asyncio.sleep(0.01)
        receiver.root = f"https://localhost:{sockets[0].getsockname()[1]}"
        yield receiver
    finally:
        server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, timeout=5)
        for sock in sockets:
            sock.close()


def _loopback_sockets() -> list[socket.socket]:
    """A free port on 127.0.0.1, and the same port on ::1 where there is one: the sender connects
    to the first address ``localhost`` resolves to, which may be either."""
    ipv4 = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    ipv4.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ipv4.bind(("127.0.0.1", 0))
    sockets = [ipv4]
    try:
        ipv6 = socket.socket(socket.AF_INET6, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    except OSError:
        return sockets  # no IPv6 on this machine
    try:
        ipv6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        ipv6.bind(("::1", ipv4.getsockname()[1]))
    except OSError:
        ipv6.close()
        return sockets
    return [*sockets, ipv6]
