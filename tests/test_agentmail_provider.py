"""AgentMailInboxDriver against FakeAgentMail, with every exchange checked against the spec.

The fake is mounted at ``/v0`` and the client's base URL is the real server
(``https://api.agentmail.to/v0``), so each request and response is validated by openapi-core
against ``agentmail-inboxes.openapi.json`` as the real API is described. The spec is loaded with
one documented addition (specs README section 3): a ``default`` response in AgentMail's error
envelopes for the statuses an operation does not list (401, 403 IsTakenError, 429, 5xx).
Unknown properties are forbidden, so a renamed field fails in either direction (see
``test_contract_check_catches_renamed_fields``).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from openapi_core import Config, OpenAPI
from openapi_core.exceptions import OpenAPIError
from starlette.applications import Starlette
from starlette.routing import Mount

import providers.simulated
from providers.agentmail import AgentMailInboxDriver
from providers.base import (
    ConfigError,
    Conflict,
    DesiredResource,
    NotFound,
    ResourceDriver,
    ResourceKind,
    Throttled,
    Transient,
)
from providers.http import ProviderHTTP
from providers.simulated.agentmail import FakeAgentMail
from tests.openapi_contract import Recorder, SpecRequest, SpecResponse, add_default_error_response

SERVER = "https://api.agentmail.to"
BASE_URL = SERVER + "/v0"
API_KEY = "am_" + "9Zq4Lm7Xw2" * 4
SPEC_PATH = Path(providers.simulated.__file__).parent / "specs" / "agentmail-inboxes.openapi.json"
TAKEN = {"name": "IsTakenError", "message": "Inbox username is taken", "code": "resource_taken"}


def _load_spec() -> dict[str, Any]:
    spec: dict[str, Any] = json.loads(SPEC_PATH.read_text())
    envelope = {
        "anyOf": [
            {"$ref": "#/components/schemas/ErrorResponse"},
            {"$ref": "#/components/schemas/ValidationErrorResponse"},
        ]
    }
    return add_default_error_response(spec, envelope)


CONTRACT = OpenAPI.from_dict(_load_spec(), config=Config(additional_properties_default_policy="forbid"))


def _app(fake: FakeAgentMail) -> Starlette:
    return Starlette(routes=[Mount("/v0", app=fake.asgi())])


@asynccontextmanager
async def plain_driver(
    transport: httpx.AsyncBaseTransport, key: str | None = API_KEY
) -> AsyncIterator[AgentMailInboxDriver]:
    """A driver whose exchanges are not spec-checked: for answers that break the contract on purpose."""
    auth = {} if key is None else {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(transport=transport, base_url=SERVER) as plain:
        yield AgentMailInboxDriver(ProviderHTTP("agentmail", plain, BASE_URL, auth))


@pytest.fixture
def fake() -> FakeAgentMail:
    return FakeAgentMail(seed=11, page_size=2)


@pytest.fixture
def recorder() -> Recorder:
    return Recorder(CONTRACT)


@pytest.fixture
async def client(fake: FakeAgentMail, recorder: Recorder) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=_app(fake))
    async with httpx.AsyncClient(
        transport=transport,
        base_url=BASE_URL,
        headers={"Authorization": f"Bearer {API_KEY}"},
        event_hooks={"response": [recorder]},
    ) as checked:
        yield checked


@pytest.fixture
def driver(client: httpx.AsyncClient) -> AgentMailInboxDriver:
    http = ProviderHTTP("agentmail", client, BASE_URL, {"Authorization": f"Bearer {API_KEY}"})
    return AgentMailInboxDriver(http)


@pytest.fixture
async def unchecked_driver(fake: FakeAgentMail) -> AsyncIterator[AgentMailInboxDriver]:
    async with plain_driver(httpx.ASGITransport(app=_app(fake))) as unchecked:
        yield unchecked


def want(
    name: str = "convos-agent-abc123", display_name: str = "Convos Agent", domain: str | None = None
) -> DesiredResource:
    return DesiredResource(
        kind=ResourceKind.AGENTMAIL_INBOX,
        instance_id=name.removeprefix("convos-agent-"),
        name=name,
        params={"domain": domain, "display_name": display_name},
    )


# --- the driver's happy paths -------------------------------------------------------------------


async def test_driver_satisfies_the_protocol(driver: AgentMailInboxDriver) -> None:
    assert isinstance(driver, ResourceDriver)
    assert driver.kind is ResourceKind.AGENTMAIL_INBOX


async def test_create_makes_an_inbox_named_by_client_id(
    driver: AgentMailInboxDriver, fake: FakeAgentMail, recorder: Recorder
) -> None:
    created = await driver.create(want())

    assert created.external_id == "convos-agent-abc123@agentmail.to"
    assert created.name == "convos-agent-abc123"
    assert created.attributes == {
        "email": "convos-agent-abc123@agentmail.to",
        "client_id": "convos-agent-abc123",
        "display_name": "Convos Agent",
    }
    [post] = recorder.sent("POST")
    assert json.loads(post.content) == {
        "username": "convos-agent-abc123",
        "display_name": "Convos Agent",
        "client_id": "convos-agent-abc123",
    }
    assert fake.snapshot() == {
        "inboxes": [
            {
                "id": "convos-agent-abc123@agentmail.to",
                "name": "convos-agent-abc123",
                "email": "convos-agent-abc123@agentmail.to",
                "display_name": "Convos Agent",
            }
        ]
    }


async def test_create_in_a_custom_domain(driver: AgentMailInboxDriver) -> None:
    created = await driver.create(want(domain="mail.convos.org"))

    assert created.external_id == "convos-agent-abc123@mail.convos.org"


async def test_a_repeated_create_returns_the_original_inbox(
    driver: AgentMailInboxDriver, fake: FakeAgentMail
) -> None:
    first = await driver.create(want(display_name="First"))

    again = await driver.create(want(display_name="Second"))

    assert again == first
    assert again.attributes["display_name"] == "First"
    assert len(fake.snapshot()["inboxes"]) == 1


async def test_username_taken_by_our_own_inbox_falls_back_to_it(
    driver: AgentMailInboxDriver, fake: FakeAgentMail
) -> None:
    ours = await driver.create(want())
    # As if AgentMail had forgotten the idempotency key: the create says "taken".
    fake.faults.fail_next(403, body=TAKEN, method="POST")

    adopted = await driver.create(want())

    assert adopted == ours
    assert len(fake.snapshot()["inboxes"]) == 1


async def test_username_taken_by_someone_else_is_a_conflict(
    driver: AgentMailInboxDriver, client: httpx.AsyncClient, fake: FakeAgentMail
) -> None:
    theirs = await client.post("/inboxes", json={"username": "convos-agent-abc123", "client_id": "theirs"})
    assert theirs.status_code == 200

    with pytest.raises(Conflict) as caught:
        await driver.create(want())

    assert "convos-agent-abc123" in str(caught.value)
    assert [inbox["name"] for inbox in fake.snapshot()["inboxes"]] == ["theirs"]


async def test_a_403_that_is_not_taken_stays_a_config_error(
    driver: AgentMailInboxDriver, fake: FakeAgentMail, recorder: Recorder
) -> None:
    fake.faults.fail_next(403, "Domain is not verified")  # code: missing_permission

    with pytest.raises(ConfigError):
        await driver.create(want(domain="unverified.example"))

    assert recorder.sent("GET") == []  # no fallback lookup for a plain permission error


async def test_lookup_follows_page_tokens_across_pages(
    driver: AgentMailInboxDriver, recorder: Recorder
) -> None:
    target = await driver.create(want("convos-agent-1"))  # the oldest: on the last page
    for i in range(2, 8):
        await driver.create(want(f"convos-agent-{i}"))

    found = await driver.lookup(want("convos-agent-1"))

    assert found == target
    listings = recorder.sent("GET")
    assert len(listings) == 4  # 7 inboxes, 2 a page
    assert "page_token" not in listings[0].url.params
    tokens = [request.url.params["page_token"] for request in listings[1:]]
    assert len(set(tokens)) == 3


async def test_lookup_returns_none_after_the_last_page(driver: AgentMailInboxDriver) -> None:
    for i in range(5):
        await driver.create(want(f"convos-agent-other{i}"))

    assert await driver.lookup(want("convos-agent-abc123")) is None


async def test_list_managed_returns_every_inbox_with_the_prefix(
    driver: AgentMailInboxDriver, client: httpx.AsyncClient
) -> None:
    ours = {(await driver.create(want(f"convos-agent-{i}"))).external_id for i in range(5)}
    await client.post("/inboxes", json={"username": "support"})  # no client_id at all
    await client.post("/inboxes", json={"username": "ops", "client_id": "ops-team"})

    managed = await driver.list_managed("convos-agent-")

    assert {inbox.external_id for inbox in managed} == ours


async def test_update_patches_only_a_changed_display_name(
    driver: AgentMailInboxDriver, fake: FakeAgentMail, recorder: Recorder
) -> None:
    created = await driver.create(want(display_name="Old"))

    unchanged = await driver.update(created.external_id, want(display_name="Old"))
    assert recorder.sent("PATCH") == []
    changed = await driver.update(created.external_id, want(display_name="New"))

    assert unchanged.attributes["display_name"] == "Old"
    assert changed.attributes["display_name"] == "New"
    [patch] = recorder.sent("PATCH")
    assert json.loads(patch.content) == {"display_name": "New"}
    assert fake.snapshot()["inboxes"][0]["display_name"] == "New"


async def test_the_inbox_id_travels_with_a_raw_at_sign(
    driver: AgentMailInboxDriver, client: httpx.AsyncClient, recorder: Recorder
) -> None:
    created = await driver.create(want())

    await driver.observe(created.external_id, want())
    encoded = await client.get("/inboxes/convos-agent-abc123%40agentmail.to")

    [observe, _] = recorder.sent("GET")
    assert observe.url.raw_path == b"/v0/inboxes/convos-agent-abc123@agentmail.to"
    assert encoded.status_code == 200  # the fake decodes %40 as well
    assert encoded.json()["inbox_id"] == created.external_id


async def test_delete_removes_the_inbox_and_a_second_delete_raises_not_found(
    driver: AgentMailInboxDriver, fake: FakeAgentMail, recorder: Recorder
) -> None:
    created = await driver.create(want())

    await driver.delete(created.external_id, want())

    assert fake.snapshot() == {"inboxes": []}
    assert [response.status_code for _, response in recorder.exchanges][-1] == 204
    with pytest.raises(NotFound):
        await driver.delete(created.external_id, want())
    with pytest.raises(NotFound):
        await driver.observe(created.external_id, want())


async def test_malformed_params_are_a_config_error_and_send_nothing(
    driver: AgentMailInboxDriver, recorder: Recorder
) -> None:
    with pytest.raises(ConfigError):
        await driver.create(want(display_name=None))  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        await driver.create(want(domain=""))
    assert recorder.exchanges == []


# --- failures and the error vocabulary ----------------------------------------------------------


async def test_429_is_throttled_with_the_providers_retry_after(
    driver: AgentMailInboxDriver, fake: FakeAgentMail
) -> None:
    fake.faults.fail_next(429, "Rate limit exceeded", retry_after=2.5)

    with pytest.raises(Throttled) as caught:
        await driver.create(want())

    assert caught.value.retry_after == 2.5
    assert fake.snapshot() == {"inboxes": []}


@pytest.mark.parametrize("status", [500, 503])
async def test_5xx_is_transient(driver: AgentMailInboxDriver, fake: FakeAgentMail, status: int) -> None:
    fake.faults.fail_next(status, "upstream trouble")

    with pytest.raises(Transient):
        await driver.lookup(want())


async def test_missing_credentials_are_a_config_error(fake: FakeAgentMail) -> None:
    async with plain_driver(httpx.ASGITransport(app=_app(fake)), key=None) as driver:
        with pytest.raises(ConfigError) as caught:
            await driver.create(want())

    assert "401" in str(caught.value)
    assert fake.snapshot() == {"inboxes": []}


async def test_an_html_answer_is_transient_naming_provider_and_operation(
    unchecked_driver: AgentMailInboxDriver, fake: FakeAgentMail
) -> None:
    fake.faults.fail_next(200, raw="<html><body>Welcome to nginx</body></html>", method="GET")

    with pytest.raises(Transient) as caught:
        await unchecked_driver.observe("convos-agent-abc123@agentmail.to", want())

    assert "agentmail" in str(caught.value)
    assert "get_inbox" in str(caught.value)


async def test_a_listing_that_repeats_its_page_token_is_transient() -> None:
    def server(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"count": 0, "inboxes": [], "next_page_token": "same"})

    async with plain_driver(httpx.MockTransport(server)) as driver:
        with pytest.raises(Transient, match="did not advance"):
            await driver.lookup(want())


async def test_an_inbox_missing_its_id_is_transient() -> None:
    def server(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"email": "convos-agent-abc123@agentmail.to"})

    async with plain_driver(httpx.MockTransport(server)) as driver:
        with pytest.raises(Transient, match="contract mismatch"):
            await driver.create(want())


async def test_no_secret_reaches_an_error_text(driver: AgentMailInboxDriver, fake: FakeAgentMail) -> None:
    fake.faults.fail_next(401, f"API key {API_KEY} is revoked")
    fake.faults.fail_next(500, f"failed for Authorization: Bearer {API_KEY}")

    errors = []
    for _ in range(2):
        with pytest.raises((ConfigError, Transient)) as caught:
            await driver.observe("convos-agent-abc123@agentmail.to", want())
        errors.append(caught.value)

    for error in errors:
        for text in (str(error), repr(error), error.message):
            assert API_KEY not in text


# --- the fake on its own ------------------------------------------------------------------------


async def test_fake_answers_bad_requests_in_the_agentmail_envelopes(fake: FakeAgentMail) -> None:
    auth = {"Authorization": f"Bearer {API_KEY}"}
    # Some of these requests break the contract on purpose, so only the answers are checked.
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=_app(fake)), base_url=BASE_URL) as plain:
        unauthenticated = await plain.get("/inboxes")
        bad_client_id = await plain.post("/inboxes", json={"client_id": "has@sign"}, headers=auth)
        unknown = await plain.get("/inboxes/nobody@agentmail.to", headers=auth)
        first = await plain.post("/inboxes", json={"username": "taken", "client_id": "a"}, headers=auth)
        taken = await plain.post("/inboxes", json={"username": "taken", "client_id": "b"}, headers=auth)
        empty_update = await plain.patch("/inboxes/taken@agentmail.to", json={}, headers=auth)

    assert unauthenticated.status_code == 401
    assert bad_client_id.status_code == 400
    assert bad_client_id.json()["errors"][0]["path"] == "client_id"
    assert unknown.status_code == 404
    assert first.status_code == 200
    assert taken.status_code == 403
    assert taken.json()["code"] == "resource_taken"
    assert taken.json()["name"] == "IsTakenError"
    assert empty_update.status_code == 400
    for answer in (unauthenticated, bad_client_id, unknown, taken, empty_update):
        assert isinstance(answer.json()["name"], str)
        CONTRACT.validate_response(SpecRequest.of(answer.request), SpecResponse.of(answer))
    assert [inbox["name"] for inbox in fake.snapshot()["inboxes"]] == ["a"]


async def test_fake_lists_newest_first_and_caps_the_limit(client: httpx.AsyncClient) -> None:
    for username in ("first", "second", "third"):
        await client.post("/inboxes", json={"username": username})

    page = (await client.get("/inboxes", params={"limit": 100})).json()
    rest = (await client.get("/inboxes", params={"page_token": page["next_page_token"]})).json()

    assert page["count"] == 2  # capped at the fake's page size
    assert [inbox["email"] for inbox in page["inboxes"] + rest["inboxes"]] == [
        "third@agentmail.to",
        "second@agentmail.to",
        "first@agentmail.to",
    ]
    assert "next_page_token" not in rest


async def test_fake_paging_survives_a_delete_between_pages(client: httpx.AsyncClient) -> None:
    for username in ("a", "b", "c", "d"):
        await client.post("/inboxes", json={"username": username})

    page = (await client.get("/inboxes")).json()
    assert (await client.delete("/inboxes/d@agentmail.to")).status_code == 204
    rest = (await client.get("/inboxes", params={"page_token": page["next_page_token"]})).json()

    assert [inbox["email"] for inbox in rest["inboxes"]] == ["b@agentmail.to", "a@agentmail.to"]


# --- the contract check itself ------------------------------------------------------------------


async def test_contract_check_catches_renamed_fields(
    driver: AgentMailInboxDriver, recorder: Recorder
) -> None:
    await driver.create(want())
    [(request, response)] = recorder.exchanges
    sent = json.loads(request.content)
    answered = response.json()

    # Unchanged, the recorded exchange passes.
    CONTRACT.validate_request(SpecRequest.of(request))
    CONTRACT.validate_response(SpecRequest.of(request), SpecResponse.of(response))

    sent["clientId"] = sent.pop("client_id")
    renamed_request = httpx.Request("POST", request.url, headers=request.headers, json=sent)
    with pytest.raises(OpenAPIError):
        CONTRACT.validate_request(SpecRequest.of(renamed_request))

    answered["id"] = answered.pop("inbox_id")
    renamed_response = httpx.Response(200, json=answered, request=request)
    with pytest.raises(OpenAPIError):
        CONTRACT.validate_response(SpecRequest.of(request), SpecResponse.of(renamed_response))
