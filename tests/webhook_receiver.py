"""A real webhook receiver on loopback for the webhook tests.

It records every request (headers and exact body bytes), answers from a script of responses
(200 when the script is empty), can hold requests open (to kill a sender mid-request), and
deduplicates on ``webhook-id`` as the Standard Webhooks specification tells receivers to.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

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
