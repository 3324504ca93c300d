"""Small helpers shared by the simulated REST providers (OpenRouter, AgentMail, Telnyx).

Each fake speaks its own provider's error envelope, so nothing here builds one: callers pass an
:data:`ErrorBody` function that makes it, and these helpers only do the parts every fake repeats:

* :func:`missing_bearer` - the auth check. Real providers answer 401 when the
  ``Authorization: Bearer <token>`` header is missing or empty; the fakes accept any non-empty
  token, because they hold no accounts.
* :func:`error_response` - a JSON error with the provider's status code (and optional headers,
  such as ``Retry-After`` on a 429).
* :func:`read_json` - the request body as JSON, telling "no body" from "not JSON" so a fake can
  answer 400 in its own envelope instead of crashing; :func:`parse_body` goes on to validate it
  into a pydantic model (strict, as the real APIs are: ``"5"`` is not a number) and raises
  :class:`BodyError` listing every problem as ``(path, message)``.
* :func:`envelope_handlers` - Starlette exception handlers so an unknown path (404), a wrong
  method (405) or a bug in a fake (500) still answers in the provider's envelope.
* :class:`FakeRandom` - seeded ids and secrets, so a run with ``seed=1`` produces the same ids
  every time (reproducible demos and benchmarks), and :func:`iso_timestamp` for the
  ``created_at``/``updated_at`` strings every provider returns.

Making a fake misbehave (latency, error rates, 429s, rate limits, timeouts, list lag, queued
failures) is :mod:`providers.simulated.fault_layer`, shared by every fake.
"""

from __future__ import annotations

import json
import random
import string
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

ErrorBody = Callable[[int, str], dict[str, Any]]
"""``(status, message) -> body``: one provider's error envelope."""

NO_BODY: Any = object()
"""What :func:`read_json` returns for an empty request body."""

Body = TypeVar("Body", bound=BaseModel)


class InvalidJSON(ValueError):
    """The request body is not valid JSON."""


class BodyError(ValueError):
    """A request body failed validation; ``problems`` lists ``(path, message)`` pairs."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{path}: {message}" if path else message for path, message in problems))


def error_response(
    status: int, body: Mapping[str, Any], headers: Mapping[str, str] | None = None
) -> JSONResponse:
    """A JSON error answer with ``status`` and ``body`` (the provider's envelope)."""
    return JSONResponse(dict(body), status_code=status, headers=dict(headers or {}))


def missing_bearer(request: Request, envelope: ErrorBody) -> JSONResponse | None:
    """A 401 in ``envelope`` if the request carries no bearer token, else None."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return None
    return error_response(401, envelope(401, "Missing or invalid Authorization bearer token"))


async def read_json(request: Request) -> Any:
    """The decoded body, :data:`NO_BODY` if it is empty; raises :class:`InvalidJSON` if garbled."""
    raw = await request.body()
    if not raw.strip():
        return NO_BODY
    try:
        return json.loads(raw)
    except ValueError:
        raise InvalidJSON("request body is not valid JSON") from None


async def parse_body(request: Request, model: type[Body], *, required: bool = True) -> Body:
    """The request body validated into ``model``; an absent optional body validates ``{}``."""
    try:
        data = await read_json(request)
    except InvalidJSON as exc:
        raise BodyError([("", str(exc))]) from None
    if data is NO_BODY:
        if required:
            raise BodyError([("", "request body is required")])
        data = {}
    if not isinstance(data, dict):
        raise BodyError([("", "request body must be a JSON object")])
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = [(".".join(str(part) for part in error["loc"]), error["msg"]) for error in exc.errors()]
        raise BodyError(problems) from None


def envelope_handlers(
    envelope: ErrorBody,
) -> dict[Any, Callable[[Request, Exception], Awaitable[Response]]]:
    """``exception_handlers`` for a Starlette app: routing errors and crashes in ``envelope``."""

    async def http_error(request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        detail = exc.detail if isinstance(exc, HTTPException) else "Internal Server Error"
        return error_response(status, envelope(status, str(detail)))

    return {HTTPException: http_error, Exception: http_error}


def iso_timestamp(moment: datetime | None = None) -> str:
    """``2026-08-22T10:15:30.123Z``: UTC, millisecond precision, as the providers print them."""
    moment = moment or datetime.now(UTC)
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class FakeRandom:
    """Seeded source of ids and secrets; ``seed=None`` draws a random seed."""

    def __init__(self, seed: int | None = None) -> None:
        self._rng = random.Random(seed)

    def hex(self, length: int) -> str:
        """``length`` lowercase hex digits."""
        return "".join(self._rng.choices("0123456789abcdef", k=length))

    def token(self, length: int, alphabet: str = string.ascii_letters + string.digits) -> str:
        """``length`` characters drawn from ``alphabet``."""
        return "".join(self._rng.choices(alphabet, k=length))

    def digits(self, length: int) -> str:
        """``length`` decimal digits (numeric ids, phone numbers)."""
        return "".join(self._rng.choices(string.digits, k=length))

    def uuid(self) -> str:
        """A version-4 shaped UUID string."""
        h = self.hex(32)
        return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{'89ab'[int(h[16], 16) % 4]}{h[17:20]}-{h[20:]}"
