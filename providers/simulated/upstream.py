"""A simulated upstream for the paid proxy service ``util.echo``: it answers what it was sent.

``util.echo`` forwards its input, any JSON object, to the upstream at ``UTIL_ECHO_BASE_URL`` and
returns the answer. ``reconciler simulate`` serves this fake under ``/upstream``, so
``UTIL_ECHO_BASE_URL=<root>/upstream`` is all a demo or a test needs:

* ``POST /echo`` with a JSON object answers **200** ``{"echo": <the object>}``. The wrapper
  shows the answer came from the upstream (an output equal to the input could be a local copy).
* A body that is not a JSON object (empty, garbled, an array, a number; ``NaN`` or
  ``Infinity``, which JSON does not have) answers 400; one over :data:`MAX_BODY_BYTES` 413;
  another path 404 and another method 405. Errors use the envelope
  ``{"error": {"code": "<code>", "message": "..."}}``. No token is needed (the service keeps
  no credential for its upstream).

It holds nothing, so it has no resources to list or reset; what it has is the shared fault layer
(:attr:`FakeUpstream.faults`, :mod:`providers.simulated.fault_layer`) with every knob the other
fakes have: latency, error rates, 429 with ``Retry-After``, rate limits, timeouts (504 or a
dropped connection) and queued failures, on the one operation :data:`OPERATIONS` names,
``echo``. That is how a test makes the proxy meet a slow, failing or throttling upstream.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp

from providers.simulated._common import envelope_handlers, error_response
from providers.simulated.fault_layer import Faults, route_operations

OPERATIONS = ("echo",)
"""The fault layer's names for this fake's routes."""
MAX_BODY_BYTES = 1024 * 1024
"""The largest body ``POST /echo`` takes (1 MiB); larger is a 413."""

_CODES = {
    400: "invalid_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    408: "timeout",
    413: "payload_too_large",
    429: "rate_limited",
    504: "timeout",
}


def error_body(status: int, message: str) -> dict[str, Any]:
    """The upstream's error envelope: a short code for the status, and a message."""
    code = _CODES.get(status, "upstream_error" if status >= 500 else "error")
    return {"error": {"code": code, "message": message}}


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


class FakeUpstream:
    """The ``util.echo`` upstream. ``seed`` and ``clock`` drive its fault layer, as for every fake."""

    def __init__(self, seed: int | None = None, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.faults = Faults("upstream", error_body, seed=seed, clock=clock)
        routes = [Route("/echo", self._echo, methods=["POST"], name="echo")]
        app = Starlette(routes=routes, exception_handlers=envelope_handlers(error_body))
        self._app = self.faults.wrap(app, route_operations(routes))

    def asgi(self) -> ASGIApp:
        return self._app

    def reset(self) -> None:
        """Forget queued failures, rate-limit buckets and logged requests (the fault plan stays)."""
        self.faults.reset()

    async def _echo(self, request: Request) -> Response:
        raw = await request.body()
        if len(raw) > MAX_BODY_BYTES:
            return error_response(413, error_body(413, f"the body is over {MAX_BODY_BYTES} bytes"))
        try:
            data = json.loads(raw, parse_constant=_no_constant)
        except ValueError:
            return error_response(400, error_body(400, "the body must be a JSON object"))
        if not isinstance(data, dict):
            return error_response(400, error_body(400, "the body must be a JSON object"))
        return JSONResponse({"echo": data})
