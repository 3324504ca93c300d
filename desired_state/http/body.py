"""Request bodies, read and decoded strictly and boundedly: a FastAPI route class of our own.

FastAPI reads a body with ``await request.body()`` (the whole stream, however long) and decodes
it with ``json.loads`` (which accepts a BOM, UTF-16 and duplicate keys). Routes built with
:class:`StrictJsonRoute` get a request whose ``body()`` and ``json()`` are ours instead; the
handler, the pydantic validation and the derived OpenAPI document stay FastAPI's. A router opts
in with ``APIRouter(route_class=StrictJsonRoute)``; another family of routes (the paid-jobs
router, ``routes_paid``) subclasses it to get the same rules under its own byte cap.

* **The size cap is enforced while reading** (issue 11): a ``Content-Length`` over the route's
  ``max_bytes`` (:data:`MAX_BODY_BYTES` by default) is refused before a byte is read, and a streamed body is refused as
  soon as it passes the cap, never buffered beyond it. Bodies over :data:`LARGE_BODY_BYTES` are
  read and decoded by at most :data:`LARGE_BODIES_AT_ONCE` requests at a time, so memory stays
  bounded however many such requests arrive together.
* **Decoding is bounded and kept off the event loop when it could be slow.** The rules are
  :mod:`desired_state.http.json_decode`'s (UTF-8 without BOM, no duplicate keys, at most
  ``max_values`` values). A body whose value count cannot exceed :data:`INLINE_VALUES` is
  decoded inline (a few milliseconds at most); any other is decoded by a worker process, since
  ``json.loads`` holds the GIL (a thread would stall the loop just the same). The answer comes
  back with ``marshal``; it is bounded by ``max_values``, so taking it in is cheap.
* **A body that is not JSON** (a ``Content-Type`` other than JSON) is a 415; a missing
  ``Content-Type`` is read as JSON, as the seed did.
"""

from __future__ import annotations

import asyncio
import email.message
import logging
import marshal
import sys
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, ClassVar

from fastapi import Request, Response
from fastapi.datastructures import Default, DefaultPlaceholder
from fastapi.routing import APIRoute
from starlette.types import Receive, Scope

from desired_state.http import json_decode
from desired_state.http.errors import ApiError, bad_input

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 8 * 1024 * 1024
LARGE_BODY_BYTES = 256 * 1024
LARGE_BODIES_AT_ONCE = 2
INLINE_VALUES = 20_000
DEFAULT_MAX_VALUES = 2_000
"""Values a body may hold by default: a create with 200 variables is about 420."""
WORKER_TIMEOUT = 10.0


class JsonWorker:
    """One long-lived ``python -I json_decode.py`` process, used by one request at a time."""

    def __init__(self) -> None:
        self._process: asyncio.subprocess.Process | None = None
        self._lock = asyncio.Lock()

    async def _started(self) -> asyncio.subprocess.Process:
        if self._process is None or self._process.returncode is not None:
            self._process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-I",
                json_decode.__file__,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
            )
        return self._process

    async def decode(self, raw: bytes, max_values: int) -> Any:
        async with self._lock:
            process = await self._started()
            assert process.stdin is not None and process.stdout is not None
            try:
                async with asyncio.timeout(WORKER_TIMEOUT):
                    process.stdin.write(json_decode.HEADER.pack(len(raw), max_values))
                    process.stdin.write(raw)
                    await process.stdin.drain()
                    (size,) = json_decode.ANSWER.unpack(await process.stdout.readexactly(json_decode.ANSWER.size))
                    answer = await process.stdout.readexactly(size)
            except BaseException:
                # Cancelled, timed out or broken mid-exchange: the framing is lost, start afresh.
                await self.close()
                raise
        result = marshal.loads(answer)  # noqa: S302 (our own child's answer: plain JSON values)
        if result[0] != 0:
            raise bad_input(result[1], status=result[0])
        return result[1]

    async def close(self) -> None:
        process, self._process = self._process, None
        if process is not None and process.returncode is None:
            process.kill()
            await process.wait()


class BodyDecoding:
    """What the app shares between requests for bodies: the worker and the large-body semaphore."""

    def __init__(self) -> None:
        self.worker = JsonWorker()
        self.large_bodies = asyncio.Semaphore(LARGE_BODIES_AT_ONCE)

    async def close(self) -> None:
        await self.worker.close()


def decoding_of(request: Request) -> BodyDecoding:
    """The app's :class:`BodyDecoding`, made on first use (so any app can mount a strict route)."""
    state = request.app.state
    decoding = getattr(state, "body_decoding", None)
    if decoding is None:
        decoding = state.body_decoding = BodyDecoding()
    assert isinstance(decoding, BodyDecoding)
    return decoding


def _is_json(content_type: str | None) -> bool:
    if not content_type:
        return True
    message = email.message.Message()
    message["content-type"] = content_type
    subtype = message.get_content_subtype()
    return message.get_content_maintype() == "application" and (subtype == "json" or subtype.endswith("+json"))


class StrictJsonRequest(Request):
    """A request whose body is read against the cap and decoded by our rules."""

    def __init__(
        self, scope: Scope, receive: Receive, max_values: int = DEFAULT_MAX_VALUES, max_bytes: int = MAX_BODY_BYTES
    ) -> None:
        super().__init__(scope, receive)
        self.max_values = max_values
        self.max_bytes = max_bytes
        self._large_slot: asyncio.Semaphore | None = None

    async def body(self) -> bytes:
        if hasattr(self, "_body"):
            return self._body
        declared = self.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            raise ApiError(413, f"body: larger than {self.max_bytes} bytes", headers={"Connection": "close"})
        chunks = bytearray()
        async for chunk in self.stream():
            chunks += chunk
            if len(chunks) > self.max_bytes:
                raise ApiError(413, f"body: larger than {self.max_bytes} bytes", headers={"Connection": "close"})
            if self._large_slot is None and len(chunks) > LARGE_BODY_BYTES:
                slots = decoding_of(self).large_bodies
                await slots.acquire()
                self._large_slot = slots
        if chunks and not _is_json(self.headers.get("content-type")) and not chunks.isspace():
            raise ApiError(415, "body: must be JSON (Content-Type: application/json)")
        self._body = bytes(chunks)
        return self._body

    async def json(self) -> Any:
        if hasattr(self, "_json"):
            return self._json
        raw = await self.body()
        if raw.isspace():  # whitespace only: no body, as an empty one is
            self.release()
            self._json = None
            return None
        try:
            if json_decode.estimated_values(raw) <= INLINE_VALUES:
                value = json_decode.decode(raw, self.max_values)
            else:
                value = await decoding_of(self).worker.decode(raw, self.max_values)
        except json_decode.DecodeError as exc:
            raise bad_input(exc.problems, status=exc.status) from None
        finally:
            self.release()
        if value is None:  # FastAPI would take it for "no body" and let an optional one through
            raise bad_input(["body: must be a JSON object, not null"])
        self._json = value
        return value

    def release(self) -> None:
        """Give back the large-body slot (decoding done, or the request over)."""
        slot, self._large_slot = self._large_slot, None
        if slot is not None:
            slot.release()


class StrictJsonRoute(APIRoute):
    """The route class for routers whose bodies are small JSON documents: at most
    :attr:`max_values` values in at most :attr:`max_bytes` bytes. A subclass may set either (or
    add its own handling around :meth:`get_route_handler`, as the paid routes' class does)."""

    max_values: ClassVar[int] = DEFAULT_MAX_VALUES
    max_bytes: ClassVar[int] = MAX_BODY_BYTES

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if isinstance(kwargs.get("strict_content_type", Default(True)), DefaultPlaceholder):
            kwargs["strict_content_type"] = False  # no Content-Type: read as JSON, as the seed did
        super().__init__(*args, **kwargs)

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler: Callable[[Request], Awaitable[Response]] = super().get_route_handler()
        max_values, max_bytes = self.max_values, self.max_bytes

        async def strict_handler(request: Request) -> Response:
            strict = StrictJsonRequest(request.scope, request.receive, max_values, max_bytes)
            try:
                return await handler(strict)
            finally:
                strict.release()

        return strict_handler


def strict_json_route(max_values: int = DEFAULT_MAX_VALUES) -> type[StrictJsonRoute]:
    """A route class whose requests decode bodies strictly, with at most ``max_values`` values."""
    values_bound = max_values

    class BoundedRoute(StrictJsonRoute):
        max_values = values_bound

    BoundedRoute.__name__ = f"StrictJsonRoute{max_values}"
    return BoundedRoute
