"""Authentication: every path but the probes needs ``Authorization: Bearer <SERVICES_API_KEY>``.

A middleware rather than a route dependency, so nothing can be mounted around it: unknown paths,
``/openapi.json`` and any route added later are covered the same way (the seed once leaked keys
through routers mounted before its auth middleware). The token is compared in constant time.
The routers still declare the scheme (:data:`BEARER`, which checks nothing itself) so that the
OpenAPI document says which operations need it.
"""

from __future__ import annotations

import hmac

from fastapi.security import HTTPBearer
from starlette.types import ASGIApp, Receive, Scope, Send

from desired_state.http.errors import error_response

AUTH_ERROR = "Invalid or missing API key"
PUBLIC_PATHS = frozenset({"/healthz", "/readyz"})
"""Liveness and readiness: probes carry no token, and these answer nothing secret."""

BEARER = HTTPBearer(scheme_name="bearerAuth", description="SERVICES_API_KEY", auto_error=False)


class BearerAuth:
    """ASGI middleware: a 401 for every request to a non-public path without the right token."""

    def __init__(self, app: ASGIApp, api_key: str, delegated: tuple[str, ...] = ()) -> None:
        self.app = app
        self._key = api_key.encode()
        self._delegated = delegated
        """Path prefixes whose router authenticates its callers itself (the paid-jobs routes)."""

    def _authorized(self, scope: Scope) -> bool:
        header = b""
        for name, value in scope.get("headers", ()):
            if name == b"authorization":
                header = value
        scheme, _, token = header.strip().partition(b" ")
        # compare_digest takes the same time wherever the first difference is.
        return scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self._key)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if (
            scope["type"] == "http"
            and path not in PUBLIC_PATHS
            and not (self._delegated and path.startswith(self._delegated))
            and not self._authorized(scope)
        ):
            response = error_response(401, AUTH_ERROR, headers={"WWW-Authenticate": "Bearer"})
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)
