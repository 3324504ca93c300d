"""Telnyx driver against the simulated Telnyx, with every exchange checked against the spec.

All traffic goes through a :class:`~tests.openapi_contract.ContractTransport` (made by
:func:`contract_transport`): an ``httpx`` transport in front of the fake's ASGI app that
validates each request the client sends and each answer the fake returns against
``telnyx-numbers.openapi.yaml`` with openapi-core. Every object schema that lists its properties
is closed first (``additionalProperties: false``), so a renamed optional field fails too, not only
a missing required one; the spec also gets one addition, a ``default`` error response in the
Telnyx envelope for statuses an operation does not list (429, 503). openapi-core 0.23 cannot
parse an array inside a deepObject query parameter (``filter[features]=sms``), so that one value
is checked against its schema here.

Tests assert outcomes: what the fake holds (``snapshot()`` and its public API), what the driver
returns, and which error class it raises.
"""

from __future__ import annotations

import asyncio
import copy
import json
import random
import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import jsonschema
import pytest
from openapi_core import OpenAPI
from openapi_core.exceptions import OpenAPIError
from starlette.applications import Starlette
from starlette.routing import Mount
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from providers.base import (
    ConfigError,
    Conflict,
    DesiredResource,
    NotFound,
    ProviderError,
    ResourceKind,
    Throttled,
    Transient,
)
from providers.http import ProviderHTTP
from providers.simulated.telnyx import FakeTelnyx, load_spec
from providers.telnyx import MAX_PURCHASE_ATTEMPTS, TelnyxNumberDriver, telnyx_http
from tests.openapi_contract import (
    ContractTransport,
    ContractViolation,
    SpecRequest,
    SpecResponse,
    add_default_error_response,
    explain,
)

MOUNT = "/telnyx/v2"
BASE_URL = "http://simulator.test" + MOUNT
API_KEY = "telnyx-test-secret-9f8e7d6c5b4a"  # matches no credential pattern: redacted by value
E164 = re.compile(r"^\+1[2-9]\d{2}[2-9]\d{6}$")
AUTH = {"Authorization": f"Bearer {API_KEY}"}


# -- contract checking ---------------------------------------------------------------------------


def _closed(node: Any) -> Any:
    """``node`` with every schema that lists ``properties`` refusing any other property.

    (openapi-core's ``additional_properties_default_policy="forbid"`` would also close free-form
    objects such as ``messaging_Error.meta``, which the spec leaves open.)
    """
    if isinstance(node, dict):
        if "properties" in node and "additionalProperties" not in node:
            node["additionalProperties"] = False
        for value in node.values():
            _closed(value)
    elif isinstance(node, list):
        for value in node:
            _closed(value)
    return node


def _contract_spec() -> dict[str, Any]:
    """The spec, closed, plus a ``default`` answer in the Telnyx error envelope.

    Operations list only some statuses (numbers: 400/401/404/422/500; messaging: 4XX); the
    addition lets a 429 or a 503 be checked against the envelope too.
    """
    spec: dict[str, Any] = _closed(copy.deepcopy(load_spec()))
    return add_default_error_response(spec, {"$ref": "#/components/schemas/numbers_Errors"})


SPEC = load_spec()
CONTRACT = OpenAPI.from_dict(_contract_spec())
FEATURES_SCHEMA = SPEC["paths"]["/available_phone_numbers"]["get"]["parameters"][0]["schema"]["properties"][
    "features"
]
SPEC_HOST = "https://api.telnyx.com"
"""The spec's server is ``https://api.telnyx.com/v2``."""
UNPARSED_QUERY = ("filter[features]",)
"""Checked by :func:`check_request`: openapi-core cannot cast it."""


def spec_request(
    method: str,
    path: str,
    query: list[tuple[str, str]],
    body: bytes | None,
    headers: dict[str, str],
) -> SpecRequest:
    """A request to the spec's server (``path`` starts with ``/v2``)."""
    return SpecRequest.build(
        method,
        path,
        host_url=SPEC_HOST,
        query=query,
        body=body,
        headers=headers.items(),
        skip_query=UNPARSED_QUERY,
    )


def to_spec(request: httpx.Request) -> SpecRequest:
    """A request sent to the fake, as it would have gone to the real API."""
    assert request.url.path.startswith(MOUNT)
    path = "/v2" + request.url.path[len(MOUNT) :]
    return SpecRequest.of(request, host_url=SPEC_HOST, path=path, skip_query=UNPARSED_QUERY)


def check_request(request: SpecRequest) -> None:
    try:
        CONTRACT.validate_request(request)
        for key, value in request.query:
            if key == "filter[features]":
                jsonschema.validate(value.split(","), FEATURES_SCHEMA)
    except (OpenAPIError, jsonschema.ValidationError) as exc:
        raise ContractViolation(f"{request.method.upper()} {request.path}: {explain(exc)}") from exc


def check_response(request: SpecRequest, status: int, body: Any) -> None:
    try:
        CONTRACT.validate_response(request, SpecResponse.json(status, body))
    except OpenAPIError as exc:
        raise ContractViolation(
            f"{request.method.upper()} {request.path} -> {status}: {explain(exc)}"
        ) from exc


def check_answer(request: SpecRequest, response: SpecResponse) -> None:
    """An answer on the wire: JSON, and what the spec says for its status."""
    try:
        body = json.loads(response.data)
    except ValueError:
        raise ContractViolation(f"{request.method.upper()} {request.path}: answer is not JSON") from None
    check_response(request, response.status_code, body)


def contract_transport(
    app: ASGIApp, *, check_requests: bool = True, check_responses: bool = True
) -> ContractTransport:
    """Serves ``app`` in-process; checks every exchange against the Telnyx spec and records it."""
    return ContractTransport(
        app,
        to_spec=to_spec,
        check_request=check_request,
        check_response=check_answer,
        check_requests=check_requests,
        check_responses=check_responses,
        mount=MOUNT,
    )


# -- fixtures --------------------------------------------------------------------------------------


@dataclass
class ManualClock:
    """Monotonic time that moves only when told to."""

    now: float = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class TelnyxEnv:
    fake: FakeTelnyx
    transport: ContractTransport
    client: httpx.AsyncClient
    http: ProviderHTTP

    def driver(self, messaging_profile_id: str | None = None, seed: int = 1) -> TelnyxNumberDriver:
        return TelnyxNumberDriver(self.http, messaging_profile_id, rng=random.Random(seed))

    async def call(self, method: str, path: str, **kwargs: Any) -> Any:
        """A raw authenticated call (still contract-checked); the decoded JSON answer."""
        headers = {"Authorization": f"Bearer {API_KEY}"}
        response = await self.client.request(method, BASE_URL + path, headers=headers, **kwargs)
        assert response.status_code == 200, response.text
        return response.json()


@asynccontextmanager
async def telnyx_env(
    fake: FakeTelnyx | None = None,
    *,
    check_requests: bool = True,
    check_responses: bool = True,
    wrap: Callable[[ASGIApp], ASGIApp] | None = None,
    auth: bool = True,
) -> AsyncIterator[TelnyxEnv]:
    fake = fake or FakeTelnyx(seed=11)
    app: ASGIApp = Starlette(routes=[Mount(MOUNT, app=fake.asgi())])
    transport = contract_transport(
        wrap(app) if wrap else app, check_requests=check_requests, check_responses=check_responses
    )
    async with httpx.AsyncClient(transport=transport) as client:
        http = (
            telnyx_http(client, BASE_URL, API_KEY)
            if auth
            else ProviderHTTP("telnyx", client, BASE_URL, auth_headers={})
        )
        yield TelnyxEnv(fake, transport, client, http)


@pytest.fixture
async def env() -> AsyncIterator[TelnyxEnv]:
    async with telnyx_env() as made:
        yield made


def want(instance: str = "abc123", **params: Any) -> DesiredResource:
    return DesiredResource(
        kind=ResourceKind.TELNYX_NUMBER, instance_id=instance, name=f"convos-agent-{instance}", params=params
    )


def held(fake: FakeTelnyx) -> dict[str, dict[str, Any]]:
    """The fake's phone numbers by id."""
    return {n["id"]: n for n in fake.snapshot()["phone_numbers"]}


# -- the driver's life cycle -------------------------------------------------------------------


async def test_life_cycle_follows_the_contract(env: TelnyxEnv) -> None:
    driver, desired = env.driver(), want()
    assert await driver.lookup(desired) is None

    made = await driver.create(desired)

    assert made.ready and made.status == "ready" and made.name == desired.name
    assert E164.match(made.attributes["phone_number"])
    [profile] = env.fake.snapshot()["messaging_profiles"]
    assert profile["name"] == "convos-sms"
    number = held(env.fake)[made.external_id]
    assert number["name"] == desired.name
    assert number["phone_number"] == made.attributes["phone_number"]
    assert number["messaging_profile_id"] == profile["id"] == made.attributes["messaging_profile_id"]

    assert await driver.lookup(desired) == made
    assert await driver.observe(made.external_id, desired) == made
    assert await driver.update(made.external_id, desired) == made
    assert await driver.list_managed("convos-agent-") == [made]
    assert await driver.list_managed("someone-else-") == []

    await driver.delete(made.external_id, desired)
    assert held(env.fake) == {}
    with pytest.raises(NotFound):
        await driver.delete(made.external_id, desired)
    with pytest.raises(NotFound):
        await driver.observe(made.external_id, desired)
    # Released numbers go back on sale.
    search = await env.call("GET", "/available_phone_numbers", params={"filter[limit]": "500"})
    assert made.attributes["phone_number"] in [n["phone_number"] for n in search["data"]]


async def test_contract_check_fails_on_a_renamed_field(env: TelnyxEnv) -> None:
    made = await env.driver().create(want())
    answer = await env.call("GET", f"/phone_numbers/{made.external_id}")
    request = spec_request(
        "get", f"/v2/phone_numbers/{made.external_id}", [], None, {"authorization": "Bearer x"}
    )
    check_response(request, 200, answer)  # the real answer passes

    required_renamed = copy.deepcopy(answer)
    required_renamed["data"]["number"] = required_renamed["data"].pop("phone_number")
    with pytest.raises(ContractViolation, match="phone_number"):
        check_response(request, 200, required_renamed)
    optional_renamed = copy.deepcopy(answer)
    optional_renamed["data"]["customer_ref"] = optional_renamed["data"].pop("customer_reference")
    with pytest.raises(ContractViolation, match="customer_ref"):
        check_response(request, 200, optional_renamed)

    order = {"phone_numbers": [{"phone_number": "+12125550100"}], "customer_ref": "convos-agent-x"}
    bad_body = spec_request(
        "post",
        "/v2/number_orders",
        [],
        json.dumps(order).encode(),
        {"authorization": "Bearer x", "content-type": "application/json"},
    )
    with pytest.raises(ContractViolation, match="customer_ref"):
        check_request(bad_body)
    bad_feature = spec_request(
        "get",
        "/v2/available_phone_numbers",
        [("filter[features]", "sms,texting")],
        None,
        {"authorization": "Bearer x"},
    )
    with pytest.raises(ContractViolation, match="texting"):
        check_request(bad_feature)


async def test_contract_check_runs_on_the_wire(env: TelnyxEnv) -> None:
    listing = await env.call("GET", "/phone_numbers")
    renamed = {"data": [], "metadata": listing["meta"]}  # "meta" renamed
    env.fake.faults.fail_next(200, body=renamed, method="GET", path_contains="/phone_numbers")

    with pytest.raises(ContractViolation, match="metadata"):
        await env.driver().list_managed("convos-agent-")


async def test_lookup_and_list_page_through_three_pages() -> None:
    async with telnyx_env(FakeTelnyx(seed=3, page_size=2)) as env:
        driver = env.driver()
        made = [await driver.create(want(f"i{n}")) for n in range(5)]
        await env.driver(seed=2).create(DesiredResource(ResourceKind.TELNYX_NUMBER, "x", "other-x"))
        listing = await env.call("GET", "/phone_numbers", params={"page[size]": "250"})
        assert listing["meta"]["total_pages"] == 3  # the fake caps pages at 2 numbers

        managed = await driver.list_managed("convos-agent-")

        assert sorted(o.external_id for o in managed) == sorted(o.external_id for o in made)
        assert all(o.ready for o in managed)
        assert {o.name for o in managed} == {f"convos-agent-i{n}" for n in range(5)}


async def test_the_oldest_profile_of_the_name_wins_across_pages() -> None:
    async with telnyx_env(FakeTelnyx(seed=4, page_size=2)) as env:
        body = {"name": "convos-sms", "whitelisted_destinations": ["US"]}
        created = [(await env.call("POST", "/messaging_profiles", json=body))["data"]["id"] for _ in range(5)]

        made = await env.driver().create(want())

        assert made.attributes["messaging_profile_id"] == created[0]
        assert len(env.fake.snapshot()["messaging_profiles"]) == 5  # none added


async def test_configured_profile_is_used_as_is(env: TelnyxEnv) -> None:
    body = {"name": "ops-profile", "whitelisted_destinations": ["US", "CA"]}
    profile_id = (await env.call("POST", "/messaging_profiles", json=body))["data"]["id"]

    made = await env.driver(messaging_profile_id=profile_id).create(want())

    assert held(env.fake)[made.external_id]["messaging_profile_id"] == profile_id
    assert [p["id"] for p in env.fake.snapshot()["messaging_profiles"]] == [profile_id]


async def test_profile_is_created_once_and_reused(env: TelnyxEnv) -> None:
    first = await env.driver().create(want("a"))
    second = await env.driver(seed=2).create(want("b"))  # a fresh driver: nothing cached

    [profile] = env.fake.snapshot()["messaging_profiles"]
    assert (
        first.attributes["messaging_profile_id"] == second.attributes["messaging_profile_id"] == profile["id"]
    )


# -- races, conflicts and slow provisioning -----------------------------------------------------


def answer_together(app: ASGIApp, path: str, count: int = 2) -> ASGIApp:
    """Hold the answers to the first ``count`` GETs of ``path`` until all are served.

    So the callers see the same state, as overlapping provisioners do. (In-process calls never
    suspend: without this, one create would run to its end before the other one started.)
    """
    barrier = asyncio.Barrier(count)
    held_back = [0]

    async def gate(scope: Scope, receive: Receive, send: Send) -> None:
        wanted = scope["type"] == "http" and scope["method"] == "GET" and scope["path"] == MOUNT + path
        if not wanted or held_back[0] >= count:
            await app(scope, receive, send)
            return
        held_back[0] += 1
        answer: list[Message] = []

        async def keep(message: Message) -> None:
            answer.append(message)

        await app(scope, receive, keep)
        await barrier.wait()
        for message in answer:
            await send(message)

    return gate


async def test_racing_creates_end_with_distinct_numbers() -> None:
    fake = FakeTelnyx(seed=5, inventory=3)
    async with telnyx_env(fake, wrap=lambda app: answer_together(app, "/available_phone_numbers")) as env:
        # Same seed: both pick the same number from the same hits, as in the production incident.
        first, second = env.driver(seed=9), env.driver(seed=9)

        made = await asyncio.gather(first.create(want("a")), second.create(want("b")))

        numbers = held(fake)
        assert len(numbers) == 2
        assert {o.external_id for o in made} == set(numbers)
        assert len({o.attributes["phone_number"] for o in made}) == 2
        assert {n["name"] for n in numbers.values()} == {"convos-agent-a", "convos-agent-b"}
        # The loser saw the number taken and searched again.
        assert env.transport.count("POST", "/number_orders", 422) == 1
        assert env.transport.count("GET", "/available_phone_numbers") == 3


async def test_racing_profile_creators_settle_on_the_oldest() -> None:
    async with telnyx_env(wrap=lambda app: answer_together(app, "/messaging_profiles")) as env:
        made = await asyncio.gather(
            env.driver(seed=1).create(want("a")), env.driver(seed=2).create(want("b"))
        )

        profiles = env.fake.snapshot()["messaging_profiles"]
        assert len(profiles) == 2  # both saw none and made one ...
        assert {o.attributes["messaging_profile_id"] for o in made} == {profiles[0]["id"]}  # ... one is used
        assert all(o.ready for o in made)


async def test_conflicts_stop_after_five_attempts(env: TelnyxEnv) -> None:
    env.fake.faults.fail_next(
        422,
        "Number not available",
        method="POST",
        path_contains="/number_orders",
        times=MAX_PURCHASE_ATTEMPTS + 1,
    )

    with pytest.raises(Conflict, match="after 5 attempts"):
        await env.driver().create(want())

    assert held(env.fake) == {}
    assert env.transport.count("POST", "/number_orders") == MAX_PURCHASE_ATTEMPTS
    assert env.transport.count("GET", "/available_phone_numbers") == MAX_PURCHASE_ATTEMPTS


async def test_throttled_order_is_not_retried() -> None:
    async with telnyx_env() as env:
        env.fake.faults.fail_next(
            429, "Too many requests", retry_after=7, method="POST", path_contains="/number_orders"
        )

        with pytest.raises(Throttled) as caught:
            await env.driver().create(want())

        assert caught.value.retry_after == 7.0
        assert env.transport.count("POST", "/number_orders") == 1
        assert held(env.fake) == {}


async def test_slow_provisioning_is_finished_by_lookup_and_update() -> None:
    clock = ManualClock()
    fake = FakeTelnyx(seed=6, ready_delay=30.0, clock=clock)
    async with telnyx_env(fake) as env:
        driver, desired = env.driver(), want()

        with pytest.raises(Transient, match="not ready yet"):
            await driver.create(desired)

        [number] = fake.snapshot()["phone_numbers"]
        assert number["status"] == "purchase-pending" and number["messaging_profile_id"] is None
        found = await driver.lookup(desired)
        assert found is not None and found.external_id == number["id"]
        assert not found.ready and found.status == "purchase-pending"
        with pytest.raises(Transient, match="not ready yet"):
            await driver.update(found.external_id, desired)

        clock.advance(31.0)
        done = await driver.update(found.external_id, desired)

        assert done.ready and done.external_id == number["id"]
        [profile] = fake.snapshot()["messaging_profiles"]
        assert held(fake)[number["id"]]["messaging_profile_id"] == profile["id"]
        assert (await driver.observe(number["id"], desired)).ready
        assert len(held(fake)) == 1  # nothing bought twice


async def test_lookup_finds_a_number_through_its_order(env: TelnyxEnv) -> None:
    driver, desired = env.driver(), want()
    made = await driver.create(desired)
    await env.call("PATCH", f"/phone_numbers/{made.external_id}", json={"customer_reference": ""})

    found = await driver.lookup(desired)

    assert found is not None and found.external_id == made.external_id
    assert not found.ready and found.status == "unnamed"
    repaired = await driver.update(made.external_id, desired)
    assert repaired.ready and held(env.fake)[made.external_id]["name"] == desired.name


async def test_lookup_ignores_an_ordered_number_now_named_otherwise(env: TelnyxEnv) -> None:
    driver, desired = env.driver(), want()
    made = await driver.create(desired)
    await env.call(
        "PATCH", f"/phone_numbers/{made.external_id}", json={"customer_reference": "convos-agent-zz"}
    )

    assert await driver.lookup(desired) is None


async def test_lookup_waits_for_a_pending_order(env: TelnyxEnv) -> None:
    desired = want()
    pending = {
        "id": "12ade33a-21c0-473b-b055-b3c836e1c292",
        "record_type": "number_order",
        "status": "pending",
        "customer_reference": desired.name,
        "phone_numbers": [{"id": "dc8e4d67-33a0-4cbb-af74-7b58f05bd494", "phone_number": "+12125550100"}],
    }
    meta = {"page_number": 1, "page_size": 250, "total_pages": 1, "total_results": 1}
    orders = {"data": [pending], "meta": meta}
    env.fake.faults.fail_next(200, body=orders, method="GET", path_contains="/number_orders")

    # Not listed yet, but bought: buying again now would make a duplicate.
    with pytest.raises(Transient, match="still pending"):
        await env.driver().lookup(desired)


async def test_update_reassigns_a_lost_profile(env: TelnyxEnv) -> None:
    driver, desired = env.driver(), want()
    made = await driver.create(desired)
    await env.call("PATCH", f"/phone_numbers/{made.external_id}/messaging", json={"messaging_profile_id": ""})
    drifted = await driver.observe(made.external_id, desired)
    assert not drifted.ready and drifted.status == "profile-unassigned"

    repaired = await driver.update(made.external_id, desired)

    assert repaired == made
    assert held(env.fake)[made.external_id]["messaging_profile_id"] == made.attributes["messaging_profile_id"]


# -- error classes -------------------------------------------------------------------------------


async def test_server_errors_are_transient() -> None:
    async with telnyx_env() as env:
        env.fake.faults.fail_next(503, "Service unavailable", path_contains="/phone_numbers")
        with pytest.raises(Transient, match="HTTP 503"):
            await env.driver().list_managed("convos-agent-")


async def test_missing_credentials_are_a_config_error() -> None:
    async with telnyx_env(auth=False, check_requests=False) as env:
        with pytest.raises(ConfigError, match="HTTP 401"):
            await env.driver().create(want())
        assert env.fake.snapshot()["messaging_profiles"] == []


@pytest.mark.parametrize("status", [200, 502])
async def test_html_answers_are_transient_naming_provider_and_operation(status: int) -> None:
    async with telnyx_env(check_responses=False) as env:
        env.fake.faults.fail_next(status, raw="<html>Bad gateway</html>", path_contains="/phone_numbers")
        with pytest.raises(Transient) as caught:
            await env.driver().list_managed("convos-agent-")
        assert caught.value.provider == "telnyx" and caught.value.operation == "list_numbers"
        assert str(caught.value).startswith("telnyx list_numbers:")


async def test_answer_missing_a_field_is_transient() -> None:
    async with telnyx_env(check_responses=False) as env:
        broken = {"data": [{"id": "1", "status": "active"}], "meta": {"total_pages": 1}}
        env.fake.faults.fail_next(200, body=broken, path_contains="/phone_numbers")
        with pytest.raises(Transient, match="lacks phone_number"):
            await env.driver().list_managed("convos-agent-")


@pytest.mark.parametrize(("status", "error"), [(401, ConfigError), (429, Throttled), (500, Transient)])
async def test_no_secret_in_error_texts(status: int, error: type[ProviderError]) -> None:
    async with telnyx_env() as env:
        env.fake.faults.fail_next(status, f"token {API_KEY} refused", retry_after=3)
        with pytest.raises(error) as caught:
            await env.driver().create(want())
        assert "refused" in str(caught.value)  # the provider's text is kept ...
        for text in (str(caught.value), repr(caught.value), caught.value.message):
            assert API_KEY not in text  # ... without the key it echoed


# -- the simulator itself ----------------------------------------------------------------------


@pytest.fixture
async def raw_app() -> AsyncIterator[tuple[FakeTelnyx, httpx.AsyncClient]]:
    """The fake without contract checks on requests, to send it what a broken client would."""
    fake = FakeTelnyx(seed=8, inventory=30)
    app = Starlette(routes=[Mount(MOUNT, app=fake.asgi())])
    transport = contract_transport(app, check_requests=False)
    async with httpx.AsyncClient(transport=transport, base_url=BASE_URL) as client:
        yield fake, client


async def test_fake_requires_a_bearer_token(raw_app: tuple[FakeTelnyx, httpx.AsyncClient]) -> None:
    _, client = raw_app
    answer = await client.get("/phone_numbers")
    assert answer.status_code == 401
    assert answer.json()["errors"][0]["title"] == "Authentication failed"


@pytest.mark.parametrize(
    ("body", "pointer"),
    [
        ({"phone_numbers": [{"number": "+12125550100"}]}, "/phone_numbers/0"),
        ({"phone_numbers": "+12125550100"}, "/phone_numbers"),
        ({"phone_numbers": [{"phone_number": 12125550100}]}, "/phone_numbers/0/phone_number"),
    ],
)
async def test_fake_rejects_bodies_off_the_schema(
    raw_app: tuple[FakeTelnyx, httpx.AsyncClient], body: dict[str, Any], pointer: str
) -> None:
    fake, client = raw_app
    answer = await client.post("/number_orders", json=body, headers=AUTH)
    assert answer.status_code == 400
    assert answer.json()["errors"][0]["source"]["pointer"] == pointer
    assert fake.snapshot()["phone_numbers"] == []


async def test_fake_sells_each_number_once(raw_app: tuple[FakeTelnyx, httpx.AsyncClient]) -> None:
    fake, client = raw_app
    hits = (await client.get("/available_phone_numbers", params={"filter[limit]": "3"}, headers=AUTH)).json()
    number = hits["data"][0]["phone_number"]
    order = {"phone_numbers": [{"phone_number": number}], "customer_reference": "r1"}
    first = await client.post("/number_orders", json=order, headers=AUTH)
    again = await client.post("/number_orders", json=order, headers=AUTH)
    by_number = await client.get(f"/phone_numbers/{number}", headers=AUTH)
    later = await client.get("/available_phone_numbers", params={"filter[limit]": "3"}, headers=AUTH)

    assert len(hits["data"]) == 3
    assert first.status_code == 200 and first.json()["data"]["status"] == "success"
    assert again.status_code == 422 and again.json()["errors"][0]["title"] == "Number not available"
    [held_number] = fake.snapshot()["phone_numbers"]
    assert by_number.json()["data"]["id"] == held_number["id"] and held_number["name"] == "r1"
    assert number not in [n["phone_number"] for n in later.json()["data"]]


async def test_fake_search_honours_the_sms_feature(raw_app: tuple[FakeTelnyx, httpx.AsyncClient]) -> None:
    _, client = raw_app
    every = await client.get("/available_phone_numbers", params={"filter[limit]": "30"}, headers=AUTH)
    sms = await client.get(
        "/available_phone_numbers",
        params={"filter[limit]": "30", "filter[features]": "sms"},
        headers=AUTH,
    )
    assert len(every.json()["data"]) == 30
    assert 0 < len(sms.json()["data"]) < 30
    assert all({"name": "sms"} in n["features"] for n in sms.json()["data"])


async def test_fake_rejects_an_oversized_page(raw_app: tuple[FakeTelnyx, httpx.AsyncClient]) -> None:
    _, client = raw_app
    answer = await client.get("/phone_numbers", params={"page[size]": "251"}, headers=AUTH)
    assert answer.status_code == 400
    assert answer.json()["errors"][0]["source"]["parameter"] == "page[size]"


async def test_fake_reset_puts_everything_back(env: TelnyxEnv) -> None:
    await env.driver().create(want())
    env.fake.faults.fail_next(500)

    env.fake.reset()

    assert env.fake.snapshot() == {"phone_numbers": [], "messaging_profiles": []}
    assert await env.driver().lookup(want()) is None  # the fault is gone too
