"""The util.echo upstream (``/upstream``), the simulator's fifth fake: what it answers, and each
fault knob observed at the HTTP level, as the other fakes' knobs are in test_simulator_faults.py."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest

from providers.simulated.app import Simulator, SimulatorSettings, upstream_url
from providers.simulated.faults import FaultPlan, FaultRule, Latency, RateLimit, early_calls, parse_fault_flags
from providers.simulated.server import serve_in_background
from providers.simulated.upstream import MAX_BODY_BYTES, FakeUpstream

ECHO = "/upstream/echo"


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def simulator(*rules: FaultRule, clock: Clock | None = None) -> Simulator:
    made = Simulator(SimulatorSettings(deploy_seconds=0, seed=11, faults=FaultPlan(rules=list(rules))))
    if clock is not None:
        made.upstream.faults.clock = clock
    return made


@asynccontextmanager
async def client_of(sim: Simulator) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=sim.app())
    async with httpx.AsyncClient(transport=transport, base_url="http://sim.test") as client:
        yield client


async def test_echo_answers_the_object_it_was_sent() -> None:
    sim = simulator()
    payload = {"hi": 1, "nested": {"list": [1, "two", None, True]}, "text": "žluťoučký 🐎"}
    async with client_of(sim) as client:
        answer = await client.post(ECHO, json=payload)
        assert answer.status_code == 200
        assert answer.json() == {"echo": payload}
        assert (await client.post(ECHO, json={})).json() == {"echo": {}}
    assert sim.requests()["upstream"]["operations"]["echo"]["statuses"] == {"200": 2}
    assert upstream_url("http://127.0.0.1:8090/") == "http://127.0.0.1:8090/upstream"


@pytest.mark.parametrize(
    "body",
    [b"", b"{not json", b"[1, 2]", b"42", b'"text"', b"null", b'{"x": NaN}', b'{"x": Infinity}'],
)
async def test_a_body_that_is_not_a_json_object_is_a_400(body: bytes) -> None:
    async with client_of(simulator()) as client:
        answer = await client.post(ECHO, content=body, headers={"Content-Type": "application/json"})
    assert answer.status_code == 400
    assert answer.json() == {"error": {"code": "invalid_request", "message": "the body must be a JSON object"}}


async def test_a_body_over_the_limit_is_a_413_and_routing_errors_keep_the_envelope() -> None:
    async with client_of(simulator()) as client:
        big = b'{"x": "' + b"a" * MAX_BODY_BYTES + b'"}'
        too_big = await client.post(ECHO, content=big)
        assert too_big.status_code == 413 and too_big.json()["error"]["code"] == "payload_too_large"
        missing = await client.post("/upstream/nothing", json={})
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
        wrong = await client.get(ECHO)
        assert wrong.status_code == 405 and wrong.json()["error"]["code"] == "method_not_allowed"


async def test_error_rate_answers_in_the_upstreams_envelope() -> None:
    sim = simulator(*parse_fault_flags(error_rate=["upstream:echo=503=0.25"]).rules)
    async with client_of(sim) as client:
        statuses = [(await client.post(ECHO, json={"n": n})).status_code for n in range(200)]
        failed = next(a for a in [await client.post(ECHO, json={}) for _ in range(40)] if a.status_code == 503)
    assert 25 <= statuses.count(503) <= 75, statuses.count(503)  # 25% of 200 is 50, sd 6
    assert set(statuses) == {200, 503}
    assert failed.json() == {"error": {"code": "upstream_error", "message": "Service Unavailable (simulated)"}}
    assert sim.requests()["upstream"]["operations"]["echo"]["faults"]["error_rate"] >= 25


async def test_throttle_rate_sends_429_with_retry_after() -> None:
    sim = simulator(FaultRule(provider="upstream", throttle_rate=1.0, retry_after=2.5))
    async with client_of(sim) as client:
        answer = await client.post(ECHO, json={"a": 1})
    assert answer.status_code == 429
    assert answer.headers["Retry-After"] == "2.5"
    assert answer.json()["error"]["code"] == "rate_limited"


async def test_rate_limit_gives_the_exact_retry_after_and_early_calls_are_found() -> None:
    clock = Clock()
    sim = simulator(FaultRule(provider="upstream", rate_limit=RateLimit(calls=2, per_seconds=10)), clock=clock)
    async with client_of(sim) as client:
        assert [(await client.post(ECHO, json={})).status_code for _ in range(2)] == [200, 200]
        over = await client.post(ECHO, json={})
        assert over.status_code == 429 and over.headers["Retry-After"] == "5"
        clock.now += 1.0
        assert (await client.post(ECHO, json={})).status_code == 429  # too early, and logged as such
        clock.now += 4.0
        assert (await client.post(ECHO, json={})).status_code == 200
    early = early_calls(sim.requests())
    assert len(early) == 1 and early[0].startswith("upstream echo: called 1.000s after a throttle")


async def test_latency_delays_the_answer() -> None:
    sim = simulator(FaultRule(provider="upstream", operation="echo", latency=Latency(fixed_ms=150)))
    async with client_of(sim) as client:
        started = time.monotonic()
        answer = await client.post(ECHO, json={"slow": True})
        took = time.monotonic() - started
    assert answer.json() == {"echo": {"slow": True}} and took >= 0.15


async def test_queued_failures_are_served_first() -> None:
    sim = simulator()
    sim.upstream.faults.fail_next(502, raw="<html>Bad gateway</html>", operation="echo")
    async with client_of(sim) as client:
        proxy_page = await client.post(ECHO, json={})
        assert proxy_page.status_code == 502 and proxy_page.text == "<html>Bad gateway</html>"
        assert (await client.post(ECHO, json={"ok": 1})).json() == {"echo": {"ok": 1}}


@pytest.mark.parametrize("mode", ["504", "drop"])
async def test_timeouts_hang_then_answer_504_or_drop_the_connection(mode: str) -> None:
    rule = FaultRule(provider="upstream", timeout_rate=1.0, timeout_seconds=0.3, timeout_mode=mode)
    sim = simulator(rule)
    async with serve_in_background(sim.app()) as root, httpx.AsyncClient(base_url=upstream_url(root)) as client:
        started = time.monotonic()
        if mode == "504":
            answer = await client.post("/echo", json={})
            assert answer.status_code == 504 and answer.json()["error"]["code"] == "timeout"
        else:
            with pytest.raises(httpx.HTTPError):
                await client.post("/echo", json={})
        assert time.monotonic() - started >= 0.3
        with pytest.raises(httpx.ReadTimeout):  # a client that gives up first sees a timeout
            await client.post("/echo", json={}, timeout=0.05)
    assert sim.requests()["upstream"]["operations"]["echo"]["faults"]["timeout"] == 2


def test_flags_and_plans_name_the_upstream() -> None:
    plan = parse_fault_flags(provider="upstream", throttle_rate=["0.1"], rate_limit=["upstream:echo=5/s"])
    assert [rule.target for rule in plan.rules] == ["upstream:*", "upstream:echo"]
    with pytest.raises(ValueError, match="no operation 'echoes' at upstream"):
        parse_fault_flags(error_rate=["upstream:echoes=503=0.1"])
    with pytest.raises(ValueError, match="graphql_error_rate applies to railway only"):
        FaultRule(provider="upstream", graphql_error_rate=0.1)


async def test_reset_forgets_queued_failures_and_the_log_but_keeps_the_plan() -> None:
    sim = simulator(FaultRule(provider="upstream", latency=Latency(fixed_ms=1)))
    sim.upstream.faults.fail_next(500, times=2)
    async with client_of(sim) as client:
        assert (await client.post(ECHO, json={})).status_code == 500
        sim.reset()
        assert sim.requests()["upstream"]["operations"] == {}
        assert (await client.post(ECHO, json={})).status_code == 200
    assert sim.faults.rules[0].provider == "upstream"
    assert isinstance(sim.upstream, FakeUpstream) and "upstream" not in sim.snapshot()  # it holds nothing
