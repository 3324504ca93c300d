"""All the simulated providers behind one ASGI app, plus admin routes.

The simulators are product code: ``reconciler demo``, the benchmarks, our tests and anyone
testing their own pool manager run against them. Each one lives in its own module, keeps its
state in memory and serves the real paths and payload shapes of the contracts in
``providers/simulated/specs``. This module only mounts them under fixed prefixes::

    /railway/graphql/v2     Railway GraphQL (POST {query, variables})
    /openrouter/api/v1      OpenRouter key management
    /agentmail/v0           AgentMail inboxes
    /telnyx/v2              Telnyx numbers and messaging profiles
    /upstream               the upstream of the util.echo proxy service (POST /upstream/echo)
    /_admin/resources       GET: every resource each provider holds, as JSON (never a secret)
    /_admin/reset           POST: forget every resource, queued failure and logged request
    /_admin/faults          GET: the fault knobs in force; PUT: replace them (JSON, see fault_plan.py)
    /_admin/faults/reset    POST: no fault knobs any more
    /_admin/requests        GET: requests served, per fake and operation (see fault_layer.py)
    /_admin/requests/reset  POST: forget the logged requests

so a client configured with ``<base>/railway/graphql/v2`` as its Railway URL cannot tell it from
the real API (beyond the data being made up). :meth:`Simulator.client_env` is the settings a
client needs to use them (what ``reconciler simulate`` prints). docs/simulator.md is the
user's guide.

The admin routes need no token, so they never answer a secret: ``/_admin/resources`` shows
Railway variables by name with their values hidden (they hold the instances' OpenRouter keys),
and no fake's snapshot holds a key's plaintext. In Python, ``Simulator.snapshot()`` still shows
the values, for tests that check what was pushed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.types import ASGIApp

from providers.simulated.agentmail import FakeAgentMail
from providers.simulated.catalog import known_operations
from providers.simulated.fault_layer import Faults
from providers.simulated.fault_plan import FaultPlan
from providers.simulated.openrouter import FakeOpenRouter
from providers.simulated.railway import FakeRailway
from providers.simulated.telnyx import FakeTelnyx
from providers.simulated.upstream import FakeUpstream

PREFIXES: dict[str, str] = {
    "railway": "/railway/graphql/v2",
    "openrouter": "/openrouter/api/v1",
    "agentmail": "/agentmail/v0",
    "telnyx": "/telnyx/v2",
}
"""Where each provider the reconciler provisions is mounted."""
UPSTREAM_PREFIX = "/upstream"
"""Where the ``util.echo`` upstream is mounted (``UTIL_ECHO_BASE_URL``)."""
_MAX_PROJECT_ID = 128


class Fake(Protocol):
    """What every simulated service offers to this app."""

    faults: Faults
    """Its fault layer (knobs, queued failures, request log)."""

    def asgi(self) -> ASGIApp:
        """The app serving the service's API, mounted under its prefix."""
        ...

    def reset(self) -> None:
        """Forget every resource, queued failure and logged request."""
        ...


class FakeProvider(Fake, Protocol):
    """A simulated provider: a fake that holds resources."""

    def snapshot(self, *, reveal_secrets: bool = True) -> dict[str, list[dict[str, Any]]]:
        """Every resource held, by resource type (``{"keys": [...]}``); a secret only if
        ``reveal_secrets``."""
        ...


@dataclass
class SimulatorSettings:
    """Knobs that shape the simulated world."""

    deploy_seconds: float = 3.0
    """How long a Railway deployment takes to go QUEUED -> BUILDING -> DEPLOYING -> SUCCESS."""
    seed: int | None = None
    """Seed for the simulators' randomness (ids, number inventory, fault decisions); None for a
    random one."""
    faults: FaultPlan = field(default_factory=FaultPlan)
    """Fault knobs in force from the start (``reconciler simulate`` flags); replaceable at run
    time through ``PUT /_admin/faults``."""
    railway_project_id: str | None = None
    """The simulated Railway project's id (``--project-id`` or ``RAILWAY_PROJECT_ID``), so a
    client already configured with one can use it; None for one drawn from the seed."""

    def __post_init__(self) -> None:
        project_id = self.railway_project_id
        if project_id is not None and (
            not 0 < len(project_id) <= _MAX_PROJECT_ID
            or not project_id.isprintable()
            or project_id != "".join(project_id.split())
        ):
            raise ValueError(
                f"railway_project_id (RAILWAY_PROJECT_ID): {project_id[:40]!r} is not a project id "
                f"(1 to {_MAX_PROJECT_ID} printable characters, no spaces)"
            )


class Simulator:
    """Every fake, built together so tests and the demo can reach their state directly."""

    def __init__(self, settings: SimulatorSettings | None = None) -> None:
        self.settings = settings or SimulatorSettings()
        self.railway = FakeRailway(
            deploy_seconds=self.settings.deploy_seconds,
            seed=self.settings.seed,
            project_id=self.settings.railway_project_id,
        )
        self.openrouter = FakeOpenRouter(seed=self.settings.seed)
        self.agentmail = FakeAgentMail(seed=self.settings.seed)
        self.telnyx = FakeTelnyx(seed=self.settings.seed)
        self.upstream = FakeUpstream(seed=self.settings.seed)
        self._faults = FaultPlan()
        self.set_faults(self.settings.faults)

    @property
    def providers(self) -> dict[str, FakeProvider]:
        """The four providers the reconciler provisions (the fakes that hold resources)."""
        return {
            "railway": self.railway,
            "openrouter": self.openrouter,
            "agentmail": self.agentmail,
            "telnyx": self.telnyx,
        }

    @property
    def fakes(self) -> dict[str, Fake]:
        """Every fake, by the name fault rules give it: the providers and the upstream."""
        return {**self.providers, "upstream": self.upstream}

    def snapshot(self, *, reveal_secrets: bool = True) -> dict[str, dict[str, list[dict[str, Any]]]]:
        """Every resource each provider holds; ``reveal_secrets=False`` is what ``/_admin`` answers."""
        return {name: fake.snapshot(reveal_secrets=reveal_secrets) for name, fake in self.providers.items()}

    def reset(self) -> None:
        """Forget every resource, queued failure and logged request (the fault knobs stay)."""
        for fake in self.fakes.values():
            fake.reset()

    def client_env(self, root: str) -> dict[str, str]:
        """The settings a client of a simulator served at ``root`` needs, as environment variables
        (what ``reconciler simulate`` prints): the four provider URLs, the util.echo upstream,
        and the Railway project and environment. Credentials are not among them: any will do."""
        urls = base_urls(root)
        return {
            **{f"{name.upper()}_API_URL": url for name, url in urls.items()},
            "UTIL_ECHO_BASE_URL": upstream_url(root),
            "RAILWAY_PROJECT_ID": self.railway.project_id,
            "RAILWAY_ENVIRONMENT_NAME": "production",
        }

    @property
    def faults(self) -> FaultPlan:
        """The fault knobs in force."""
        return self._faults

    def set_faults(self, plan: FaultPlan) -> None:
        """Put ``plan`` in force for every fake; ``ValueError`` if it names an unknown operation."""
        plan.check_operations(known_operations())
        self._faults = plan
        for fake in self.fakes.values():
            fake.faults.plan = plan

    def requests(self) -> dict[str, Any]:
        """Requests served, per fake and operation (see :meth:`Faults.requests`)."""
        return {name: fake.faults.requests() for name, fake in self.fakes.items()}

    def app(self) -> FastAPI:
        app = FastAPI(title="Simulated providers", docs_url=None, redoc_url=None, openapi_url=None)

        @app.get("/_admin/resources")
        def resources() -> dict[str, dict[str, list[dict[str, Any]]]]:
            return self.snapshot(reveal_secrets=False)

        @app.post("/_admin/reset")
        def reset() -> dict[str, bool]:
            self.reset()
            return {"ok": True}

        @app.get("/_admin/faults")
        async def faults() -> dict[str, Any]:
            return self.faults.to_json()

        @app.put("/_admin/faults")
        async def replace_faults(request: Request) -> JSONResponse:
            try:
                data = await request.json()
            except ValueError:
                return JSONResponse({"error": "the request body is not valid JSON"}, status_code=400)
            try:
                plan = FaultPlan.from_json(data)
                self.set_faults(plan)
            except ValueError as exc:
                return JSONResponse({"error": str(exc)}, status_code=400)
            return JSONResponse(plan.to_json())

        @app.post("/_admin/faults/reset")
        async def reset_faults() -> dict[str, Any]:
            self.set_faults(FaultPlan())
            return self.faults.to_json()

        @app.get("/_admin/requests")
        async def requests() -> dict[str, Any]:
            return self.requests()

        @app.post("/_admin/requests/reset")
        async def reset_requests() -> dict[str, bool]:
            for fake in self.fakes.values():
                fake.faults.clear_requests()
            return {"ok": True}

        for name, fake in self.providers.items():
            served = fake.asgi()
            # A mount matches only paths below its prefix; Railway's endpoint IS the prefix.
            app.router.routes.append(Route(PREFIXES[name], served, methods=["POST", "GET"]))
            app.mount(PREFIXES[name], served)
        app.mount(UPSTREAM_PREFIX, self.upstream.asgi())
        return app


def base_urls(root: str) -> dict[str, str]:
    """The four provider base URLs of a simulator served at ``root`` (``http://127.0.0.1:8080``)."""
    root = root.rstrip("/")
    return {name: root + prefix for name, prefix in PREFIXES.items()}


def upstream_url(root: str) -> str:
    """``UTIL_ECHO_BASE_URL`` for a simulator served at ``root``: ``POST <it>/echo`` echoes."""
    return root.rstrip("/") + UPSTREAM_PREFIX
