"""ProviderHTTP frees each answer as soon as it is decoded.

httpx links a response and its stream in a reference cycle; left alone, every body waits for the
cyclic garbage collector, which on a large heap runs rarely, so an observation cycle over a big
fleet would hold all its list pages at once. These tests run with the collector switched off: what
is freed is freed by reference counting alone.
"""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import Iterator

import httpx
import pytest

from providers.base import Throttled, Transient
from providers.http import ProviderHTTP, counting_sent

PAGE = {"data": [{"id": f"item-{n}", "name": "x" * 200} for n in range(2000)]}


@pytest.fixture
def collector_off() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


async def test_a_decoded_answer_is_freed_without_the_cyclic_collector(collector_off: None) -> None:
    seen: list[weakref.ref[httpx.Response]] = []

    async def remember(response: httpx.Response) -> None:
        seen.append(weakref.ref(response))

    transport = httpx.MockTransport(lambda request: httpx.Response(200, json=PAGE))
    async with httpx.AsyncClient(transport=transport, event_hooks={"response": [remember]}) as client:
        http = ProviderHTTP("openrouter", client, "https://provider.test", {"Authorization": "Bearer k"})
        body = await http.request("list_keys", "GET", "/keys")

    assert len(body["data"]) == 2000
    assert len(seen) == 1
    assert seen[0]() is None, "the response (and its body) is still alive: it waits for the cyclic collector"


async def test_an_error_answer_still_reads_its_body(collector_off: None) -> None:
    transport = httpx.MockTransport(lambda request: httpx.Response(503, json={"error": {"message": "overloaded"}}))
    async with httpx.AsyncClient(transport=transport) as client:
        http = ProviderHTTP("openrouter", client, "https://provider.test", {"Authorization": "Bearer k"})
        with pytest.raises(Transient, match="HTTP 503: overloaded"):
            await http.request("list_keys", "GET", "/keys")


class Settled:
    def __init__(self) -> None:
        self.calls: list[tuple[str, object]] = []

    async def admit(self, provider: str, operation: str) -> None:
        return None

    async def settle(self, provider: str, operation: str, error: object) -> None:
        self.calls.append((operation, error))


async def test_a_cancelled_call_tells_the_admission_nothing() -> None:
    started = asyncio.Event()

    async def hang(request: httpx.Request) -> httpx.Response:
        started.set()
        await asyncio.sleep(60)
        return httpx.Response(200, json={})

    admission = Settled()
    async with httpx.AsyncClient(transport=httpx.MockTransport(hang)) as client:
        http = ProviderHTTP("openrouter", client, "https://provider.test", {}, admission=admission)
        call = asyncio.create_task(http.request("list_keys", "GET", "/keys"))
        await started.wait()
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        # An answer, good or bad, is reported; a cancellation is not (it is not a success).
        ok = httpx.MockTransport(lambda request: httpx.Response(200, json={}))
        async with httpx.AsyncClient(transport=ok) as answering:
            await ProviderHTTP("openrouter", answering, "https://p.test", {}, admission=admission).request(
                "list_keys", "GET", "/keys"
            )
    assert admission.calls == [("list_keys", None)]


class Refusing(Settled):
    """An admission that refuses the named operations before they are sent (a rate limit in force)."""

    def __init__(self, *refused: str) -> None:
        super().__init__()
        self.refused = refused

    async def admit(self, provider: str, operation: str) -> None:
        if operation in self.refused:
            raise Throttled(provider, operation, "held", 5.0)


async def test_counting_sent_counts_what_left_and_not_what_the_admission_refused() -> None:
    answers = {"/keys": httpx.Response(201, json={}), "/broken": httpx.Response(503, json={})}
    transport = httpx.MockTransport(lambda request: answers[request.url.path])
    async with httpx.AsyncClient(transport=transport) as client:
        http = ProviderHTTP("openrouter", client, "https://p.test", {}, admission=Refusing("create_key"))
        with counting_sent() as refused_first, pytest.raises(Throttled):
            await http.request("create_key", "POST", "/keys")
        assert refused_first.count == 0  # nothing left: nothing can have landed

        with counting_sent() as sent:
            await http.request("list_keys", "GET", "/keys")
            with pytest.raises(Transient):  # it failed, but it left: it may have landed
                await http.request("patch_key", "PATCH", "/broken")
            with pytest.raises(Throttled):
                await http.request("create_key", "POST", "/keys")
            await asyncio.gather(http.request("list_keys", "GET", "/keys"), http.request("get_key", "GET", "/keys"))
        assert sent.count == 4
        await http.request("list_keys", "GET", "/keys")  # outside any block: nothing counts it
        assert sent.count == 4
