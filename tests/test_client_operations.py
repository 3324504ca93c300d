"""Each client module's ``OPERATIONS`` lists exactly the operation names its calls carry.

The lead pre-initialises metric labels from these tuples, so a call under a name that is not
listed would be a series nobody set up, and a listed name no call uses a series that stays zero
forever. Every driver method (and the Railway client's batch reads) runs against its fake while a
``ProviderHTTP`` observer collects the operation names of the calls actually made.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.routing import Mount
from starlette.types import ASGIApp

from providers import agentmail, openrouter, railway, telnyx
from providers.agentmail import AgentMailInboxDriver
from providers.base import DesiredResource, ProviderError, ResourceKind
from providers.http import ProviderHTTP
from providers.openrouter import OpenRouterKeyDriver
from providers.railway import (
    RailwayClient,
    RailwayConfig,
    RailwayDeploymentDriver,
    RailwayDomainDriver,
    RailwayServiceDriver,
    RailwayVolumeDriver,
    railway_auth_headers,
)
from providers.simulated.agentmail import FakeAgentMail
from providers.simulated.openrouter import FakeOpenRouter
from providers.simulated.railway import FakeRailway
from providers.simulated.telnyx import FakeTelnyx
from providers.telnyx import TelnyxNumberDriver, telnyx_http

NAME = "convos-agent-abc123"


class Seen:
    """A ``CallObserver`` keeping the operation names it is told about."""

    def __init__(self) -> None:
        self.operations: set[str] = set()

    def __call__(self, provider: str, operation: str, error: ProviderError | None, seconds: float) -> None:
        self.operations.add(operation)


@asynccontextmanager
async def http_for(
    provider: str, app: ASGIApp, base_url: str, seen: Seen, make: Callable[..., ProviderHTTP] | None = None
) -> AsyncIterator[ProviderHTTP]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app)) as client:
        if make is not None:
            yield make(client, base_url, "test-key", observer=seen)
        else:
            auth = {"Authorization": "Bearer test-key"}
            yield ProviderHTTP(provider, client, base_url, auth, observer=seen)


def want(
    kind: ResourceKind,
    *,
    params: Mapping[str, Any] | None = None,
    depends: Mapping[str, str] | None = None,
    secrets: Mapping[str, str] | None = None,
) -> DesiredResource:
    return DesiredResource(
        kind=kind,
        instance_id=NAME.rsplit("-", 1)[-1],
        name=NAME,
        params=params or {},
        depends=depends or {},
        secrets=secrets or {},
    )


async def test_railway_calls_use_exactly_its_operations() -> None:
    fake, seen = FakeRailway(seed=1, deploy_seconds=0), Seen()
    base = "http://railway.test/graphql/v2"
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=fake.asgi())) as client:
        http = ProviderHTTP("railway", client, base, railway_auth_headers("t"), observer=seen)
        rw = RailwayClient(http, RailwayConfig(project_id=fake.project_id, environment_name="production"))
        services, volumes = RailwayServiceDriver(rw), RailwayVolumeDriver(rw)
        domains, deployments = RailwayDomainDriver(rw), RailwayDeploymentDriver(rw)

        service_want = want(ResourceKind.RAILWAY_SERVICE)
        assert await services.lookup(service_want) is None
        service = await services.create(service_want)
        await services.observe(service.external_id, service_want)
        await services.update(service.external_id, service_want)
        depends = {"railway_service": service.external_id}

        volume_want = want(ResourceKind.RAILWAY_VOLUME, depends=depends)
        volume = await volumes.create(volume_want)
        await volumes.lookup(volume_want)
        await volumes.update(volume.external_id, volume_want)

        domain_want = want(ResourceKind.RAILWAY_DOMAIN, depends=depends)
        domain = await domains.create(domain_want)
        await domains.lookup(domain_want)
        await domains.observe(domain.external_id, domain_want)

        image = {"image": "ghcr.io/x/y:1"}
        deploy_want = want(ResourceKind.RAILWAY_DEPLOYMENT, params=image, depends=depends, secrets={"A": "b"})
        await deployments.create(deploy_want)
        await deployments.lookup(deploy_want)
        await rw.list_services()
        configs = await rw.service_configs()
        assert configs[service.external_id]["variables"] == {"A": "b"}
        assert configs[service.external_id]["image"] == "ghcr.io/x/y:1"
        await rw.redeploy(service.external_id)

        await domains.delete(domain.external_id, domain_want)
        await volumes.delete(volume.external_id, volume_want)
        await services.delete(service.external_id, service_want)
    assert seen.operations == set(railway.OPERATIONS)


async def test_openrouter_calls_use_exactly_its_operations() -> None:
    seen = Seen()
    app = Starlette(routes=[Mount("/api/v1", app=FakeOpenRouter(seed=1).asgi())])
    async with http_for("openrouter", app, "http://openrouter.test/api/v1", seen) as http:
        driver, key = OpenRouterKeyDriver(http), want(ResourceKind.OPENROUTER_KEY, params={"limit": 5.0})
        assert await driver.lookup(key) is None
        made = await driver.create(key)
        await driver.observe(made.external_id, key)
        await driver.update(made.external_id, key)
        await driver.list_managed("convos-agent-")
        await driver.delete(made.external_id, key)
    assert seen.operations == set(openrouter.OPERATIONS)


async def test_agentmail_calls_use_exactly_its_operations() -> None:
    seen = Seen()
    app = Starlette(routes=[Mount("/v0", app=FakeAgentMail(seed=1).asgi())])
    async with http_for("agentmail", app, "http://agentmail.test/v0", seen) as http:
        driver = AgentMailInboxDriver(http)
        inbox = want(ResourceKind.AGENTMAIL_INBOX, params={"domain": None, "display_name": "One"})
        renamed = want(ResourceKind.AGENTMAIL_INBOX, params={"domain": None, "display_name": "Two"})
        assert await driver.lookup(inbox) is None
        made = await driver.create(inbox)
        await driver.update(made.external_id, renamed)  # observe, then the changed display name
        await driver.list_managed("convos-agent-")
        await driver.delete(made.external_id, inbox)
    assert seen.operations == set(agentmail.OPERATIONS)


async def test_telnyx_calls_use_exactly_its_operations() -> None:
    seen = Seen()
    app = Starlette(routes=[Mount("/v2", app=FakeTelnyx(seed=1, inventory=40).asgi())])
    base = "http://telnyx.test/v2"
    async with http_for("telnyx", app, base, seen, make=telnyx_http) as http:
        driver = TelnyxNumberDriver(http, rng=random.Random(1))
        number = want(ResourceKind.TELNYX_NUMBER)
        assert await driver.lookup(number) is None  # by name, then through the orders
        made = await driver.create(number)
        await driver.observe(made.external_id, number)
        await driver.update(made.external_id, number)
        await driver.list_managed("convos-agent-")
        # A number whose recorded name was lost is found again through its order, by phone number.
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app)) as raw:
            cleared = await raw.patch(
                f"{base}/phone_numbers/{made.external_id}",
                json={"customer_reference": ""},
                headers={"Authorization": "Bearer test-key"},
            )
            assert cleared.status_code == 200
        assert (await driver.lookup(number)) is not None
        await driver.delete(made.external_id, number)
    assert seen.operations == set(telnyx.OPERATIONS)
