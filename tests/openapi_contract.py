"""httpx <-> openapi-core glue shared by the OpenAPI contract tests (OpenRouter, AgentMail, Telnyx).

openapi-core validates objects that follow its own request and response protocols; these
adapt httpx's. Two ways to check traffic against a spec are offered:

* :class:`Recorder`, an httpx ``response`` event hook: the exchange is validated after it
  happened (so a bad answer fails the call that received it) and kept for assertions;
* :class:`ContractTransport`, an httpx transport in front of an ASGI app: the request is checked
  *before* it reaches the fake, the answer before the client sees it, with checks of the test's
  own (so a spec that openapi-core cannot fully read can be helped out).

Each test module still loads its own spec (the documented additions differ per provider);
:func:`add_default_error_response` is the one addition they all make.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from typing import Any

import httpx
from openapi_core import OpenAPI
from openapi_core.datatypes import RequestParameters
from starlette.types import ASGIApp
from werkzeug.datastructures import Headers, ImmutableMultiDict


def add_default_error_response(spec: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    """``spec`` with a ``default`` response of ``schema`` (the provider's error envelope) on every
    operation that lists none: specs list only some statuses, a fake may answer 429 or 503 too."""
    for operations in spec["paths"].values():
        for operation in operations.values():
            operation["responses"].setdefault(
                "default", {"description": "error", "content": {"application/json": {"schema": schema}}}
            )
    return spec


class ContractViolation(AssertionError):
    """A request or an answer does not match the spec."""


def explain(exc: BaseException) -> str:
    """openapi-core wraps the useful text (which field, which rule) in ``__cause__``."""
    return f"{exc} ({exc.__cause__})" if exc.__cause__ else str(exc)


@dataclass
class SpecRequest:
    """An HTTP request as openapi-core reads it.

    ``query`` keeps every query pair; ``parameters`` (what openapi-core reads, and writes the
    resolved path parameters into, so it must persist) may leave some out.
    """

    host_url: str
    path: str
    method: str
    body: bytes | None
    content_type: str
    parameters: RequestParameters
    query: list[tuple[str, str]]

    @classmethod
    def build(
        cls,
        method: str,
        path: str,
        *,
        host_url: str,
        query: Iterable[tuple[str, str]] = (),
        body: bytes | None = None,
        headers: Iterable[tuple[str, str]] = (),
        skip_query: Collection[str] = (),
    ) -> SpecRequest:
        """A request to ``host_url`` + ``path``; ``skip_query`` names parameters openapi-core is
        not to see (ones it cannot parse, checked by the test itself)."""
        pairs, header_pairs = list(query), list(headers)
        kept = [(key, value) for key, value in pairs if key not in skip_query]
        header = Headers(header_pairs)
        return cls(
            host_url=host_url,
            path=path,
            method=method.lower(),
            body=body,
            content_type=header.get("content-type", "application/octet-stream"),
            parameters=RequestParameters(query=ImmutableMultiDict(kept), header=header, cookie=ImmutableMultiDict()),
            query=pairs,
        )

    @classmethod
    def of(
        cls,
        request: httpx.Request,
        *,
        host_url: str | None = None,
        path: str | None = None,
        skip_query: Collection[str] = (),
    ) -> SpecRequest:
        """``request`` as sent; ``host_url`` and ``path`` replace its own (a fake mounted elsewhere
        than the spec's server)."""
        url = request.url
        return cls.build(
            request.method,
            url.path if path is None else path,
            host_url=host_url or f"{url.scheme}://{url.netloc.decode()}",
            query=url.params.multi_items(),
            body=request.content or None,
            headers=request.headers.items(),
            skip_query=skip_query,
        )


@dataclass
class SpecResponse:
    """An HTTP response as openapi-core reads it."""

    status_code: int
    content_type: str
    headers: Headers
    data: bytes

    @classmethod
    def of(cls, response: httpx.Response) -> SpecResponse:
        """A response whose body has been read."""
        return cls.build(response.status_code, response.headers.items(), response.content)

    @classmethod
    def build(cls, status: int, headers: Iterable[tuple[str, str]], data: bytes) -> SpecResponse:
        header = Headers(list(headers))
        return cls(status, header.get("content-type", "").split(";")[0], header, data)

    @classmethod
    def json(cls, status: int, body: Any) -> SpecResponse:
        return cls.build(status, [("content-type", "application/json")], json.dumps(body).encode())


class Recorder:
    """An httpx ``response`` hook: validates every exchange against ``contract`` (raising
    openapi-core's error on a breach) and keeps it for assertions."""

    def __init__(self, contract: OpenAPI) -> None:
        self.contract = contract
        self.exchanges: list[tuple[httpx.Request, httpx.Response]] = []

    async def __call__(self, response: httpx.Response) -> None:
        await response.aread()
        request = SpecRequest.of(response.request)
        self.contract.validate_request(request)
        self.contract.validate_response(request, SpecResponse.of(response))
        self.exchanges.append((response.request, response))

    def sent(self, method: str) -> list[httpx.Request]:
        return [request for request, _ in self.exchanges if request.method == method]


RequestCheck = Callable[[SpecRequest], None]
ResponseCheck = Callable[[SpecRequest, SpecResponse], None]


class ContractTransport(httpx.AsyncBaseTransport):
    """Serves ``app`` in-process; checks every exchange and records ``(method, path, status)``.

    ``to_spec`` turns a request into what the checks read; ``check_request`` runs before the app
    sees the request and ``check_response`` before the client sees the answer (each can be
    switched off with ``check_requests``/``check_responses``). Recorded paths lose ``mount``.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        to_spec: Callable[[httpx.Request], SpecRequest] = SpecRequest.of,
        check_request: RequestCheck,
        check_response: ResponseCheck,
        check_requests: bool = True,
        check_responses: bool = True,
        mount: str = "",
    ) -> None:
        self._inner = httpx.ASGITransport(app=app)
        self._to_spec = to_spec
        self._check_request = check_request
        self._check_response = check_response
        self.check_requests = check_requests
        self.check_responses = check_responses
        self._mount = mount
        self.exchanges: list[tuple[str, str, int]] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        spec_request = self._to_spec(request)
        if self.check_requests:
            self._check_request(spec_request)
        response = await self._inner.handle_async_request(request)
        content = await response.aread()
        path = request.url.path.removeprefix(self._mount)
        self.exchanges.append((request.method, path, response.status_code))
        if self.check_responses:
            answer = SpecResponse.build(response.status_code, response.headers.items(), content)
            self._check_response(spec_request, answer)
        return httpx.Response(response.status_code, headers=response.headers, content=content)

    def count(self, method: str, path: str, status: int | None = None) -> int:
        return sum(1 for m, p, s in self.exchanges if m == method and p == path and status in (None, s))
