"""Helpers of the SDK tests: the generated package (from ``sdk/``), and a connection that drops."""

from __future__ import annotations

import sys
from pathlib import Path

import httpx

SDK_DIR = Path(__file__).resolve().parent.parent / "sdk"
sys.path.insert(0, str(SDK_DIR))

import reconciler_sdk as sdk  # noqa: E402  (the generated package, not installed in the venv)

__all__ = ["SDK_DIR", "DropFirstPost", "sdk"]


class DropFirstPost(httpx.AsyncBaseTransport):
    """Delivers the first POST to the server, then drops the connection before the answer."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.keys: list[str] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        if request.method == "POST":
            self.keys.append(request.headers["idempotency-key"])
            if len(self.keys) == 1:
                await response.aread()
                await response.aclose()
                raise httpx.ReadError("connection dropped", request=request)
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()
