"""OpenRouterKeyDriver against FakeOpenRouter, with every exchange checked against the spec.

The fake is mounted at ``/api/v1`` and the client's base URL is the real server
(``https://openrouter.ai/api/v1``), so each request and response can be validated by openapi-core
against ``openrouter-keys.openapi.yaml`` exactly as the real API would be described. The spec is
loaded with two documented additions (specs README section 2): the newer SDK's required
``external_user``/``last_used_at`` key fields, and a ``default`` error response in OpenRouter's
envelope for statuses an operation does not list. Unknown properties are forbidden, so a renamed
field fails in either direction (see ``test_contract_check_catches_renamed_fields``).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from openapi_core import Config, OpenAPI
from openapi_core.exceptions import OpenAPIError
from starlette.applications import Starlette
from starlette.routing import Mount

import providers.simulated
from providers.base import (
    ConfigError,
    DesiredResource,
    NotFound,
    ResourceDriver,
    ResourceKind,
    Throttled,
    Transient,
)
from providers.http import ProviderHTTP
from providers.openrouter import OpenRouterKeyDriver
from providers.simulated.openrouter import FakeOpenRouter
from tests.openapi_contract import Recorder, SpecRequest, SpecResponse, add_default_error_response

SERVER = "https://openrouter.ai"
BASE_URL = SERVER + "/api/v1"
MANAGEMENT_KEY = "sk-or-v1-" + "5eC7e7" * 10 + "abcd"
SPEC_PATH = Path(providers.simulated.__file__).parent / "specs" / "openrouter-keys.openapi.yaml"


def _load_spec() -> dict[str, Any]:
    spec: dict[str, Any] = yaml.safe_load(SPEC_PATH.read_text())
    newer = {"external_user": {"type": ["string", "null"]}, "last_used_at": {"type": ["string", "null"]}}

    def add_newer_fields(node: Any) -> None:
        if isinstance(node, dict):
            required = node.get("required")
            if isinstance(required, list) and {"hash", "label"} <= set(required):
                node["properties"].update(newer)
                node["required"] += list(newer)
            for child in node.values():
                add_newer_fields(child)
        elif isinstance(node, list):
            for child in node:
                add_newer_fields(child)

    add_newer_fields(spec)
    add_default_error_response(spec, {"$ref": "#/components/schemas/InternalServerResponse"})
    for operations in spec["paths"].values():
        for operation in operations.values():
            # openapi-core 0.23 cannot deserialise a parameter typed [integer, "null"]: keep the integer.
            for parameter in operation.get("parameters", []):
                if isinstance(parameter["schema"].get("type"), list):
                    [parameter["schema"]["type"]] = [t for t in parameter["schema"]["type"] if t != "null"]
    return spec


CONTRACT = OpenAPI.from_dict(_load_spec(), config=Config(additional_properties_default_policy="forbid"))


def _app(fake: FakeOpenRouter) -> Starlette:
    return Starlette(routes=[Mount("/api/v1", app=fake.asgi())])


@asynccontextmanager
async def plain_driver(
    transport: httpx.AsyncBaseTransport, key: str | None = MANAGEMENT_KEY
) -> AsyncIterator[OpenRouterKeyDriver]:
    """A driver whose exchanges are not spec-checked: for answers that break the contract on purpose."""
    auth = {} if key is None else {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(transport=transport, base_url=SERVER) as plain:
        yield OpenRouterKeyDriver(ProviderHTTP("openrouter", plain, BASE_URL, auth))


@pytest.fixture
def fake() -> FakeOpenRouter:
    return FakeOpenRouter(seed=7, page_size=2)


@pytest.fixture
def recorder() -> Recorder:
    return Recorder(CONTRACT)


@pytest.fixture
async def client(fake: FakeOpenRouter, recorder: Recorder) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=_app(fake))
    async with httpx.AsyncClient(
        transport=transport, base_url=SERVER, event_hooks={"response": [recorder]}
    ) as checked:
        yield checked


@pytest.fixture
def driver(client: httpx.AsyncClient) -> OpenRouterKeyDriver:
    http = ProviderHTTP("openrouter", client, BASE_URL, {"Authorization": f"Bearer {MANAGEMENT_KEY}"})
    return OpenRouterKeyDriver(http)


@pytest.fixture
async def unchecked_driver(fake: FakeOpenRouter) -> AsyncIterator[OpenRouterKeyDriver]:
    async with plain_driver(httpx.ASGITransport(app=_app(fake))) as unchecked:
        yield unchecked


def want(
    name: str = "convos-agent-abc123", limit: float = 20.0, limit_reset: str | None = "monthly"
) -> DesiredResource:
    return DesiredResource(
        kind=ResourceKind.OPENROUTER_KEY,
        instance_id=name.removeprefix("convos-agent-"),
        name=name,
        params={"limit": limit, "limit_reset": limit_reset},
    )


# --- the driver's happy paths -------------------------------------------------------------------


async def test_driver_satisfies_the_protocol(driver: OpenRouterKeyDriver) -> None:
    assert isinstance(driver, ResourceDriver)
    assert driver.kind is ResourceKind.OPENROUTER_KEY


async def test_create_returns_the_key_once_and_the_fake_holds_it(
    driver: OpenRouterKeyDriver, fake: FakeOpenRouter
) -> None:
    created = await driver.create(want())

    assert len(created.external_id) == 64
    assert created.name == "convos-agent-abc123"
    assert created.secret is not None
    assert created.secret.startswith("sk-or-v1-")
    assert len(created.secret) == len("sk-or-v1-") + 64
    assert created.attributes == {
        "name": "convos-agent-abc123",
        "limit": 20.0,
        "limit_reset": "monthly",
        "disabled": False,
    }
    assert created.secret not in repr(created)
    snapshot = fake.snapshot()
    assert snapshot == {
        "keys": [
            {
                "id": created.external_id,
                "name": "convos-agent-abc123",
                "limit": 20.0,
                "limit_reset": "monthly",
                "disabled": False,
            }
        ]
    }
    assert created.secret not in json.dumps(snapshot)


async def test_create_sends_limit_reset_only_when_set(
    driver: OpenRouterKeyDriver, fake: FakeOpenRouter, recorder: Recorder
) -> None:
    await driver.create(want(limit_reset=None))

    [post] = recorder.sent("POST")
    assert json.loads(post.content) == {"name": "convos-agent-abc123", "limit": 20.0}
    assert fake.snapshot()["keys"][0]["limit_reset"] is None


async def test_lookup_pages_through_every_key_for_an_exact_name(
    driver: OpenRouterKeyDriver, recorder: Recorder
) -> None:
    target = await driver.create(want("convos-agent-1"))  # the oldest: on the last page
    for i in range(2, 8):
        await driver.create(want(f"convos-agent-{i}"))
    await driver.create(want("convos-agent-10"))  # a prefix clash that must not match

    found = await driver.lookup(want("convos-agent-1"))

    assert found is not None
    assert found.external_id == target.external_id
    assert found.secret is None  # OpenRouter never shows the key again
    offsets = [request.url.params["offset"] for request in recorder.sent("GET")]
    assert offsets == ["0", "2", "4", "6"]  # 8 keys, 2 a page: found on the fourth


async def test_lookup_reads_to_the_empty_page_before_answering_none(
    driver: OpenRouterKeyDriver, recorder: Recorder
) -> None:
    for i in range(5):
        await driver.create(want(f"convos-agent-other{i}"))

    assert await driver.lookup(want("convos-agent-abc123")) is None
    offsets = [request.url.params["offset"] for request in recorder.sent("GET")]
    assert offsets == ["0", "2", "4", "5"]  # pages of 2, 2, 1, then the empty page


async def test_lookup_finds_a_disabled_key(
    driver: OpenRouterKeyDriver, client: httpx.AsyncClient
) -> None:
    created = await driver.create(want())
    disabled = await client.patch(
        f"/api/v1/keys/{created.external_id}",
        json={"disabled": True},
        headers={"Authorization": f"Bearer {MANAGEMENT_KEY}"},
    )
    assert disabled.status_code == 200

    found = await driver.lookup(want())

    assert found is not None
    assert found.attributes["disabled"] is True


async def test_list_managed_returns_every_key_with_the_prefix(driver: OpenRouterKeyDriver) -> None:
    ours = {(await driver.create(want(f"convos-agent-{i}"))).external_id for i in range(5)}
    await driver.create(want("someone-else"))

    managed = await driver.list_managed("convos-agent-")

    assert {key.external_id for key in managed} == ours
    assert all(key.secret is None for key in managed)


async def test_update_changes_limit_and_clears_the_reset(
    driver: OpenRouterKeyDriver, fake: FakeOpenRouter, recorder: Recorder
) -> None:
    created = await driver.create(want(limit=20.0, limit_reset="monthly"))

    updated = await driver.update(created.external_id, want(limit=35.5, limit_reset=None))

    assert updated.attributes["limit"] == 35.5
    assert updated.attributes["limit_reset"] is None
    [patch] = recorder.sent("PATCH")
    assert json.loads(patch.content) == {"limit": 35.5, "limit_reset": None}
    observed = await driver.observe(created.external_id, want())
    assert observed.attributes == updated.attributes
    assert fake.snapshot()["keys"][0]["limit"] == 35.5


async def test_delete_removes_the_key_and_a_second_delete_raises_not_found(
    driver: OpenRouterKeyDriver, fake: FakeOpenRouter
) -> None:
    created = await driver.create(want())

    await driver.delete(created.external_id, want())

    assert fake.snapshot() == {"keys": []}
    with pytest.raises(NotFound):
        await driver.delete(created.external_id, want())
    with pytest.raises(NotFound):
        await driver.observe(created.external_id, want())


async def test_malformed_params_are_a_config_error_and_send_nothing(
    driver: OpenRouterKeyDriver, recorder: Recorder
) -> None:
    with pytest.raises(ConfigError):
        await driver.create(want(limit="ten"))  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        await driver.create(want(limit_reset="yearly"))
    assert recorder.exchanges == []


# --- failures and the error vocabulary ----------------------------------------------------------


async def test_429_is_throttled_with_the_providers_retry_after(
    driver: OpenRouterKeyDriver, fake: FakeOpenRouter
) -> None:
    fake.faults.fail_next(429, "Rate limit exceeded", retry_after=17)

    with pytest.raises(Throttled) as caught:
        await driver.create(want())

    assert caught.value.retry_after == 17.0
    assert fake.snapshot() == {"keys": []}


@pytest.mark.parametrize("status", [500, 502, 503])
async def test_5xx_is_transient(driver: OpenRouterKeyDriver, fake: FakeOpenRouter, status: int) -> None:
    fake.faults.fail_next(status, "upstream trouble")

    with pytest.raises(Transient):
        await driver.lookup(want())


async def test_missing_credentials_are_a_config_error(fake: FakeOpenRouter) -> None:
    async with plain_driver(httpx.ASGITransport(app=_app(fake)), key=None) as driver:
        with pytest.raises(ConfigError) as caught:
            await driver.create(want())

    assert "401" in str(caught.value)
    assert fake.snapshot() == {"keys": []}


async def test_an_html_answer_is_transient_naming_provider_and_operation(
    unchecked_driver: OpenRouterKeyDriver, fake: FakeOpenRouter
) -> None:
    fake.faults.fail_next(200, raw="<html><body>Bad gateway</body></html>", method="POST")

    with pytest.raises(Transient) as caught:
        await unchecked_driver.create(want())

    assert "openrouter" in str(caught.value)
    assert "create_key" in str(caught.value)


async def test_an_html_error_page_is_transient(
    unchecked_driver: OpenRouterKeyDriver, fake: FakeOpenRouter
) -> None:
    fake.faults.fail_next(502, raw="<!DOCTYPE html><title>502 Bad Gateway</title>")

    with pytest.raises(Transient) as caught:
        await unchecked_driver.observe("f" * 64, want())

    assert "get_key" in str(caught.value)
    assert "<" not in str(caught.value)


async def test_an_answer_missing_a_required_field_is_transient() -> None:
    def server(request: httpx.Request) -> httpx.Response:
        key = {"name": "convos-agent-abc123"}  # no hash
        return httpx.Response(201, json={"data": key, "key": "sk-or-v1-" + "0" * 64})

    async with plain_driver(httpx.MockTransport(server)) as driver:
        with pytest.raises(Transient) as caught:
            await driver.create(want())

    assert "contract mismatch" in str(caught.value)
    assert "sk-or-v1-" not in str(caught.value)


async def test_a_listing_that_ignores_offset_is_transient_not_an_endless_loop() -> None:
    key = {"hash": "a" * 64, "name": "someone-else", "disabled": False, "limit": None, "limit_reset": None}

    def server(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"data": [key]})

    async with plain_driver(httpx.MockTransport(server)) as driver:
        with pytest.raises(Transient, match="did not advance"):
            await driver.lookup(want())


async def test_no_secret_reaches_an_error_text(driver: OpenRouterKeyDriver, fake: FakeOpenRouter) -> None:
    created = await driver.create(want())
    assert created.secret is not None
    # A provider that echoes credentials back in its error message.
    fake.faults.fail_next(401, f"Invalid key {MANAGEMENT_KEY}; last created {created.secret}")
    fake.faults.fail_next(500, f"crashed while handling {MANAGEMENT_KEY}")

    errors = []
    for _ in range(2):
        with pytest.raises((ConfigError, Transient)) as caught:
            await driver.observe(created.external_id, want())
        errors.append(caught.value)

    for error in errors:
        for text in (str(error), repr(error), error.message):
            assert MANAGEMENT_KEY not in text
            assert created.secret not in text


# --- the fake on its own ------------------------------------------------------------------------


async def test_fake_answers_bad_requests_in_the_openrouter_envelope(fake: FakeOpenRouter) -> None:
    auth = {"Authorization": f"Bearer {MANAGEMENT_KEY}"}
    # These requests break the contract on purpose, so only the answers are checked against it.
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=_app(fake)), base_url=BASE_URL) as plain:
        answers = {
            401: await plain.get("/keys"),
            400: await plain.post("/keys", json={"name": "n", "limit": "5"}, headers=auth),
            404: await plain.get("/keys/" + "0" * 64, headers=auth),
        }
        empty_name = await plain.post("/keys", json={"name": ""}, headers=auth)
        garbled = await plain.post("/keys", content=b"{not json", headers=auth)

    for status, answer in answers.items():
        assert answer.status_code == status
        assert answer.json()["error"]["code"] == status
        CONTRACT.validate_response(SpecRequest.of(answer.request), SpecResponse.of(answer))
    assert empty_name.status_code == garbled.status_code == 400
    assert fake.snapshot() == {"keys": []}


async def test_fake_key_objects_carry_the_newer_sdk_fields(
    driver: OpenRouterKeyDriver, client: httpx.AsyncClient
) -> None:
    created = await driver.create(want())

    answer = await client.get(
        f"/api/v1/keys/{created.external_id}", headers={"Authorization": f"Bearer {MANAGEMENT_KEY}"}
    )

    data = answer.json()["data"]
    assert data["external_user"] is None
    assert data["last_used_at"] is None
    assert data["label"].startswith("sk-or-v1-")
    assert created.secret is not None and created.secret not in answer.text


async def test_fake_is_reproducible_with_a_seed_and_reset_forgets(fake: FakeOpenRouter) -> None:
    async def first_hash(simulator: FakeOpenRouter) -> str:
        async with plain_driver(httpx.ASGITransport(app=_app(simulator))) as driver:
            return (await driver.create(want())).external_id

    assert await first_hash(FakeOpenRouter(seed=3)) == await first_hash(FakeOpenRouter(seed=3))
    await first_hash(fake)
    fake.reset()
    assert fake.snapshot() == {"keys": []}


# --- the contract check itself ------------------------------------------------------------------


async def test_contract_check_catches_renamed_fields(driver: OpenRouterKeyDriver, recorder: Recorder) -> None:
    await driver.create(want())
    [(request, response)] = recorder.exchanges
    sent = json.loads(request.content)
    answered = response.json()

    # Unchanged, the recorded exchange passes.
    CONTRACT.validate_request(SpecRequest.of(request))
    CONTRACT.validate_response(SpecRequest.of(request), SpecResponse.of(response))

    renamed_request = httpx.Request(
        "POST", request.url, headers=request.headers, json={"nme": sent["name"], "limit": sent["limit"]}
    )
    with pytest.raises(OpenAPIError):
        CONTRACT.validate_request(SpecRequest.of(renamed_request))

    answered["data"]["key_hash"] = answered["data"].pop("hash")
    renamed_response = httpx.Response(201, json=answered, request=request)
    with pytest.raises(OpenAPIError):
        CONTRACT.validate_response(SpecRequest.of(request), SpecResponse.of(renamed_response))
