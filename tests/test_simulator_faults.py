"""The simulator's fault knobs (providers/simulated/faults.py), each observed at the HTTP level.

Most tests talk to a fake over ``httpx.ASGITransport``; the timeout tests need a real socket
(client timeouts and dropped connections do not exist in-process) and serve the simulator on
loopback. Rate limits and list lag run on a clock the test moves, so nothing sleeps for long.
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
import typer.testing

import cli
from providers._http import ProviderHTTP
from providers.base import Throttled, Transient
from providers.railway import THROTTLE_SECONDS, RailwayClient, RailwayConfig, railway_auth_headers
from providers.simulated.app import Simulator, SimulatorSettings
from providers.simulated.faults import (
    FaultFlagError,
    FaultPlan,
    FaultRule,
    Latency,
    RateLimit,
    early_calls,
    parse_fault_flags,
)
from providers.simulated.server import serve_in_background
from reconciler.cli.common import EXIT_BAD_INPUT, CommandError

AUTH = {"Authorization": "Bearer test-key"}
KEYS = "/openrouter/api/v1/keys"
INBOXES = "/agentmail/v0/inboxes"
RAILWAY = "/railway/graphql/v2"
PROJECT_QUERY = "query($id: String!) { project(id: $id) { id name } }"
SERVICES_QUERY = "query($id: String!) { project(id: $id) { services { edges { node { id name } } } } }"
SERVICE_CREATE = "mutation($input: ServiceCreateInput!) { serviceCreate(input: $input) { id name } }"


class Clock:
    """Monotonic time the test moves."""

    def __init__(self) -> None:
        self.now = 500.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def simulator(*rules: FaultRule, seed: int | None = 5, clock: Clock | None = None) -> Simulator:
    """A simulator with ``rules`` in force; ``clock`` (if given) drives every fake's fault layer."""
    made = Simulator(SimulatorSettings(deploy_seconds=0, seed=seed, faults=FaultPlan(rules=list(rules))))
    if clock is not None:
        for fake in made.providers.values():
            fake.faults.clock = clock
    return made


@asynccontextmanager
async def client_of(sim: Simulator) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=sim.app())
    async with httpx.AsyncClient(transport=transport, base_url="http://sim.test", headers=AUTH) as client:
        yield client


async def graphql(client: httpx.AsyncClient, query: str, **variables: Any) -> httpx.Response:
    return await client.post(RAILWAY, json={"query": query, "variables": variables})


# --- error rates ------------------------------------------------------------------------------


async def test_error_rate_holds_over_400_calls_in_the_providers_envelope() -> None:
    sim = simulator(*parse_fault_flags(error_rate=["openrouter:list_keys=503=0.2"]).rules)
    async with client_of(sim) as client:
        statuses = [(await client.get(KEYS)).status_code for _ in range(400)]
        failed = statuses.count(503)
        assert 60 <= failed <= 100, failed  # 20% of 400 is 80, sd 8: within 2.5 sd
        assert set(statuses) == {200, 503}
        sim.openrouter.faults.clear_requests()
        answer = next(a for a in [await client.get(KEYS) for _ in range(20)] if a.status_code == 503)
        assert answer.json() == {"error": {"code": 503, "message": "Service Unavailable (simulated)"}}
        created = [(await client.post(KEYS, json={"name": f"k{i}"})).status_code for i in range(20)]
        assert set(created) == {201}  # other operations are untouched
    served = sim.requests()["openrouter"]["operations"]
    assert served["create_key"]["statuses"] == {"201": 20}
    assert served["list_keys"]["faults"]["error_rate"] == served["list_keys"]["statuses"]["503"]


async def test_the_same_seed_fails_the_same_calls_whatever_else_runs() -> None:
    async def pattern(seed: int, interleave: bool) -> list[int]:
        sim = simulator(FaultRule(provider="agentmail", error_rates={500: 0.3, 502: 0.2}), seed=seed)
        async with client_of(sim) as client:
            seen = []
            for index in range(60):
                if interleave and index % 3 == 0:
                    await client.post(INBOXES, json={"username": f"user{index}"})
                seen.append((await client.get(INBOXES)).status_code)
            return seen

    first = await pattern(1, interleave=False)
    assert first == await pattern(1, interleave=True)
    assert first != await pattern(2, interleave=False)
    assert {500, 502} <= set(first)


async def test_railway_errors_are_5xx_or_graphql_errors_in_a_200() -> None:
    sim = simulator(FaultRule(provider="railway", error_rates={502: 0.5}, graphql_error_rate=0.5))
    async with client_of(sim) as client:
        answers = [await graphql(client, PROJECT_QUERY, id=sim.railway.project_id) for _ in range(40)]
    assert {a.status_code for a in answers} == {200, 502}
    for answer in answers:
        [error] = answer.json()["errors"]
        expected = "Problem processing request" if answer.status_code == 200 else "Bad Gateway (simulated)"
        assert error["message"] == expected
        assert answer.json()["data"] is None
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=sim.app())) as raw:
        http = ProviderHTTP("railway", raw, "http://sim.test" + RAILWAY, railway_auth_headers("t"))
        railway = RailwayClient(http, RailwayConfig(project_id=sim.railway.project_id, environment_name="production"))
        for _ in range(5):
            with pytest.raises(Transient):
                await railway.environment_id()


async def test_rule_precedence_is_per_knob_and_null_switches_a_knob_off() -> None:
    sim = simulator(
        FaultRule(error_rates={503: 1.0}),  # every call of every provider...
        FaultRule(provider="openrouter", operation="create_key", error_rates=None),  # ...but this one
        FaultRule(provider="openrouter", throttle_rate=1.0, retry_after=4),
        FaultRule(operation="get_key", throttle_rate=0.0),  # an exact operation beats a provider
    )
    async with client_of(sim) as client:
        assert (await client.get(INBOXES)).status_code == 503
        assert (await client.post(KEYS, json={"name": "k"})).status_code == 429  # throttle still applies
        listing = await client.get(KEYS)
        assert listing.status_code == 429 and listing.headers["Retry-After"] == "4"
        assert (await client.get(KEYS + "/abc")).status_code == 503
    knobs = sim.openrouter.faults.knobs("create_key")
    assert (dict(knobs.error_rates), knobs.throttle_rate, knobs.retry_after) == ({}, 1.0, 4.0)


# --- throttling and rate limits ---------------------------------------------------------------


async def test_throttle_rate_answers_429_with_the_configured_retry_after() -> None:
    sim = simulator(*parse_fault_flags(provider="agentmail", throttle_rate=["100%"], retry_after=["2.5"]).rules)
    async with client_of(sim) as client:
        answer = await client.get(INBOXES)
        assert answer.status_code == 429 and answer.headers["Retry-After"] == "2.5"
        assert answer.json()["name"] == "RateLimitError"
        http = ProviderHTTP("agentmail", client, "http://sim.test/agentmail/v0", AUTH)
        with pytest.raises(Throttled) as caught:
            await http.request("get_inbox", "GET", "/inboxes/x@agentmail.to")
        assert caught.value.retry_after == 2.5


async def test_rate_limit_answers_the_exact_retry_after_and_refills() -> None:
    clock = Clock()
    sim = simulator(*parse_fault_flags(rate_limit=["openrouter:create_key=2/10s"]).rules, clock=clock)
    async with client_of(sim) as client:

        async def create() -> httpx.Response:
            return await client.post(KEYS, json={"name": "k"})

        assert [(await create()).status_code for _ in range(2)] == [201, 201]  # the burst
        over = await create()
        assert over.status_code == 429 and over.headers["Retry-After"] == "5"  # one token per 5 s
        assert over.json()["error"]["code"] == 429
        clock.advance(1.5)
        assert (await create()).headers["Retry-After"] == "3.5"
        assert (await client.get(KEYS)).status_code == 200  # another operation, another story
        clock.advance(3.5)
        assert (await create()).status_code == 201
        assert (await create()).headers["Retry-After"] == "5"
        clock.advance(60)  # a long pause refills the bucket to its size, no more
        assert [(await create()).status_code for _ in range(3)] == [201, 201, 429]
    throttles = sim.requests()["openrouter"]["operations"]["create_key"]["throttles"]
    assert [(t["at"] - 500, t["retry_after"]) for t in throttles] == [(0, 5), (1.5, 3.5), (5, 5), (65, 5)]


async def test_a_rate_limit_on_every_operation_is_one_shared_bucket() -> None:
    clock = Clock()
    sim = simulator(FaultRule(provider="openrouter", rate_limit=RateLimit(calls=1, per_seconds=2)), clock=clock)
    async with client_of(sim) as client:
        assert (await client.get(KEYS)).status_code == 200
        assert (await client.get(KEYS + "/abc")).headers["Retry-After"] == "2"
        assert (await client.get(INBOXES)).status_code == 200  # per provider
        clock.advance(2)
        assert (await client.get(KEYS + "/abc")).status_code == 404


async def test_railway_volume_rate_limit_says_too_quickly_in_a_200_without_retry_after() -> None:
    clock = Clock()
    flags = parse_fault_flags(rate_limit=["railway:volumeCreate=1/30s", "railway:serviceCreate=1/10s"])
    sim = simulator(*flags.rules, clock=clock)
    project = sim.railway.project_id
    volume = "mutation($input: VolumeCreateInput!) { volumeCreate(input: $input) { id } }"
    async with client_of(sim) as client:
        first = await graphql(client, SERVICE_CREATE, input={"projectId": project, "name": "one"})
        service_id = first.json()["data"]["serviceCreate"]["id"]
        again = await graphql(client, SERVICE_CREATE, input={"projectId": project, "name": "two"})
        assert again.status_code == 429 and again.headers["Retry-After"] == "10"  # Railway's API limit
        assert again.json()["errors"][0]["extensions"]["code"] == "RATE_LIMITED"
        made = await graphql(client, volume, input={"projectId": project, "serviceId": service_id, "mountPath": "/d"})
        assert made.json()["data"]["volumeCreate"]["id"]
        clock.advance(12)
        too_quick = await graphql(client, volume, input={"projectId": project, "mountPath": "/e"})
        assert too_quick.status_code == 200 and "Retry-After" not in too_quick.headers
        assert too_quick.json()["errors"][0]["message"].startswith("You are creating volumes too quickly")

        http = ProviderHTTP("railway", client, "http://sim.test" + RAILWAY, railway_auth_headers("t"))
        railway = RailwayClient(http, RailwayConfig(project_id=project, environment_name="production"))
        with pytest.raises(Throttled) as caught:
            await railway.execute("volumeCreate", volume, {"input": {"projectId": project, "mountPath": "/e"}})
        assert caught.value.retry_after == THROTTLE_SECONDS  # the client's own default: no header
    throttles = sim.requests()["railway"]["operations"]["volumeCreate"]["throttles"]
    assert [(t["status"], t["retry_after"]) for t in throttles] == [(200, 18), (200, 18)]  # the exact wait


async def test_early_calls_flags_a_client_that_does_not_wait() -> None:
    clock = Clock()
    sim = simulator(FaultRule(provider="openrouter", operation="create_key", throttle_rate=0.5, retry_after=3))
    sim.openrouter.faults.clock = clock
    async with client_of(sim) as client:
        http = ProviderHTTP("openrouter", client, "http://sim.test/openrouter/api/v1", AUTH)
        for _ in range(20):  # a polite client: after a 429 it waits as long as it was told
            try:
                await http.request("create_key", "POST", "/keys", json={"name": "k"})
                clock.advance(0.1)
            except Throttled as throttled:
                clock.advance(throttled.retry_after)
        assert sim.requests()["openrouter"]["operations"]["create_key"]["throttled"] > 0
        assert early_calls(sim.requests()) == []
        for _ in range(10):  # an impatient one retries at once
            if (await client.post(KEYS, json={"name": "k"})).status_code == 429:
                clock.advance(0.5)
                await client.post(KEYS, json={"name": "k"})
                break
    [early] = early_calls(sim.requests())
    assert early.startswith("openrouter create_key: called 0.500s after a throttle that asked for 3s")


# --- list lag ---------------------------------------------------------------------------------


async def test_list_lag_hides_a_new_key_from_listings_but_not_from_get() -> None:
    clock = Clock()
    sim = simulator(*parse_fault_flags(list_lag=["openrouter:create_key=2"]).rules, clock=clock)
    async with client_of(sim) as client:
        key = (await client.post(KEYS, json={"name": "fresh"})).json()["data"]["hash"]

        async def listed() -> list[str]:
            return [k["hash"] for k in (await client.get(KEYS)).json()["data"]]

        assert await listed() == []
        assert (await client.get(f"{KEYS}/{key}")).json()["data"]["name"] == "fresh"
        clock.advance(1.9)
        assert await listed() == []
        clock.advance(0.1)
        assert await listed() == [key]


async def test_list_lag_in_agentmail_telnyx_and_railway() -> None:
    clock = Clock()
    sim = simulator(*parse_fault_flags(list_lag=["3"]).rules, clock=clock)
    async with client_of(sim) as client:
        inbox = (await client.post(INBOXES, json={"username": "lagged", "client_id": "lagged"})).json()
        body = {"name": "p", "whitelisted_destinations": ["US"]}
        profile = (await client.post("/telnyx/v2/messaging_profiles", json=body)).json()["data"]
        project = sim.railway.project_id
        service = (await graphql(client, SERVICE_CREATE, input={"projectId": project, "name": "s"})).json()
        service_id = service["data"]["serviceCreate"]["id"]

        async def listings() -> tuple[int, int, int]:
            inboxes = (await client.get(INBOXES)).json()["count"]
            profiles = len((await client.get("/telnyx/v2/messaging_profiles")).json()["data"])
            edges = (await graphql(client, SERVICES_QUERY, id=project)).json()["data"]["project"]["services"]
            return inboxes, profiles, len(edges["edges"])

        assert await listings() == (0, 0, 0)
        assert (await client.get(f"{INBOXES}/{inbox['inbox_id']}")).status_code == 200
        assert (await client.get(f"/telnyx/v2/messaging_profiles/{profile['id']}")).status_code == 200
        by_id = await graphql(client, "query($id: String!) { service(id: $id) { name } }", id=service_id)
        assert by_id.json()["data"]["service"]["name"] == "s"
        replay = await client.post(INBOXES, json={"username": "lagged", "client_id": "lagged"})
        assert replay.json()["inbox_id"] == inbox["inbox_id"]  # the idempotent create still finds it
        clock.advance(3)
        assert await listings() == (1, 1, 1)


# --- timeouts and latency ---------------------------------------------------------------------


@asynccontextmanager
async def served(sim: Simulator, client_timeout: float) -> AsyncIterator[ProviderHTTP]:
    async with serve_in_background(sim.app()) as root, httpx.AsyncClient() as client:
        yield ProviderHTTP("openrouter", client, root + "/openrouter/api/v1", AUTH, timeout=client_timeout)


async def test_a_timeout_makes_the_client_raise_transient() -> None:
    sim = simulator(*parse_fault_flags(provider="openrouter", timeout_rate=["1"], timeout_seconds=["10"]).rules)
    async with served(sim, client_timeout=0.3) as http:
        started = time.monotonic()
        with pytest.raises(Transient, match="timed out"):
            await http.request("list_keys", "GET", "/keys")
        assert time.monotonic() - started < 2  # the client gave up; the hang ended with it
    assert sim.requests()["openrouter"]["operations"]["list_keys"]["faults"] == {"timeout": 1}


@pytest.mark.parametrize(("mode", "error"), [("504", "HTTP 504"), ("drop", "connection failed")])
async def test_after_the_hang_comes_a_504_or_a_dropped_connection(mode: str, error: str) -> None:
    flags = parse_fault_flags(timeout_rate=["openrouter=1"], timeout_seconds=["50ms"], timeout_mode=[mode])
    async with served(simulator(*flags.rules), client_timeout=5) as http:
        with pytest.raises(Transient, match=error):
            await http.request("list_keys", "GET", "/keys")


async def test_latency_delays_only_the_calls_it_names() -> None:
    sim = simulator(*parse_fault_flags(latency_ms=["agentmail:list_inboxes=80+20"]).rules)
    async with client_of(sim) as client:
        started = time.monotonic()
        await client.get(INBOXES)
        assert 0.08 <= time.monotonic() - started < 1.0
        started = time.monotonic()
        await client.get(f"{INBOXES}/x@agentmail.to")
        assert time.monotonic() - started < 0.08


def test_latency_distributions_match_their_parameters() -> None:
    rng = random.Random(3)
    lognormal = sorted(Latency(median_ms=40, p99_ms=400).sample(rng) for _ in range(4000))
    assert statistics.median(lognormal) == pytest.approx(0.040, rel=0.1)
    assert lognormal[int(0.99 * len(lognormal))] == pytest.approx(0.400, rel=0.25)
    jittered = [Latency(fixed_ms=25, jitter_ms=10).sample(rng) for _ in range(1000)]
    assert min(jittered) >= 0.025 and max(jittered) <= 0.035
    assert statistics.mean(jittered) == pytest.approx(0.030, rel=0.05)


# --- the admin routes -------------------------------------------------------------------------


async def test_admin_routes_round_trip_and_count_requests() -> None:
    sim = simulator()
    plan = {
        "rules": [
            {"provider": "*", "operation": "*", "latency": {"fixed_ms": 1}},
            {"provider": "telnyx", "operation": "list_profiles", "error_rates": {"503": 1.0}},
            {"provider": "railway", "operation": "volumeCreate", "rate_limit": {"calls": 1, "per_seconds": 30}},
            {"provider": "openrouter", "operation": "*", "throttle_rate": None},
        ]
    }
    async with client_of(sim) as client:
        assert (await client.get("/_admin/faults")).json() == {"rules": []}
        replaced = await client.put("/_admin/faults", json=plan)
        assert replaced.status_code == 200 and replaced.json() == plan
        assert (await client.get("/_admin/faults")).json() == plan
        assert sim.telnyx.faults.plan == sim.railway.faults.plan == sim.faults

        assert (await client.get("/telnyx/v2/messaging_profiles")).status_code == 503
        assert (await client.get("/telnyx/v2/phone_numbers")).status_code == 200
        assert (await client.get("/telnyx/v2/nowhere")).status_code == 404
        counted = (await client.get("/_admin/requests")).json()
        telnyx = counted["telnyx"]["operations"]
        assert {name: log["statuses"] for name, log in telnyx.items()} == {
            "list_profiles": {"503": 1},
            "list_numbers": {"200": 1},
            "unknown": {"404": 1},
        }
        assert telnyx["list_profiles"]["faults"] == {"error_rate": 1} and len(telnyx["list_numbers"]["calls"]) == 1
        assert counted["openrouter"]["operations"] == {}

        for bad, problem in [
            ({"rules": [{"throttle_rate": 1.5}]}, "rules.0.throttle_rate: Input should be less than or equal to 1"),
            ({"rules": [{"provider": "railway", "operation": "volumeCreat"}]}, "unknown operation 'volumeCreat'"),
            ({"rules": [{"provider": "stripe"}]}, "rules.0.provider: unknown provider 'stripe'"),
            ({"rules": [{"error_rates": {"503": 0.7}, "timeout_rate": 0.5}]}, "the rates add up to 1.2"),
            ({"rules": [{"latency": {"median_ms": 40}}]}, "median_ms and p99_ms go together"),
            ({"rulez": []}, "rulez: Extra inputs are not permitted"),
        ]:
            refused = await client.put("/_admin/faults", json=bad)
            assert refused.status_code == 400 and problem in refused.json()["error"], refused.json()
            assert "\n" not in refused.json()["error"]
        garbled = await client.put("/_admin/faults", content=b"{nope")
        assert garbled.status_code == 400 and "not valid JSON" in garbled.json()["error"]
        assert (await client.get("/_admin/faults")).json() == plan  # a refused plan changes nothing

        assert (await client.post("/_admin/reset")).json() == {"ok": True}
        assert (await client.get("/_admin/faults")).json() == plan  # reset forgets resources, not knobs
        assert (await client.get("/_admin/requests")).json()["telnyx"]["operations"] == {}
        await client.get("/telnyx/v2/phone_numbers")
        assert (await client.post("/_admin/requests/reset")).json() == {"ok": True}
        assert (await client.get("/_admin/requests")).json()["telnyx"]["operations"] == {}
        assert (await client.post("/_admin/faults/reset")).json() == {"rules": []}
        assert (await client.get("/telnyx/v2/messaging_profiles")).status_code == 200


async def test_queued_failures_match_their_operation() -> None:
    sim = simulator()
    sim.openrouter.faults.fail_next(500, "only for get_key", operation="get_key", times=2)
    async with client_of(sim) as client:
        assert (await client.get(KEYS)).status_code == 200
        assert [(await client.get(KEYS + "/k")).status_code for _ in range(3)] == [500, 500, 404]
    assert sim.requests()["openrouter"]["operations"]["get_key"]["faults"] == {"queued": 2}


# --- flags ------------------------------------------------------------------------------------


def test_flags_become_rules() -> None:
    plan = parse_fault_flags(
        provider="railway",
        error_rate=["503=0.2", "openrouter=500=5%,502=0.1"],
        throttle_rate=["0.1"],
        retry_after=["2"],
        latency_ms=["25", "openrouter=lognormal:40:400", "*:create_inbox=10+5"],
        timeout_rate=["0.05"],
        timeout_seconds=["1m"],
        timeout_mode=["drop"],
        rate_limit=["railway:volumeCreate=1/30s", "telnyx=10/m", "openrouter:*=5/500ms"],
        list_lag=["2", "agentmail:create_inbox=1500ms"],
        graphql_error_rate=["railway:project=0.3"],
    )
    assert plan.to_json()["rules"] == [
        {
            "provider": "railway",
            "operation": "*",
            "latency": {"fixed_ms": 25.0},
            "error_rates": {"503": 0.2},
            "throttle_rate": 0.1,
            "retry_after": 2.0,
            "timeout_rate": 0.05,
            "timeout_seconds": 60.0,
            "timeout_mode": "drop",
            "list_lag": 2.0,
        },
        {
            "provider": "openrouter",
            "operation": "*",
            "latency": {"median_ms": 40.0, "p99_ms": 400.0},
            "error_rates": {"500": 0.05, "502": 0.1},
            "rate_limit": {"calls": 5, "per_seconds": 0.5},
        },
        {"provider": "*", "operation": "create_inbox", "latency": {"fixed_ms": 10.0, "jitter_ms": 5.0}},
        {"provider": "railway", "operation": "project", "graphql_error_rate": 0.3},
        {"provider": "railway", "operation": "volumeCreate", "rate_limit": {"calls": 1, "per_seconds": 30.0}},
        {"provider": "telnyx", "operation": "*", "rate_limit": {"calls": 10, "per_seconds": 60.0}},
        {"provider": "agentmail", "operation": "create_inbox", "list_lag": 1.5},
    ]
    assert FaultPlan.from_json(plan.to_json()) == plan
    assert parse_fault_flags() == FaultPlan()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({"error_rate": ["503=x"]}, "--error-rate '503=x': not a rate"),
        ({"error_rate": ["503"]}, "--error-rate '503': expected STATUS=RATE"),
        ({"error_rate": ["200=0.1"]}, "--error-rate '200=0.1': status 200 is not an HTTP error status"),
        ({"error_rate": ["503=0.1", "503=0.2"]}, "--error-rate '503=0.2': status 503 given twice for *:*"),
        ({"throttle_rate": ["1.5"]}, "--throttle-rate '1.5': not a rate"),
        ({"throttle_rate": ["0.1", "0.2"]}, "--throttle-rate '0.2': given twice for *:*"),
        ({"rate_limit": ["railwy:volumeCreate=1/30s"]}, "--rate-limit 'railwy:volumeCreate=1/30s': unknown provider"),
        ({"rate_limit": ["railway:volumeCreat=1/30s"]}, "--rate-limit 'railway:volumeCreat=1/30s': no operation"),
        ({"rate_limit": ["railway:create_key=1/30s"]}, "no operation 'create_key' at railway"),
        ({"rate_limit": ["1/0s"]}, "--rate-limit '1/0s': the window must be longer than 0"),
        ({"rate_limit": ["0/30s"]}, "--rate-limit '0/30s': expected CALLS/WINDOW"),
        ({"rate_limit": ["fast"]}, "--rate-limit 'fast': expected CALLS/WINDOW"),
        ({"latency_ms": ["lognormal:400:40"]}, "--latency-ms 'lognormal:400:40': lognormal needs 0 < MEDIAN <= P99"),
        ({"latency_ms": ["25+"]}, "--latency-ms '25+': expected MS, MS+JITTER or lognormal:MEDIAN:P99"),
        ({"latency_ms": ["-5"]}, "--latency-ms '-5': '-5' must be a non-negative number"),
        ({"retry_after": ["soon"]}, "--retry-after 'soon': 'soon' is not a duration"),
        ({"timeout_seconds": ["0"]}, "--timeout-seconds '0': must be more than 0"),
        ({"timeout_mode": ["hang"]}, "--timeout-mode 'hang': expected 504"),
        ({"list_lag": ["telnyx:order_number=x"]}, "--list-lag 'telnyx:order_number=x': 'x' is not a duration"),
        ({"provider": "stripe", "list_lag": ["1"]}, "--provider 'stripe': unknown provider"),
        ({"graphql_error_rate": ["openrouter=0.1"]}, "--graphql-error-rate for openrouter:*: graphql_error_rate"),
        (
            {"error_rate": ["503=0.6"], "timeout_rate": ["0.5"]},
            "--error-rate/--timeout-rate for *:*: the rates add up to 1.1, more than 1",
        ),
    ],
)
def test_bad_flags_are_refused_in_one_line_naming_the_flag(flags: dict[str, Any], message: str) -> None:
    with pytest.raises(FaultFlagError) as caught:
        parse_fault_flags(**flags)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_simulate_refuses_a_bad_flag_with_exit_code_2() -> None:
    result = typer.testing.CliRunner().invoke(cli.app, ["simulate", "--rate-limit", "railway:volumeCreate=1/0s"])
    assert isinstance(result.exception, CommandError) and result.exception.code == EXIT_BAD_INPUT
    assert str(result.exception) == "--rate-limit 'railway:volumeCreate=1/0s': the window must be longer than 0"
