"""Railway client, drivers and simulator, tested against each other over an in-process ASGI transport.

Contract: every request the client sends and every answer the fake returns is recorded by the
transport and, when the test ends, checked against the full public schema
(``providers/simulated/specs/railway.schema.graphql``). The document and its variables must
validate, and the answer's ``data`` is re-executed through the schema: a missing, renamed or
extra field, a null where the schema says non-null, or an unknown enum value is a failure.
:func:`test_contract_check_catches_broken_payloads` shows the check failing on broken payloads.
"""

from __future__ import annotations

import asyncio
import copy
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AsyncExitStack
from dataclasses import dataclass, field, replace
from typing import Any

import httpx
import pytest
from graphql import GraphQLError, execute_sync, parse, validate

from desired_state.vocabulary import DEPLOYMENT_STATES, DeploymentState
from providers.base import (
    ConfigError,
    Conflict,
    DesiredResource,
    NotFound,
    Observed,
    ProviderError,
    ResourceDriver,
    ResourceKind,
    Throttled,
    Transient,
)
from providers.http import ProviderHTTP
from providers.railway import (
    ALL_DOCUMENTS,
    NO_DEPLOYMENT,
    THROTTLE_SECONDS,
    RailwayClient,
    RailwayConfig,
    RailwayDeploymentDriver,
    RailwayDomainDriver,
    RailwayServiceDriver,
    RailwayVolumeDriver,
    graphql_error,
    railway_auth_headers,
)
from providers.simulated.faults import Failure, FaultPlan, FaultRule, RateLimit
from providers.simulated.railway import FakeRailway, load_schema

TOKEN = "rw-test-token-7f3a9c"  # made up; the tests check that it never leaks
BASE_URL = "http://railway.test/graphql/v2"
NAME = "convos-agent-abc123"
GiB = 1 << 30

# --- contract checking ------------------------------------------------------------------------


def contract_problems(payload: Mapping[str, Any], answer: Any) -> list[str]:
    """What is wrong with one request (``{query, variables}``) and the fake's JSON answer."""
    schema = load_schema()
    try:
        document = parse(payload["query"])
    except GraphQLError as exc:
        return [f"document: {exc.message}"]
    problems = [f"document: {e.message}" for e in validate(schema, document)]
    if problems:
        return problems
    data = answer.get("data") if isinstance(answer, dict) else None
    result = execute_sync(schema, document, root_value=data or {}, variable_values=payload.get("variables"))
    for error in result.errors or []:
        if error.path is None:
            problems.append(f"variables: {error.message}")
        elif data is not None:
            problems.append(f"answer: {error.message}")
    if data is not None and not result.errors and result.data != data:
        problems.append("answer: fields outside the selection")
    if isinstance(answer, dict) and "errors" in answer:
        errors = answer["errors"]
        if not isinstance(errors, list) or not all(isinstance(e.get("message"), str) for e in errors):
            problems.append("answer: errors[] without string messages")
    return problems


@dataclass
class Exchange:
    payload: dict[str, Any]
    status: int
    answer: Any  # decoded JSON, or None for a non-JSON page

    @property
    def operation(self) -> str:
        match = re.search(r"(query|mutation)\s+(\w+)", self.payload["query"])
        return match.group(2) if match else ""


class RecordingTransport(httpx.AsyncBaseTransport):
    """The fake's ASGI app, with every request and answer kept for the contract check."""

    def __init__(self, fake: FakeRailway) -> None:
        self._inner = httpx.ASGITransport(app=fake.asgi())
        self.exchanges: list[Exchange] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self._inner.handle_async_request(request)
        content = await response.aread()
        try:
            answer = json.loads(content)
        except ValueError:
            answer = None
        self.exchanges.append(Exchange(json.loads(request.content), response.status_code, answer))
        return httpx.Response(response.status_code, headers=response.headers, content=content)


class ManualClock:
    """A clock the test moves, so deployment progress needs no sleeping."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Harness:
    fake: FakeRailway
    client: RailwayClient
    transport: RecordingTransport
    drivers: dict[ResourceKind, ResourceDriver] = field(default_factory=dict)

    @property
    def exchanges(self) -> list[Exchange]:
        return self.transport.exchanges

    def want(self, kind: ResourceKind, name: str = NAME, **extra: Any) -> DesiredResource:
        return DesiredResource(kind=kind, instance_id=name.rsplit("-", 1)[-1], name=name, **extra)


Connect = Callable[..., Awaitable[Harness]]


@pytest.fixture
async def connect() -> AsyncIterator[Connect]:
    """``await connect(fake, ...)``: a client on ``fake``; at teardown every exchange is checked."""
    stack = AsyncExitStack()
    transports: list[RecordingTransport] = []

    async def _connect(
        fake: FakeRailway,
        *,
        token: str = TOKEN,
        token_kind: str = "bearer",
        project_id: str | None = None,
        environment_name: str | None = "production",
        environment_id: str | None = None,
    ) -> Harness:
        transport = RecordingTransport(fake)
        transports.append(transport)
        http_client = await stack.enter_async_context(httpx.AsyncClient(transport=transport))
        http = ProviderHTTP("railway", http_client, BASE_URL, railway_auth_headers(token, token_kind))
        config = RailwayConfig(
            project_id=project_id or fake.project_id,
            environment_id=environment_id,
            environment_name=environment_name,
        )
        client = RailwayClient(http, config)
        drivers: dict[ResourceKind, ResourceDriver] = {
            ResourceKind.RAILWAY_SERVICE: RailwayServiceDriver(client),
            ResourceKind.RAILWAY_VOLUME: RailwayVolumeDriver(client),
            ResourceKind.RAILWAY_DOMAIN: RailwayDomainDriver(client),
            ResourceKind.RAILWAY_DEPLOYMENT: RailwayDeploymentDriver(client),
        }
        return Harness(fake, client, transport, drivers)

    yield _connect
    await stack.aclose()
    for transport in transports:
        for exchange in transport.exchanges:
            assert contract_problems(exchange.payload, exchange.answer) == [], exchange


async def service_for(h: Harness, name: str = NAME) -> str:
    service = await h.drivers[ResourceKind.RAILWAY_SERVICE].create(h.want(ResourceKind.RAILWAY_SERVICE, name))
    return service.external_id


def deployed(observed: Observed) -> bool:
    """Is the deployment ready, as the reconciler reads its raw status?"""
    return DEPLOYMENT_STATES.get(observed.status) is DeploymentState.READY


def deployment_want(
    h: Harness, service_id: str, image: str = "ghcr.io/xmtplabs/convos-runtime@sha256:1"
) -> Any:
    return h.want(
        ResourceKind.RAILWAY_DEPLOYMENT,
        params={
            "image": image,
            "start_command": "node scripts/pool-server.js",
            "cpu": 4,
            "memory_bytes": 8 * GiB,
        },
        depends={"railway_service": service_id},
        secrets={
            "OPENROUTER_API_KEY": "sk-or-v1-0123abcd",
            "INSTANCE_ID": "abc123",
            "POOL_SECRET": "s3cr3t-9",
        },
    )


# --- documents against the schema -------------------------------------------------------------


@pytest.mark.parametrize("document", ALL_DOCUMENTS, ids=lambda d: d.split("(")[0].split()[-1])
def test_every_document_validates_against_the_full_schema(document: str) -> None:
    assert validate(load_schema(), parse(document)) == []


@pytest.mark.parametrize(
    "document",
    [
        # What the original system sent: deploymentRedeploy has no environmentId argument.
        'mutation { deploymentRedeploy(id: "d", environmentId: "e") { id } }',
        'query { service(id: "s") { id name serviceName } }',
        'query { serviceInstance(serviceId: "s") { id } }',
    ],
)
def test_broken_documents_fail_validation(document: str) -> None:
    assert validate(load_schema(), parse(document)) != []


async def test_contract_check_catches_broken_payloads(connect: Connect) -> None:
    h = await connect(FakeRailway(seed=1))
    service_id = await service_for(h)
    await h.drivers[ResourceKind.RAILWAY_DEPLOYMENT].create(deployment_want(h, service_id))
    create = next(e for e in h.exchanges if e.operation == "ServiceCreate")
    observe = next(e for e in h.exchanges if e.operation == "ServiceInstance")
    assert contract_problems(create.payload, create.answer) == []
    assert contract_problems(observe.payload, observe.answer) == []

    renamed_input = copy.deepcopy(create.payload)
    renamed_input["variables"]["input"]["projectID"] = renamed_input["variables"]["input"].pop("projectId")
    assert any(p.startswith("variables:") for p in contract_problems(renamed_input, create.answer))

    renamed_field = copy.deepcopy(create.answer)
    renamed_field["data"]["serviceCreate"]["title"] = renamed_field["data"]["serviceCreate"].pop("name")
    assert any(p.startswith("answer:") for p in contract_problems(create.payload, renamed_field))

    bad_enum = copy.deepcopy(observe.answer)
    bad_enum["data"]["serviceInstance"]["latestDeployment"]["status"] = "DONE"
    assert any(p.startswith("answer:") for p in contract_problems(observe.payload, bad_enum))

    broken_document = {
        **create.payload,
        "query": create.payload["query"].replace("projectId", "projectIdent"),
    }
    assert any(p.startswith("document:") for p in contract_problems(broken_document, create.answer))


# --- driver cycles ----------------------------------------------------------------------------


async def test_service_cycle(connect: Connect) -> None:
    h = await connect(FakeRailway(seed=2))
    driver = h.drivers[ResourceKind.RAILWAY_SERVICE]
    want = h.want(ResourceKind.RAILWAY_SERVICE)
    assert isinstance(driver, ResourceDriver)
    assert await driver.lookup(want) is None

    created = await driver.create(want)
    production = h.fake.environment_ids["production"]
    assert created.name == NAME
    assert created.attributes == {"name": NAME, "project_id": h.fake.project_id, "environment_id": production}
    [held] = h.fake.snapshot()["services"]
    assert (held["id"], held["name"], held["environment_id"]) == (created.external_id, NAME, production)
    assert h.fake.snapshot()["deployments"] == []  # created without a source: nothing deploys yet

    assert await driver.lookup(want) == created
    assert await driver.lookup(h.want(ResourceKind.RAILWAY_SERVICE, "convos-agent-other")) is None
    assert await driver.observe(created.external_id, want) == created
    assert await driver.update(created.external_id, want) == created

    await driver.delete(created.external_id, want)
    assert h.fake.snapshot()["services"] == []
    with pytest.raises(NotFound):
        await driver.observe(created.external_id, want)
    with pytest.raises(NotFound):
        await driver.delete(created.external_id, want)


async def test_volume_cycle(connect: Connect) -> None:
    h = await connect(FakeRailway(seed=3))
    driver = h.drivers[ResourceKind.RAILWAY_VOLUME]
    service_id = await service_for(h)
    want = h.want(ResourceKind.RAILWAY_VOLUME, depends={"railway_service": service_id})
    assert await driver.lookup(want) is None

    created = await driver.create(want)
    assert created.attributes == {"mount_path": "/data"}
    [held] = h.fake.snapshot()["volumes"]
    assert (held["id"], held["name"], held["service_id"], held["mount_path"]) == (
        created.external_id,
        NAME,
        service_id,
        "/data",
    )
    assert held["environment_ids"] == [h.fake.environment_ids["production"]]
    assert await driver.lookup(want) == created
    assert await driver.observe(created.external_id, want) == created

    moved = h.want(ResourceKind.RAILWAY_VOLUME, params={"mount_path": "/srv"}, depends=want.depends)
    assert (await driver.update(created.external_id, moved)).attributes == {"mount_path": "/srv"}
    [held] = h.fake.snapshot()["volumes"]
    assert (held["mount_path"], held["service_id"]) == ("/srv", service_id)  # still attached

    await driver.delete(created.external_id, want)
    assert h.fake.snapshot()["volumes"] == []
    assert await driver.lookup(want) is None
    with pytest.raises(NotFound):
        await driver.observe(created.external_id, want)
    with pytest.raises(NotFound):
        await driver.delete(created.external_id, want)


async def test_second_volume_on_a_service_is_a_conflict(connect: Connect) -> None:
    h = await connect(FakeRailway(seed=3))
    driver = h.drivers[ResourceKind.RAILWAY_VOLUME]
    want = h.want(ResourceKind.RAILWAY_VOLUME, depends={"railway_service": await service_for(h)})
    await driver.create(want)
    with pytest.raises(Conflict):
        await driver.create(want)
    assert len(h.fake.snapshot()["volumes"]) == 1


async def test_domain_cycle(connect: Connect) -> None:
    h = await connect(FakeRailway(seed=4))
    driver = h.drivers[ResourceKind.RAILWAY_DOMAIN]
    service_id = await service_for(h)
    want = h.want(ResourceKind.RAILWAY_DOMAIN, depends={"railway_service": service_id})
    assert await driver.lookup(want) is None

    created = await driver.create(want)
    assert re.fullmatch(rf"{NAME}-[a-z0-9]{{4}}\.up\.railway\.app", created.attributes["domain"])
    [held] = h.fake.snapshot()["domains"]
    assert (held["id"], held["name"], held["service_id"], held["domain"]) == (
        created.external_id,
        NAME,
        service_id,
        created.attributes["domain"],
    )
    assert await driver.lookup(want) == created
    assert await driver.observe(created.external_id, want) == created
    assert await driver.update(created.external_id, want) == created

    await driver.delete(created.external_id, want)
    assert h.fake.snapshot()["domains"] == []
    with pytest.raises(NotFound):
        await driver.observe(created.external_id, want)
    with pytest.raises(NotFound):
        await driver.delete(created.external_id, want)
    await h.drivers[ResourceKind.RAILWAY_SERVICE].delete(service_id, want)
    assert await driver.lookup(want) is None  # the service is gone, and its domain with it


async def test_deployment_cycle_first_deploy_sees_every_variable(connect: Connect) -> None:
    clock = ManualClock()
    h = await connect(FakeRailway(deploy_seconds=10, seed=5, clock=clock))
    driver = h.drivers[ResourceKind.RAILWAY_DEPLOYMENT]
    service_id = await service_for(h)
    want = deployment_want(h, service_id)
    assert await driver.lookup(want) is None
    assert (await driver.observe(service_id, want)).status == NO_DEPLOYMENT

    created = await driver.create(want)
    assert (created.external_id, created.status, deployed(created)) == (service_id, "QUEUED", False)
    assert created.attributes["image"] == want.params["image"]
    [held] = h.fake.snapshot()["services"]
    assert held["variables"] == dict(want.secrets)
    assert (held["image"], held["start_command"], held["cpu"], held["memory_bytes"]) == (
        want.params["image"],
        "node scripts/pool-server.js",
        4,
        8 * GiB,
    )
    [deployment] = h.fake.snapshot()["deployments"]  # one commit, one deploy
    assert deployment["id"] == created.attributes["deployment_id"]

    clock.advance(10)
    done = await driver.observe(service_id, want)
    assert (done.status, deployed(done), done.attributes["deploy_status"]) == ("SUCCESS", True, "SUCCESS")
    assert await driver.lookup(want) == done

    assert await driver.update(service_id, want) == done  # no change, so Railway does not redeploy
    newer = deployment_want(h, service_id, image="ghcr.io/xmtplabs/convos-runtime@sha256:2")
    updated = await driver.update(service_id, newer)
    assert (updated.status, updated.attributes["image"]) == ("QUEUED", newer.params["image"])
    assert updated.attributes["deployment_id"] != done.attributes["deployment_id"]

    await driver.delete(service_id, want)  # a no-op: the service's deletion takes its deployments
    await h.drivers[ResourceKind.RAILWAY_SERVICE].delete(service_id, want)
    assert h.fake.snapshot()["deployments"] == []
    await driver.delete(service_id, want)  # must not raise even then
    assert await driver.lookup(want) is None


async def test_deployment_status_progression_and_crash(connect: Connect) -> None:
    clock = ManualClock()
    h = await connect(FakeRailway(deploy_seconds=1.0, seed=6, clock=clock))
    driver = h.drivers[ResourceKind.RAILWAY_DEPLOYMENT]
    service_id = await service_for(h)
    want = deployment_want(h, service_id)
    seen = [(await driver.create(want)).status]
    for step in (0.2, 0.6, 0.2):
        clock.advance(step)
        seen.append((await driver.observe(service_id, want)).status)
    assert seen == ["QUEUED", "BUILDING", "DEPLOYING", "SUCCESS"]

    h.fake.crash(service_id)
    crashed = await driver.observe(service_id, want)
    assert (crashed.status, deployed(crashed)) == ("CRASHED", False)

    await h.client.redeploy(service_id)
    assert (await driver.observe(service_id, want)).status == "QUEUED"
    assert [d["status"] for d in h.fake.snapshot()["deployments"]] == ["CRASHED", "QUEUED"]


async def test_deployment_completes_on_the_real_clock(connect: Connect) -> None:
    # Long enough that a collector pause between create and the first look cannot finish it.
    h = await connect(FakeRailway(deploy_seconds=0.5, seed=6))
    driver = h.drivers[ResourceKind.RAILWAY_DEPLOYMENT]
    service_id = await service_for(h)
    want = deployment_want(h, service_id)
    assert not deployed(await driver.create(want))
    await asyncio.sleep(0.6)
    assert deployed(await driver.observe(service_id, want))


async def test_deployment_params_are_checked_before_any_call(connect: Connect) -> None:
    h = await connect(FakeRailway(seed=6))
    driver = h.drivers[ResourceKind.RAILWAY_DEPLOYMENT]
    service_id = await service_for(h)
    calls = len(h.exchanges)
    for params in ({}, {"image": "i", "cpu": True}, {"image": "i", "memory_bytes": 1.5}):
        want = h.want(ResourceKind.RAILWAY_DEPLOYMENT, params=params, depends={"railway_service": service_id})
        with pytest.raises(ConfigError):
            await driver.create(want)
    with pytest.raises(ConfigError, match="railway_service"):
        await driver.create(h.want(ResourceKind.RAILWAY_DEPLOYMENT, params={"image": "i"}))
    assert len(h.exchanges) == calls


# --- listings and pagination ------------------------------------------------------------------


async def test_lookup_and_listing_page_through_three_pages(connect: Connect) -> None:
    h = await connect(FakeRailway(seed=7, page_size=2))
    names = [f"convos-agent-p{i}" for i in range(5)]
    ids = [await service_for(h, name) for name in names]
    volumes = h.drivers[ResourceKind.RAILWAY_VOLUME]
    for name, service_id in zip(names, ids, strict=True):
        await volumes.create(
            h.want(ResourceKind.RAILWAY_VOLUME, name, depends={"railway_service": service_id})
        )
    h.exchanges.clear()

    found = await h.drivers[ResourceKind.RAILWAY_SERVICE].lookup(
        h.want(ResourceKind.RAILWAY_SERVICE, names[-1])
    )
    assert found is not None and found.external_id == ids[-1]
    assert [e.operation for e in h.exchanges] == ["ProjectServices"] * 3

    last_volume = h.want(ResourceKind.RAILWAY_VOLUME, names[-1], depends={"railway_service": ids[-1]})
    assert await volumes.lookup(last_volume) is not None
    assert [e.operation for e in h.exchanges].count("EnvironmentVolumeInstances") == 3

    listed = await h.client.list_services()
    assert [s["name"] for s in listed] == names
    assert all(s["in_environment"] and s["deploy_status"] == NO_DEPLOYMENT for s in listed)


async def test_list_services_reports_status_domain_and_image(connect: Connect) -> None:
    clock = ManualClock()
    h = await connect(FakeRailway(deploy_seconds=1, seed=8, clock=clock))
    deployed, idle = await service_for(h, "convos-agent-live"), await service_for(h, "convos-agent-idle")
    domain = await h.drivers[ResourceKind.RAILWAY_DOMAIN].create(
        h.want(ResourceKind.RAILWAY_DOMAIN, "convos-agent-live", depends={"railway_service": deployed})
    )
    want = deployment_want(h, deployed)
    await h.drivers[ResourceKind.RAILWAY_DEPLOYMENT].create(want)
    clock.advance(1)

    by_name = {s["name"]: s for s in await h.client.list_services()}
    live, quiet = by_name["convos-agent-live"], by_name["convos-agent-idle"]
    assert (live["id"], live["deploy_status"], live["domain"], live["image"]) == (
        deployed,
        "SUCCESS",
        domain.attributes["domain"],
        want.params["image"],
    )
    assert (quiet["id"], quiet["deploy_status"], quiet["domain"], quiet["image"]) == (
        idle,
        NO_DEPLOYMENT,
        None,
        None,
    )


async def test_the_drivers_list_what_lives_under_the_prefix(connect: Connect) -> None:
    clock = ManualClock()
    h = await connect(FakeRailway(deploy_seconds=1, seed=8, clock=clock))
    live = await service_for(h, "convos-agent-live")
    idle = await service_for(h, "convos-agent-idle")
    await service_for(h, "someone-elses")
    want = deployment_want(h, live)
    await h.drivers[ResourceKind.RAILWAY_DEPLOYMENT].create(want)
    clock.advance(1)

    services = await h.drivers[ResourceKind.RAILWAY_SERVICE].list_managed("convos-agent-")
    assert services is not None
    listed = sorted((s.name, s.external_id) for s in services)
    assert listed == [("convos-agent-idle", idle), ("convos-agent-live", live)]

    deployments = await h.drivers[ResourceKind.RAILWAY_DEPLOYMENT].list_managed("convos-agent-")
    assert deployments is not None
    by_id = {d.external_id: d for d in deployments}
    assert set(by_id) == {live, idle}
    assert (by_id[live].status, by_id[live].attributes["image"], deployed(by_id[live])) == (
        "SUCCESS",
        want.params["image"],
        True,
    )
    assert dict(by_id[live].secrets) == dict(want.secrets)  # live variables, to compare
    assert "s3cr3t-9" not in repr(by_id[live])  # never in a repr
    assert by_id[idle].status == NO_DEPLOYMENT
    # A volume and a domain go with their service: not listed on their own.
    assert await h.drivers[ResourceKind.RAILWAY_VOLUME].list_managed("convos-agent-") is None
    assert await h.drivers[ResourceKind.RAILWAY_DOMAIN].list_managed("convos-agent-") is None


async def test_environment_name_is_resolved_once_case_insensitively(connect: Connect) -> None:
    fake = FakeRailway(seed=9)
    h = await connect(fake, environment_name="STAGING")
    assert await h.client.environment_id() == fake.environment_ids["staging"]
    calls = len(h.exchanges)
    assert await h.client.environment_id() == fake.environment_ids["staging"]
    assert len(h.exchanges) == calls  # cached

    configured = await connect(fake, environment_id="env-from-settings", environment_name=None)
    assert await configured.client.environment_id() == "env-from-settings"
    assert configured.exchanges == []


async def test_unknown_environment_name_lists_the_available_ones(connect: Connect) -> None:
    h = await connect(FakeRailway(seed=9), environment_name="prod")
    with pytest.raises(ConfigError) as caught:
        await h.client.environment_id()
    assert "'prod'" in str(caught.value)
    assert "production, staging" in str(caught.value)


def test_config_needs_an_environment() -> None:
    with pytest.raises(ConfigError):
        RailwayConfig(project_id="p")
    assert RailwayConfig(project_id="p", environment_name="production").start_command


def test_auth_headers_follow_the_token_kind() -> None:
    assert railway_auth_headers("t") == {"Authorization": "Bearer t"}
    assert railway_auth_headers("t", "project") == {"Project-Access-Token": "t"}
    with pytest.raises(ConfigError):
        railway_auth_headers("t", "team")


async def test_project_token_is_accepted(connect: Connect) -> None:
    h = await connect(FakeRailway(seed=10), token_kind="project")
    service_id = await service_for(h)
    assert [s["id"] for s in h.fake.snapshot()["services"]] == [service_id]


# --- errors -----------------------------------------------------------------------------------


async def test_volume_cooldown_is_throttled_for_thirty_seconds(connect: Connect) -> None:
    clock = ManualClock()
    fake = FakeRailway(seed=11, clock=clock)
    thirty_seconds = RateLimit(calls=1, per_seconds=30)
    cooldown = FaultRule(provider="railway", operation="volumeCreate", rate_limit=thirty_seconds)
    fake.faults.plan = FaultPlan(rules=[cooldown])
    h = await connect(fake)
    driver = h.drivers[ResourceKind.RAILWAY_VOLUME]
    first, second = await service_for(h, "convos-agent-one"), await service_for(h, "convos-agent-two")
    await driver.create(h.want(ResourceKind.RAILWAY_VOLUME, depends={"railway_service": first}))
    later = h.want(ResourceKind.RAILWAY_VOLUME, depends={"railway_service": second})
    with pytest.raises(Throttled) as caught:
        await driver.create(later)
    assert caught.value.retry_after == THROTTLE_SECONDS
    assert "too quickly" in str(caught.value)
    assert h.exchanges[-1].status == 200  # Railway reports it inside a 200
    clock.advance(30)
    await driver.create(later)
    assert len(h.fake.snapshot()["volumes"]) == 2


@pytest.mark.parametrize(
    ("fault", "error", "retry_after"),
    [
        (Failure(200, "You are creating volumes too quickly", retry_after=7), Throttled, 7.0),
        (Failure(200, "Only one project can be created per user"), Throttled, THROTTLE_SECONDS),
        (Failure(429, "Rate limit exceeded", retry_after=12), Throttled, 12.0),
        (Failure(500, "Internal Server Error"), Transient, None),
        (Failure(503, "upstream unavailable"), Transient, None),
        (Failure(200, "Problem processing request"), Transient, None),
        (Failure(200, "Not Authorized"), ConfigError, None),
        (Failure(502, raw="<html><body><h1>Bad Gateway</h1></body></html>"), Transient, None),
    ],
)
async def test_failures_map_to_the_error_classes(
    connect: Connect, fault: Failure, error: type[ProviderError], retry_after: float | None
) -> None:
    h = await connect(FakeRailway(seed=12))
    want = h.want(ResourceKind.RAILWAY_VOLUME, depends={"railway_service": await service_for(h)})
    h.fake.faults.inject(replace(fault, operation="volumeCreate"))
    with pytest.raises(error) as caught:
        await h.drivers[ResourceKind.RAILWAY_VOLUME].create(want)
    assert type(caught.value) is error
    assert (caught.value.provider, caught.value.operation) == ("railway", "volumeCreate")
    if retry_after is not None:
        assert isinstance(caught.value, Throttled) and caught.value.retry_after == retry_after
    assert h.fake.snapshot()["volumes"] == []
    await h.drivers[ResourceKind.RAILWAY_VOLUME].create(want)  # the fault was served once


async def test_html_page_with_200_is_transient_naming_provider_and_operation(connect: Connect) -> None:
    h = await connect(FakeRailway(seed=13))
    h.fake.faults.fail_next(200, raw="<html><body>Cloudflare</body></html>", operation="serviceCreate")
    with pytest.raises(Transient) as caught:
        await h.drivers[ResourceKind.RAILWAY_SERVICE].create(h.want(ResourceKind.RAILWAY_SERVICE))
    assert str(caught.value).startswith("railway serviceCreate:")
    assert "not JSON" in str(caught.value)


async def test_missing_token_is_a_config_error(connect: Connect) -> None:
    h = await connect(FakeRailway(seed=14), token="")
    with pytest.raises(ConfigError) as caught:
        await h.client.environment_id()
    assert "401" in str(caught.value)
    assert h.exchanges[-1].answer == {
        "errors": [{"message": "Not Authorized", "extensions": {"code": "UNAUTHENTICATED"}}]
    }


async def test_another_project_is_not_authorized(connect: Connect) -> None:
    h = await connect(FakeRailway(seed=15), project_id="00000000-0000-4000-8000-000000000000")
    with pytest.raises(ConfigError, match="Not Authorized"):
        await h.client.environment_id()


async def test_not_found_on_delete_for_every_deletable_kind(connect: Connect) -> None:
    h = await connect(FakeRailway(seed=16))
    missing = "11111111-1111-4111-8111-111111111111"
    service_id = await service_for(h)
    for kind in (ResourceKind.RAILWAY_SERVICE, ResourceKind.RAILWAY_VOLUME, ResourceKind.RAILWAY_DOMAIN):
        want = h.want(kind, depends={"railway_service": service_id})
        with pytest.raises(NotFound):
            await h.drivers[kind].delete(missing, want)
    assert [e.status for e in h.exchanges[-3:]] == [200, 200, 200]  # GraphQL errors, not HTTP 404


@pytest.mark.parametrize(
    ("message", "error"),
    [
        ("You are creating volumes too quickly. Please wait", Throttled),
        ("Only one project can be created per user per 30 seconds", Throttled),
        ("Service not found", NotFound),
        ("Volume does not exist", NotFound),
        ("Not Authorized", ConfigError),
        ("Unauthenticated", ConfigError),
        ("Service already has a volume mounted in this environment", Conflict),
        ("Problem processing request", Transient),
    ],
)
def test_graphql_error_texts(message: str, error: type[ProviderError]) -> None:
    mapped = graphql_error("op", [{"message": message, "extensions": {"code": "INTERNAL_SERVER_ERROR"}}])
    assert type(mapped) is error
    assert mapped.message == message


def test_graphql_error_codes_and_retry_after() -> None:
    invalid = [{"message": "Cannot query field 'x'", "extensions": {"code": "GRAPHQL_VALIDATION_FAILED"}}]
    assert type(graphql_error("op", invalid)) is ConfigError
    throttled = graphql_error("op", [{"message": "too quickly"}], retry_after=3)
    assert isinstance(throttled, Throttled) and throttled.retry_after == 3
    assert type(graphql_error("op", "garbled")) is Transient


async def test_invalid_document_is_rejected_with_400(connect: Connect) -> None:
    fake = FakeRailway(seed=17)
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=fake.asgi()), base_url=BASE_URL) as raw:
        broken = 'mutation { deploymentRedeploy(id: "d", environmentId: "e") { id } }'
        answer = await raw.post("", json={"query": broken}, headers=headers)
        assert answer.status_code == 400
        assert answer.json()["errors"][0]["extensions"]["code"] == "GRAPHQL_VALIDATION_FAILED"
        unsupported = await raw.post("", json={"query": "{ templatesCount }"}, headers=headers)
        assert unsupported.status_code == 200
        assert "not supported by the simulator" in unsupported.json()["errors"][0]["message"]
        for body in (b"{not json", b'{"variables": {}}'):
            assert (await raw.post("", content=body, headers=headers)).status_code == 400
        bad_patch = {
            "query": "mutation($e: String!, $p: EnvironmentConfig) "
            "{ environmentPatchCommit(environmentId: $e, patch: $p) }",
            "variables": {"e": fake.environment_ids["production"], "p": {"services": {}, "varibles": {}}},
        }
        answer = await raw.post("", json=bad_patch, headers=headers)
        assert answer.json()["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"


async def test_no_secret_in_error_texts(connect: Connect) -> None:
    h = await connect(FakeRailway(seed=18))
    service_id = await service_for(h)
    want = deployment_want(h, service_id)
    secrets = [TOKEN, want.secrets["OPENROUTER_API_KEY"], want.secrets["POOL_SECRET"]]
    echo = "rejected: " + " ".join([TOKEN, *want.secrets.values()])
    faults = [
        Failure(200, echo, operation="environmentPatchCommit"),
        Failure(400, echo, operation="environmentPatchCommit"),
        Failure(500, echo, operation="environmentPatchCommit"),
        Failure(429, echo, retry_after=1, operation="environmentPatchCommit"),
    ]
    for fault in faults:
        h.fake.faults.inject(fault)
        with pytest.raises(ProviderError) as caught:
            await h.drivers[ResourceKind.RAILWAY_DEPLOYMENT].create(want)
        texts = (str(caught.value), repr(caught.value), caught.value.message)
        assert not [s for s in secrets for text in texts if s in text], texts
    assert "s3cr3t-9" not in repr(want)
    observed = await h.drivers[ResourceKind.RAILWAY_DEPLOYMENT].create(want)
    assert not [s for s in secrets if s in repr(observed)]


async def test_service_deletion_takes_its_volume_domain_and_deployments(connect: Connect) -> None:
    h = await connect(FakeRailway(seed=19))
    service_id = await service_for(h)
    depends = {"railway_service": service_id}
    await h.drivers[ResourceKind.RAILWAY_VOLUME].create(h.want(ResourceKind.RAILWAY_VOLUME, depends=depends))
    await h.drivers[ResourceKind.RAILWAY_DOMAIN].create(h.want(ResourceKind.RAILWAY_DOMAIN, depends=depends))
    await h.drivers[ResourceKind.RAILWAY_DEPLOYMENT].create(deployment_want(h, service_id))
    await h.drivers[ResourceKind.RAILWAY_SERVICE].delete(service_id, h.want(ResourceKind.RAILWAY_SERVICE))
    assert h.fake.snapshot() == {"services": [], "volumes": [], "domains": [], "deployments": []}
