"""Wiring: settings in, a running reconciler out.

:class:`Runtime` owns the long-lived things a process needs (a Postgres connection pool, one
shared ``httpx.AsyncClient``, the drivers, the metrics) and builds them from :class:`Settings`.
The CLI, the demo and the tests all start the reconciler through it, so they run the same code.

A tool whose credential is not configured gets an :class:`UnconfiguredDriver`: instances that do
not ask for the tool are unaffected, and one that does shows a clear configuration error naming
the missing variable, instead of the whole process refusing to start.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import httpx
from psycopg_pool import AsyncConnectionPool

from desired_state.services import intake
from desired_state.services.builtin import builtin_registry
from desired_state.services.definitions import ServiceRegistry
from desired_state.services.vocabulary import Clock, system_clock
from providers.agentmail import AgentMailInboxDriver
from providers.base import ConfigError, DesiredResource, Observed, ResourceDriver, ResourceKind
from providers.http import Admission, ProviderHTTP
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
from providers.telnyx import TelnyxNumberDriver
from reconciler.admission import Limit, PostgresAdmission, parse_limits
from reconciler.claims import LeaseSettings
from reconciler.engine import EngineSettings, Reconciler
from reconciler.jobs.builtin import builtin_handlers
from reconciler.jobs.handlers import HandlerRegistry
from reconciler.jobs.runner import JobRunner, JobSettings
from reconciler.loop import Worker
from reconciler.metrics import Metrics, default_metrics
from reconciler.observe import Observer
from reconciler.plan import ResourceDefaults
from reconciler.secrets_box import seal_stored_secrets, secret_box
from reconciler.settings import Settings
from reconciler.webhooks.delivery import WebhookSender
from reconciler.webhooks.settings import WebhookSettings


class UnconfiguredDriver:
    """Stands in for a provider whose credential is missing; every call is a ConfigError."""

    def __init__(self, kind: ResourceKind, variable: str) -> None:
        self.kind = kind
        self._message = f"{variable} is not set, so {kind.provider} resources cannot be managed"

    def _refuse(self, operation: str) -> ConfigError:
        return ConfigError(self.kind.provider, operation, self._message)

    async def lookup(self, want: DesiredResource) -> Observed | None:
        raise self._refuse("lookup")

    async def observe(self, external_id: str, want: DesiredResource) -> Observed:
        raise self._refuse("observe")

    async def create(self, want: DesiredResource) -> Observed:
        raise self._refuse("create")

    async def update(self, external_id: str, want: DesiredResource) -> Observed:
        raise self._refuse("update")

    async def delete(self, external_id: str, want: DesiredResource) -> None:
        raise self._refuse("delete")

    async def list_managed(self, prefix: str) -> None:
        """Nothing of ours can exist at a provider we have no credential for."""
        return None


def resource_defaults(settings: Settings) -> ResourceDefaults:
    return ResourceDefaults(
        name_prefix=settings.name_prefix,
        runtime_image=settings.runtime_image,
        openrouter_limit=settings.openrouter_limit,
        openrouter_limit_reset=settings.openrouter_limit_reset,
        agentmail_domain=settings.agentmail_domain,
        base_env=dict(settings.pass_through),
    )


def build_drivers(
    settings: Settings, client: httpx.AsyncClient, metrics: Metrics, admission: Admission | None = None
) -> tuple[dict[ResourceKind, ResourceDriver], RailwayClient | None]:
    """One driver per resource kind, talking to the URLs and credentials of ``settings``."""
    observer = metrics.observe_call
    drivers: dict[ResourceKind, ResourceDriver] = {}
    railway: RailwayClient | None = None

    if settings.railway_token and settings.railway_project_id:
        http = ProviderHTTP(
            "railway",
            client,
            settings.urls["RAILWAY_API_URL"],
            railway_auth_headers(settings.railway_token.get_secret_value(), settings.railway_token_kind),
            observer=observer,
            admission=admission,
        )
        railway = RailwayClient(
            http,
            RailwayConfig(
                project_id=settings.railway_project_id,
                environment_id=settings.railway_environment_id,
                environment_name=settings.railway_environment_name,
            ),
        )
        drivers[ResourceKind.RAILWAY_SERVICE] = RailwayServiceDriver(railway)
        drivers[ResourceKind.RAILWAY_VOLUME] = RailwayVolumeDriver(railway)
        drivers[ResourceKind.RAILWAY_DOMAIN] = RailwayDomainDriver(railway)
        drivers[ResourceKind.RAILWAY_DEPLOYMENT] = RailwayDeploymentDriver(railway)
    else:
        for kind in (
            ResourceKind.RAILWAY_SERVICE,
            ResourceKind.RAILWAY_VOLUME,
            ResourceKind.RAILWAY_DOMAIN,
            ResourceKind.RAILWAY_DEPLOYMENT,
        ):
            drivers[kind] = UnconfiguredDriver(kind, "RAILWAY_API_TOKEN or RAILWAY_PROJECT_ID")

    def bearer(provider: str, url_variable: str, key: Any) -> ProviderHTTP:
        return ProviderHTTP(
            provider,
            client,
            settings.urls[url_variable],
            {"Authorization": f"Bearer {key.get_secret_value()}"},
            observer=observer,
            admission=admission,
        )

    if settings.openrouter_key:
        drivers[ResourceKind.OPENROUTER_KEY] = OpenRouterKeyDriver(
            bearer("openrouter", "OPENROUTER_API_URL", settings.openrouter_key)
        )
    else:
        drivers[ResourceKind.OPENROUTER_KEY] = UnconfiguredDriver(
            ResourceKind.OPENROUTER_KEY, "OPENROUTER_MANAGEMENT_KEY"
        )
    if settings.agentmail_key:
        drivers[ResourceKind.AGENTMAIL_INBOX] = AgentMailInboxDriver(
            bearer("agentmail", "AGENTMAIL_API_URL", settings.agentmail_key)
        )
    else:
        drivers[ResourceKind.AGENTMAIL_INBOX] = UnconfiguredDriver(ResourceKind.AGENTMAIL_INBOX, "AGENTMAIL_API_KEY")
    if settings.telnyx_key:
        drivers[ResourceKind.TELNYX_NUMBER] = TelnyxNumberDriver(
            bearer("telnyx", "TELNYX_API_URL", settings.telnyx_key),
            messaging_profile_id=settings.telnyx_messaging_profile_id,
        )
    else:
        drivers[ResourceKind.TELNYX_NUMBER] = UnconfiguredDriver(ResourceKind.TELNYX_NUMBER, "TELNYX_API_KEY")
    return drivers, railway


def worker_identity() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


@dataclass
class RuntimeOptions:
    engine: EngineSettings
    tick_seconds: float = 1.0
    pool_size: int = 10
    http_timeout: float = 15.0
    rate_limits: Mapping[str, Limit] | None = None
    """Per-provider call rates shared by all replicas; None for the defaults, {} for none at all."""
    observe_seconds: float = 30.0
    """How often each provider is listed to detect drift and refresh deploy statuses."""
    gc_every: int = 10
    """Every n-th observation cycle also collects garbage."""
    gc_grace: float = 600.0
    """An orphan is deleted only after it has been seen orphaned this long."""
    list_lag_grace: float = 60.0
    """A resource recorded less than this long ago is not 'gone' just because a list lacks it."""
    jobs: JobSettings = field(default_factory=JobSettings)
    """The job loop's size and timing (its leases are ``engine``'s)."""
    services: ServiceRegistry | None = None
    """The paid services offered; None for the built-in ones (priced by the settings)."""
    handlers: Callable[[httpx.AsyncClient], HandlerRegistry] | None = None
    """Builds their handlers from the shared HTTP client; None for the built-in ones."""
    clock: Clock = system_clock
    """Where the job loop reads "now" (deadlines, leases); tests pass their own."""
    webhooks: WebhookSettings | None = None
    """The webhook sender's settings; None: no secret, deliveries are recorded disabled."""


class Runtime:
    """Everything a reconciler process holds; ``async with Runtime(...) as rt:`` opens and closes it."""

    def __init__(
        self,
        settings: Settings,
        database_url: str,
        options: RuntimeOptions | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.settings = settings
        self.database_url = database_url
        self.secrets = secret_box(settings)  # first: a missing or malformed key opens nothing
        self.options = options or RuntimeOptions(engine=EngineSettings())
        self.metrics = metrics or default_metrics()
        self.pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
            database_url, min_size=1, max_size=self.options.pool_size, kwargs={"autocommit": True}, open=False
        )
        self.http = httpx.AsyncClient(
            timeout=self.options.http_timeout,
            limits=httpx.Limits(max_connections=100, max_keepalive_connections=20),
        )
        limits = self.options.rate_limits
        if limits is None:
            limits = parse_limits(settings.rate_limits)
        self.admission = PostgresAdmission(self.pool, self.metrics, limits=limits)
        self.drivers, self.railway = build_drivers(settings, self.http, self.metrics, self.admission)
        self.reconciler = Reconciler(
            self.pool,
            self.drivers,
            resource_defaults(settings),
            self.metrics,
            owner=worker_identity(),
            secrets=self.secrets,
            settings=self.options.engine,
        )
        self.observer = Observer(
            self.pool,
            self.drivers,
            self.metrics,
            name_prefix=settings.name_prefix,
            list_lag_grace=self.options.list_lag_grace,
            gc_grace=self.options.gc_grace,
        )
        engine = self.options.engine
        self.services = self.options.services or builtin_registry(settings.builtin_services)
        if self.options.handlers is not None:
            self.handlers = self.options.handlers(self.http)
        else:
            self.handlers = builtin_handlers(self.http, settings.util_echo_base_url)
        # One lease for every kind of claim: instances (the engine's), jobs and webhook deliveries.
        leases = LeaseSettings(engine.lease_seconds, engine.lease_renew_seconds)
        self.jobs = JobRunner(
            self.pool,
            self.services,
            self.handlers,
            self.metrics,
            owner=self.reconciler.owner,
            leases=leases,
            settings=self.options.jobs,
            clock=self.options.clock,
            database_url=database_url,
        )
        self.worker = Worker(
            self.reconciler,
            self.pool,
            self.metrics,
            database_url=database_url,
            tick_seconds=self.options.tick_seconds,
            observer=self.observer,
            observe_seconds=self.options.observe_seconds,
            gc_every=self.options.gc_every,
        )
        self.webhooks = WebhookSender(
            self.pool, self.options.webhooks or WebhookSettings(), self.metrics, owner=worker_identity(), lease=leases
        )

    async def __aenter__(self) -> Runtime:
        await self.pool.open(wait=True, timeout=30)
        try:
            await seal_stored_secrets(self.pool, self.secrets)
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        return self

    async def publish_services(self) -> None:
        """Write the registry's terms (price, timeout, limits) where admission reads them."""
        async with self.pool.connection() as conn:
            await intake.sync_services(conn, self.services)

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.http.aclose()
        await self.webhooks.aclose()
        await self.pool.close()
