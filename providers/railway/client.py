"""The Railway GraphQL client: configuration, authentication, errors, paging and batch reads.

Errors. Transport failures and HTTP statuses are mapped by :class:`~providers.http.ProviderHTTP`.
Railway also answers HTTP 200 with ``errors[]`` for failures, rate limits included ("You are
creating volumes too quickly", "Only one project can be created per user"); those are mapped by
:func:`graphql_error`, the one place that reads Railway's error texts.

Scope. All reads go through the non-deprecated, environment-scoped fields
(``environment.volumeInstances``, ``environment.serviceInstances``, ``serviceInstance``) rather
than ``Service.deployments`` or ``Volume.volumeInstances``: a project token can reach one
environment only, and those fields are what Railway keeps. Listings are Relay connections and are
always paged to the end, because adoption after a crash must see every resource.
"""

from __future__ import annotations

import re
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

import httpx

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
from providers.http import ProviderHTTP, parse_retry_after, redact, require
from providers.railway.documents import (
    ENVIRONMENT_CONFIG,
    ENVIRONMENT_SERVICE_INSTANCES,
    PROJECT_ENVIRONMENTS,
    PROJECT_SERVICES,
    SERVICE_INSTANCE,
    SERVICE_INSTANCE_REDEPLOY,
)

PROVIDER = "railway"
PAGE_SIZE = 100
"""``first`` asked of every connection; Railway serves at most 100 per page."""
THROTTLE_SECONDS = 30.0
"""Wait after a "too quickly" error without ``Retry-After``: Railway's per-token creation cooldown."""
NO_DEPLOYMENT = "NO_DEPLOYMENT"
"""``Observed.status`` of a service instance that has never been deployed."""
DEFAULT_MOUNT_PATH = "/data"
SERVICE_INSTANCES_LISTING = "environment.serviceInstances"
"""The operation name of the paged service-instance listing."""


@dataclass(frozen=True)
class RailwayConfig:
    """Where instances live: one project and one of its environments (by id, or by name)."""

    project_id: str
    environment_id: str | None = None
    environment_name: str | None = None
    start_command: str = "node scripts/pool-server.js"

    def __post_init__(self) -> None:
        if not self.project_id:
            raise ConfigError(PROVIDER, "config", "a Railway project id is required")
        if not (self.environment_id or self.environment_name):
            raise ConfigError(PROVIDER, "config", "a Railway environment id or environment name is required")


BEARER_KIND = "bearer"
PROJECT_KIND = "project"


def railway_auth_headers(token: str, token_kind: str = BEARER_KIND) -> dict[str, str]:
    """The auth header for a token: account and workspace tokens are bearer tokens, project
    tokens travel in ``Project-Access-Token`` (and reach one environment of one project)."""
    if token_kind == PROJECT_KIND:
        return {"Project-Access-Token": token}
    if token_kind == BEARER_KIND:
        return {"Authorization": f"Bearer {token}"}
    raise ConfigError(
        PROVIDER,
        "config",
        f"unknown token kind {token_kind!r} (expected {BEARER_KIND!r} or {PROJECT_KIND!r})",
    )


_THROTTLED = re.compile(r"too quickly|one project|rate limit", re.IGNORECASE)
_UNAUTHORIZED = re.compile(r"not authori[sz]ed|unauthori[sz]ed|unauthenticated|forbidden", re.IGNORECASE)
_NOT_FOUND = re.compile(r"not found|does not exist|no such", re.IGNORECASE)
_CONFLICT = re.compile(r"already (exists|has|in use|taken)", re.IGNORECASE)
_CONFIG_CODES = frozenset(
    {"UNAUTHENTICATED", "FORBIDDEN", "GRAPHQL_PARSE_FAILED", "GRAPHQL_VALIDATION_FAILED", "BAD_USER_INPUT"}
)


def graphql_error(
    operation: str, errors: Any, retry_after: float | None = None, scrub: Callable[[str], str] = redact
) -> ProviderError:
    """The error to raise for a GraphQL ``errors[]`` list that came with an HTTP 200.

    Railway has no documented error codes, so the texts decide: "too quickly" and "one project"
    are its creation cooldowns (``Throttled``, ``Retry-After`` if sent, else 30 s), "not found"
    style texts are ``NotFound``, "Not Authorized" and invalid documents are ``ConfigError``,
    "already ..." is a ``Conflict``, and anything else (Railway's generic "Problem processing
    request") is ``Transient``. The message goes through ``scrub`` (credential shapes masked).
    """
    items = errors if isinstance(errors, list) else [errors]
    texts = [str(item.get("message", "")) if isinstance(item, dict) else str(item) for item in items]
    codes = {
        str(item["extensions"].get("code"))
        for item in items
        if isinstance(item, dict) and isinstance(item.get("extensions"), dict)
    }
    joined = "; ".join(text for text in texts[:3] if text) or "unspecified GraphQL error"
    message = scrub(joined)
    if _THROTTLED.search(joined):
        wait = THROTTLE_SECONDS if retry_after is None else retry_after
        return Throttled(PROVIDER, operation, message, wait)
    if codes & _CONFIG_CODES or _UNAUTHORIZED.search(joined):
        return ConfigError(PROVIDER, operation, message)
    if _NOT_FOUND.search(joined):
        return NotFound(PROVIDER, operation, message)
    if _CONFLICT.search(joined):
        return Conflict(PROVIDER, operation, message)
    return Transient(PROVIDER, operation, message)


def _scrubbed(exc: ProviderError, secrets: Sequence[str]) -> ProviderError:
    """``exc`` with ``secrets`` masked in its message (same class, same retry_after)."""
    message = redact(exc.message, secrets)
    if message == exc.message:
        return exc
    if isinstance(exc, Throttled):
        return Throttled(exc.provider, exc.operation, message, exc.retry_after)
    return type(exc)(exc.provider, exc.operation, message)


class RailwayClient:
    """Railway GraphQL calls for one project and environment, over one :class:`ProviderHTTP`."""

    def __init__(self, http: ProviderHTTP, config: RailwayConfig) -> None:
        self.http = http
        self.config = config
        self._environment_id = config.environment_id

    async def execute(
        self,
        operation: str,
        document: str,
        variables: Mapping[str, Any],
        *,
        secrets: Sequence[str] = (),
    ) -> dict[str, Any]:
        """Run one document; return its ``data``. ``secrets`` are masked from any error raised."""

        def scrub(text: str) -> str:
            return redact(self.http.redact(text), secrets)

        def check(response: httpx.Response, body: Any) -> None:
            if isinstance(body, dict) and body.get("errors"):
                retry_after = parse_retry_after(response.headers.get("Retry-After"))
                raise graphql_error(operation, body["errors"], retry_after, scrub)

        try:
            body = await self.http.request(
                operation, "POST", "", json={"query": document, "variables": dict(variables)}, check=check
            )
        except ProviderError as exc:
            raise _scrubbed(exc, secrets) from None
        data = require(PROVIDER, operation, body, "data")
        if not isinstance(data, dict):
            raise Transient(PROVIDER, operation, "answer data is not an object (contract mismatch)")
        return data

    async def paginate(
        self, operation: str, document: str, variables: Mapping[str, Any], *path: str
    ) -> AsyncGenerator[dict[str, Any], None]:
        """Every node of the Relay connection at ``path`` in ``data``, page after page.

        A caller that stops early should close it (``contextlib.aclosing``)."""
        after: str | None = None
        while True:
            data = await self.execute(operation, document, {**variables, "first": PAGE_SIZE, "after": after})
            connection = require(PROVIDER, operation, data, *path)
            for edge in require(PROVIDER, operation, connection, "edges"):
                yield require(PROVIDER, operation, edge, "node")
            if not require(PROVIDER, operation, connection, "pageInfo", "hasNextPage"):
                return
            cursor = require(PROVIDER, operation, connection, "pageInfo", "endCursor")
            if cursor == after:
                raise Transient(PROVIDER, operation, "pagination did not advance (contract mismatch)")
            after = cursor

    async def environment_id(self) -> str:
        """The configured environment id, else the id of the environment named in the config
        (case-insensitive), resolved once and cached."""
        if self._environment_id is not None:
            return self._environment_id
        wanted = (self.config.environment_name or "").strip()
        names: list[str] = []
        async for node in self.paginate(
            "project.environments",
            PROJECT_ENVIRONMENTS,
            {"projectId": self.config.project_id},
            "project",
            "environments",
        ):
            name = str(require(PROVIDER, "project.environments", node, "name"))
            if name.casefold() == wanted.casefold():
                self._environment_id = str(require(PROVIDER, "project.environments", node, "id"))
                return self._environment_id
            names.append(name)
        available = ", ".join(sorted(names)) or "none"
        raise ConfigError(
            PROVIDER,
            "project.environments",
            f"environment {wanted!r} not found in the project (available: {available})",
        )

    def services(self) -> AsyncGenerator[dict[str, Any], None]:
        """Every service of the project (``id``, ``name``, ``projectId``, ``createdAt``)."""
        return self.paginate(
            "project.services", PROJECT_SERVICES, {"projectId": self.config.project_id}, "project", "services"
        )

    async def service_instances(self) -> AsyncGenerator[dict[str, Any], None]:
        """Every service instance of our environment (``serviceId``, ``serviceName``, ``source``,
        ``latestDeployment``, ``domains``), page after page."""
        listing = self.paginate(
            SERVICE_INSTANCES_LISTING,
            ENVIRONMENT_SERVICE_INSTANCES,
            {"environmentId": await self.environment_id()},
            "environment",
            "serviceInstances",
        )
        async with aclosing(listing) as nodes:
            async for node in nodes:
                yield node

    async def service_instance(self, service_id: str) -> dict[str, Any]:
        """The service's instance in our environment; ``NotFound`` if the service is gone."""
        data = await self.execute(
            "serviceInstance",
            SERVICE_INSTANCE,
            {"serviceId": service_id, "environmentId": await self.environment_id()},
        )
        instance: dict[str, Any] = require(PROVIDER, "serviceInstance", data, "serviceInstance")
        return instance

    async def service_configs(self) -> dict[str, dict[str, Any]]:
        """Every service's config in our environment, by service id, from one call.

        Each value: ``variables`` (name to value, decrypted), ``image`` and ``start_command``
        (None when unset). Values are secrets: callers compare them, never log them.
        """
        operation = "environment.config"
        data = await self.execute(operation, ENVIRONMENT_CONFIG, {"environmentId": await self.environment_id()})
        config = require(PROVIDER, operation, data, "environment", "config")
        services = config.get("services") if isinstance(config, Mapping) else None
        if services is None:
            return {}
        if not isinstance(services, Mapping):
            raise Transient(PROVIDER, operation, "config.services is not an object (contract mismatch)")
        configs: dict[str, dict[str, Any]] = {}
        for service_id, entry in services.items():
            entry = entry if isinstance(entry, Mapping) else {}
            raw = entry.get("variables") or {}
            variables = {
                str(name): str(value["value"])
                for name, value in (raw.items() if isinstance(raw, Mapping) else ())
                if isinstance(value, Mapping) and isinstance(value.get("value"), str)
            }
            source = entry.get("source") or {}
            deploy = entry.get("deploy") or {}
            configs[str(service_id)] = {
                "variables": variables,
                "image": source.get("image") if isinstance(source, Mapping) else None,
                "start_command": deploy.get("startCommand") if isinstance(deploy, Mapping) else None,
            }
        return configs

    async def list_services(self) -> list[dict[str, Any]]:
        """Every service of the project, with its state in our environment, in two paged listings.

        Each item: ``id``, ``name``, ``created_at``, ``in_environment`` (has an instance in our
        environment), ``deploy_status`` (a ``DeploymentStatus``, ``NO_DEPLOYMENT``, or None when
        not in the environment), ``deployment_id``, ``domain`` (a custom domain is preferred over
        the Railway one) and ``image``: a constant number of calls per page, never one per service.
        The reconciler itself no longer calls it (batch status reads our tables, and the inventory
        is the drivers' ``list_managed``); it stays for the contract tests that read the listing.
        """
        operation = SERVICE_INSTANCES_LISTING
        instances: dict[str, dict[str, Any]] = {}
        async for node in self.service_instances():
            instances[str(require(PROVIDER, operation, node, "serviceId"))] = node
        listed: list[dict[str, Any]] = []
        async for service in self.services():
            service_id = str(require(PROVIDER, "project.services", service, "id"))
            instance = instances.get(service_id)
            item: dict[str, Any] = {
                "id": service_id,
                "name": require(PROVIDER, "project.services", service, "name"),
                "created_at": service.get("createdAt"),
                "in_environment": instance is not None,
                "deploy_status": None,
                "deployment_id": None,
                "domain": None,
                "image": None,
            }
            if instance is not None:
                deployment = instance.get("latestDeployment")
                if deployment:
                    item["deploy_status"] = require(PROVIDER, operation, deployment, "status")
                    item["deployment_id"] = require(PROVIDER, operation, deployment, "id")
                else:
                    item["deploy_status"] = NO_DEPLOYMENT
                item["domain"] = _preferred_domain(operation, instance)
                item["image"] = (instance.get("source") or {}).get("image")
            listed.append(item)
        return listed

    async def redeploy(self, service_id: str) -> None:
        """Deploy the service instance again with its current config (``serviceInstanceRedeploy``;
        ``deploymentRedeploy`` cannot be scoped to an environment)."""
        data = await self.execute(
            "serviceInstanceRedeploy",
            SERVICE_INSTANCE_REDEPLOY,
            {"environmentId": await self.environment_id(), "serviceId": service_id},
        )
        confirmed("serviceInstanceRedeploy", data)


def _preferred_domain(operation: str, instance: Mapping[str, Any]) -> str | None:
    domains = require(PROVIDER, operation, instance, "domains")
    for kind in ("customDomains", "serviceDomains"):
        for domain in domains.get(kind) or []:
            return str(require(PROVIDER, operation, domain, "domain"))
    return None


def confirmed(operation: str, data: Mapping[str, Any]) -> None:
    """Boolean mutations: ``false`` means Railway did not do it, which we treat as retryable."""
    if require(PROVIDER, operation, data, operation) is not True:
        raise Transient(PROVIDER, operation, "Railway answered false")


def service_id_of(want: DesiredResource) -> str:
    service_id = want.depends.get(ResourceKind.RAILWAY_SERVICE.value)
    if not service_id:
        raise ConfigError(PROVIDER, want.kind.value, "the desired resource lacks its railway_service id")
    return service_id

