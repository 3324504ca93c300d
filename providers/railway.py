"""Railway: a hand-written GraphQL client and the four drivers built on it.

Railway publishes no Python SDK, only a GraphQL endpoint (``POST <base>/graphql/v2`` with
``{query, variables}``). Every document this module sends is a module-level constant listed in
:data:`ALL_DOCUMENTS`, so the tests validate each one against the full public schema
(``providers/simulated/specs/railway.schema.graphql``) and a misspelt field or argument fails CI
instead of production. The study of the original system found exactly that bug: it passed an
``environmentId`` that ``deploymentRedeploy`` does not take.

Errors. Transport failures and HTTP statuses are mapped by :class:`~providers._http.ProviderHTTP`.
Railway also answers HTTP 200 with ``errors[]`` for failures, rate limits included ("You are
creating volumes too quickly", "Only one project can be created per user"); those are mapped by
:func:`graphql_error`, the one place that reads Railway's error texts.

Scope. All reads go through the non-deprecated, environment-scoped fields
(``environment.volumeInstances``, ``environment.serviceInstances``, ``serviceInstance``) rather
than ``Service.deployments`` or ``Volume.volumeInstances``: a project token can reach one
environment only, and those fields are what Railway keeps. Listings are Relay connections and are
always paged to the end, because adoption after a crash must see every resource.

Deploys. The service is created without a source, so it does not deploy. The first deploy comes
from ONE ``environmentPatchCommit`` that carries the image, start command, limits and every
variable (the deployment driver): separate calls raced in production and about one instance in
ten booted without its variables.
"""

from __future__ import annotations

import re
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

import httpx

from providers._http import ProviderHTTP, parse_retry_after, redact, require
from providers.base import (
    ConfigError,
    Conflict,
    DesiredResource,
    NotFound,
    Observed,
    ProviderError,
    ResourceKind,
    Throttled,
    Transient,
)

PROVIDER = "railway"
PAGE_SIZE = 100
"""``first`` asked of every connection; Railway serves at most 100 per page."""
THROTTLE_SECONDS = 30.0
"""Wait after a "too quickly" error without ``Retry-After``: Railway's per-token creation cooldown."""
NO_DEPLOYMENT = "NO_DEPLOYMENT"
"""``Observed.status`` of a service instance that has never been deployed."""
DEFAULT_MOUNT_PATH = "/data"

OPERATIONS: tuple[str, ...] = (
    "project.environments",
    "project.services",
    "environment.serviceInstances",
    "environment.volumeInstances",
    "environment.config",
    "service",
    "serviceInstance",
    "serviceCreate",
    "serviceDelete",
    "volumeCreate",
    "volumeInstanceUpdate",
    "volumeDelete",
    "serviceDomainCreate",
    "serviceDomainDelete",
    "environmentPatchCommit",
    "serviceInstanceRedeploy",
)
"""Every operation name this module passes to ``ProviderHTTP.request`` (metric labels): the root
field of the document, or ``<root>.<connection>`` for the paged listings."""

# ---------------------------------------------------------------------------------------------
# GraphQL documents. Every one is validated against the full schema by the tests.

PAGE_INFO = "pageInfo { hasNextPage endCursor }"

PROJECT_ENVIRONMENTS = f"""
query ProjectEnvironments($projectId: String!, $first: Int!, $after: String) {{
  project(id: $projectId) {{
    environments(first: $first, after: $after) {{
      edges {{ node {{ id name }} }}
      {PAGE_INFO}
    }}
  }}
}}"""

PROJECT_SERVICES = f"""
query ProjectServices($projectId: String!, $first: Int!, $after: String) {{
  project(id: $projectId) {{
    services(first: $first, after: $after) {{
      edges {{ node {{ id name projectId createdAt }} }}
      {PAGE_INFO}
    }}
  }}
}}"""

SERVICE = """
query Service($id: String!) {
  service(id: $id) { id name projectId createdAt }
}"""

SERVICE_CREATE = """
mutation ServiceCreate($input: ServiceCreateInput!) {
  serviceCreate(input: $input) { id name projectId createdAt }
}"""

SERVICE_DELETE = """
mutation ServiceDelete($id: String!, $environmentId: String) {
  serviceDelete(id: $id, environmentId: $environmentId)
}"""

SERVICE_INSTANCE = """
query ServiceInstance($serviceId: String!, $environmentId: String!) {
  serviceInstance(serviceId: $serviceId, environmentId: $environmentId) {
    id serviceId serviceName environmentId startCommand
    source { image }
    latestDeployment { id status createdAt }
    domains { serviceDomains { id domain } customDomains { id domain } }
  }
}"""

ENVIRONMENT_SERVICE_INSTANCES = f"""
query EnvironmentServiceInstances($environmentId: String!, $first: Int!, $after: String) {{
  environment(id: $environmentId) {{
    serviceInstances(first: $first, after: $after) {{
      edges {{
        node {{
          serviceId serviceName
          source {{ image }}
          latestDeployment {{ id status }}
          domains {{ serviceDomains {{ domain }} customDomains {{ domain }} }}
        }}
      }}
      {PAGE_INFO}
    }}
  }}
}}"""

# The whole environment's config (every service's source, deploy and variables) in one call:
# the batched read drift detection diffs against what we applied.
ENVIRONMENT_CONFIG = """
query EnvironmentConfig($environmentId: String!) {
  environment(id: $environmentId) { config(decryptVariables: true) }
}"""

ENVIRONMENT_VOLUME_INSTANCES = f"""
query EnvironmentVolumeInstances($environmentId: String!, $first: Int!, $after: String) {{
  environment(id: $environmentId) {{
    volumeInstances(first: $first, after: $after) {{
      edges {{ node {{ id volumeId serviceId mountPath volume {{ id name }} }} }}
      {PAGE_INFO}
    }}
  }}
}}"""

VOLUME_CREATE = """
mutation VolumeCreate($input: VolumeCreateInput!) {
  volumeCreate(input: $input) { id name projectId createdAt }
}"""

VOLUME_INSTANCE_UPDATE = """
mutation VolumeInstanceUpdate(
  $volumeId: String!, $environmentId: String, $input: VolumeInstanceUpdateInput!
) {
  volumeInstanceUpdate(volumeId: $volumeId, environmentId: $environmentId, input: $input)
}"""

VOLUME_DELETE = """
mutation VolumeDelete($volumeId: String!) {
  volumeDelete(volumeId: $volumeId)
}"""

SERVICE_DOMAIN_CREATE = """
mutation ServiceDomainCreate($input: ServiceDomainCreateInput!) {
  serviceDomainCreate(input: $input) { id domain serviceId environmentId }
}"""

SERVICE_DOMAIN_DELETE = """
mutation ServiceDomainDelete($id: String!) {
  serviceDomainDelete(id: $id)
}"""

ENVIRONMENT_PATCH_COMMIT = """
mutation EnvironmentPatchCommit($environmentId: String!, $patch: EnvironmentConfig, $commitMessage: String) {
  environmentPatchCommit(environmentId: $environmentId, patch: $patch, commitMessage: $commitMessage)
}"""

SERVICE_INSTANCE_REDEPLOY = """
mutation ServiceInstanceRedeploy($environmentId: String!, $serviceId: String!) {
  serviceInstanceRedeploy(environmentId: $environmentId, serviceId: $serviceId)
}"""

ALL_DOCUMENTS: tuple[str, ...] = (
    PROJECT_ENVIRONMENTS,
    PROJECT_SERVICES,
    SERVICE,
    SERVICE_CREATE,
    SERVICE_DELETE,
    SERVICE_INSTANCE,
    ENVIRONMENT_SERVICE_INSTANCES,
    ENVIRONMENT_VOLUME_INSTANCES,
    ENVIRONMENT_CONFIG,
    VOLUME_CREATE,
    VOLUME_INSTANCE_UPDATE,
    VOLUME_DELETE,
    SERVICE_DOMAIN_CREATE,
    SERVICE_DOMAIN_DELETE,
    ENVIRONMENT_PATCH_COMMIT,
    SERVICE_INSTANCE_REDEPLOY,
)

# ---------------------------------------------------------------------------------------------
# Configuration and errors


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


# ---------------------------------------------------------------------------------------------
# The client


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
        the Railway one) and ``image``. This is the batch status read and the garbage collector's
        inventory: a constant number of calls per page, never one per service.
        """
        operation = "environment.serviceInstances"
        instances: dict[str, dict[str, Any]] = {}
        async for node in self.paginate(
            operation,
            ENVIRONMENT_SERVICE_INSTANCES,
            {"environmentId": await self.environment_id()},
            "environment",
            "serviceInstances",
        ):
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
        _confirmed("serviceInstanceRedeploy", data)


def _preferred_domain(operation: str, instance: Mapping[str, Any]) -> str | None:
    domains = require(PROVIDER, operation, instance, "domains")
    for kind in ("customDomains", "serviceDomains"):
        for domain in domains.get(kind) or []:
            return str(require(PROVIDER, operation, domain, "domain"))
    return None


def _confirmed(operation: str, data: Mapping[str, Any]) -> None:
    """Boolean mutations: ``false`` means Railway did not do it, which we treat as retryable."""
    if require(PROVIDER, operation, data, operation) is not True:
        raise Transient(PROVIDER, operation, "Railway answered false")


def _service_id(want: DesiredResource) -> str:
    service_id = want.depends.get(ResourceKind.RAILWAY_SERVICE.value)
    if not service_id:
        raise ConfigError(PROVIDER, want.kind.value, "the desired resource lacks its railway_service id")
    return service_id


# ---------------------------------------------------------------------------------------------
# Drivers


class RailwayServiceDriver:
    """The Railway service, named by the derived name and found again by that name."""

    kind = ResourceKind.RAILWAY_SERVICE

    def __init__(self, client: RailwayClient) -> None:
        self.client = client

    async def _observed(self, node: Mapping[str, Any], operation: str) -> Observed:
        return Observed(
            external_id=str(require(PROVIDER, operation, node, "id")),
            name=str(require(PROVIDER, operation, node, "name")),
            attributes={
                "name": require(PROVIDER, operation, node, "name"),
                "project_id": require(PROVIDER, operation, node, "projectId"),
                "environment_id": await self.client.environment_id(),
            },
        )

    async def lookup(self, want: DesiredResource) -> Observed | None:
        # Names are not unique at Railway; the oldest service with ours wins (listing order).
        async with aclosing(self.client.services()) as services:
            async for node in services:
                if node.get("name") == want.name:
                    return await self._observed(node, "project.services")
        return None

    async def observe(self, external_id: str, want: DesiredResource) -> Observed:
        data = await self.client.execute("service", SERVICE, {"id": external_id})
        return await self._observed(require(PROVIDER, "service", data, "service"), "service")

    async def create(self, want: DesiredResource) -> Observed:
        # No source: the image arrives with the deployment patch, so nothing deploys yet.
        service_input = {
            "projectId": self.client.config.project_id,
            "environmentId": await self.client.environment_id(),
            "name": want.name,
        }
        data = await self.client.execute("serviceCreate", SERVICE_CREATE, {"input": service_input})
        created = require(PROVIDER, "serviceCreate", data, "serviceCreate")
        return await self._observed(created, "serviceCreate")

    async def update(self, external_id: str, want: DesiredResource) -> Observed:
        return await self.observe(external_id, want)

    async def delete(self, external_id: str, want: DesiredResource) -> None:
        data = await self.client.execute(
            "serviceDelete",
            SERVICE_DELETE,
            {"id": external_id, "environmentId": await self.client.environment_id()},
        )
        _confirmed("serviceDelete", data)


class RailwayVolumeDriver:
    """The service's volume (``want.params["mount_path"]``, default ``/data``).

    A volume has no name of ours, so it is found by what it hangs off: the volume instance in our
    environment attached to the instance's service. Its external id is the volume id (what
    ``volumeDelete`` takes).
    """

    kind = ResourceKind.RAILWAY_VOLUME
    _LISTING = "environment.volumeInstances"

    def __init__(self, client: RailwayClient) -> None:
        self.client = client

    async def _find(self, field: str, value: str) -> dict[str, Any] | None:
        """The first volume instance in our environment whose ``field`` is ``value``."""
        listing = self.client.paginate(
            self._LISTING,
            ENVIRONMENT_VOLUME_INSTANCES,
            {"environmentId": await self.client.environment_id()},
            "environment",
            "volumeInstances",
        )
        async with aclosing(listing) as nodes:
            async for node in nodes:
                if node.get(field) == value:
                    return node
        return None

    def _observed(self, want: DesiredResource, node: Mapping[str, Any]) -> Observed:
        return Observed(
            external_id=str(require(PROVIDER, self._LISTING, node, "volumeId")),
            name=want.name,
            attributes={"mount_path": require(PROVIDER, self._LISTING, node, "mountPath")},
        )

    async def lookup(self, want: DesiredResource) -> Observed | None:
        node = await self._find("serviceId", _service_id(want))
        return None if node is None else self._observed(want, node)

    async def observe(self, external_id: str, want: DesiredResource) -> Observed:
        node = await self._find("volumeId", external_id)
        if node is None:
            raise NotFound(PROVIDER, self._LISTING, f"volume {external_id} has no instance in the environment")
        return self._observed(want, node)

    async def create(self, want: DesiredResource) -> Observed:
        mount_path = str(want.params.get("mount_path", DEFAULT_MOUNT_PATH))
        volume_input = {
            "projectId": self.client.config.project_id,
            "serviceId": _service_id(want),
            "environmentId": await self.client.environment_id(),
            "mountPath": mount_path,
        }
        data = await self.client.execute("volumeCreate", VOLUME_CREATE, {"input": volume_input})
        volume_id = str(require(PROVIDER, "volumeCreate", data, "volumeCreate", "id"))
        return Observed(external_id=volume_id, name=want.name, attributes={"mount_path": mount_path})

    async def update(self, external_id: str, want: DesiredResource) -> Observed:
        # serviceId is re-sent on purpose: the schema says an update without it detaches the volume.
        volume_input = {
            "mountPath": str(want.params.get("mount_path", DEFAULT_MOUNT_PATH)),
            "serviceId": _service_id(want),
        }
        variables = {
            "volumeId": external_id,
            "environmentId": await self.client.environment_id(),
            "input": volume_input,
        }
        data = await self.client.execute("volumeInstanceUpdate", VOLUME_INSTANCE_UPDATE, variables)
        _confirmed("volumeInstanceUpdate", data)
        return await self.observe(external_id, want)

    async def delete(self, external_id: str, want: DesiredResource) -> None:
        data = await self.client.execute("volumeDelete", VOLUME_DELETE, {"volumeId": external_id})
        _confirmed("volumeDelete", data)


class RailwayDomainDriver:
    """The Railway-provided domain (``*.up.railway.app``) of the service in our environment."""

    kind = ResourceKind.RAILWAY_DOMAIN

    def __init__(self, client: RailwayClient) -> None:
        self.client = client

    async def _service_domains(self, want: DesiredResource) -> list[dict[str, Any]]:
        instance = await self.client.service_instance(_service_id(want))
        domains: list[dict[str, Any]] = require(PROVIDER, "serviceInstance", instance, "domains", "serviceDomains")
        return domains

    @staticmethod
    def _observed(want: DesiredResource, node: Mapping[str, Any], operation: str) -> Observed:
        return Observed(
            external_id=str(require(PROVIDER, operation, node, "id")),
            name=want.name,
            attributes={"domain": require(PROVIDER, operation, node, "domain")},
        )

    async def lookup(self, want: DesiredResource) -> Observed | None:
        try:
            domains = await self._service_domains(want)
        except NotFound:
            return None  # no service instance, so no domain either
        return self._observed(want, domains[0], "serviceInstance") if domains else None

    async def observe(self, external_id: str, want: DesiredResource) -> Observed:
        for node in await self._service_domains(want):
            if node.get("id") == external_id:
                return self._observed(want, node, "serviceInstance")
        raise NotFound(PROVIDER, "serviceInstance", f"service domain {external_id} not found")

    async def create(self, want: DesiredResource) -> Observed:
        domain_input = {"serviceId": _service_id(want), "environmentId": await self.client.environment_id()}
        operation = "serviceDomainCreate"
        data = await self.client.execute(operation, SERVICE_DOMAIN_CREATE, {"input": domain_input})
        node = require(PROVIDER, operation, data, operation)
        return self._observed(want, node, "serviceDomainCreate")

    async def update(self, external_id: str, want: DesiredResource) -> Observed:
        return await self.observe(external_id, want)

    async def delete(self, external_id: str, want: DesiredResource) -> None:
        data = await self.client.execute("serviceDomainDelete", SERVICE_DOMAIN_DELETE, {"id": external_id})
        _confirmed("serviceDomainDelete", data)


class RailwayDeploymentDriver:
    """The service's deploy config and the deployment it starts; external id = the service id.

    ``want.params``: ``image``, ``start_command`` (default from the config), ``cpu``,
    ``memory_bytes`` and ``remove_variables`` (names we set before and no longer want: sent as
    null, which deletes them). ``want.secrets``: every variable. Create and update are the same single
    ``environmentPatchCommit``, so a deploy always sees the complete configuration.
    """

    kind = ResourceKind.RAILWAY_DEPLOYMENT

    def __init__(self, client: RailwayClient) -> None:
        self.client = client

    def _patch(self, want: DesiredResource) -> dict[str, Any]:
        """The environment patch for ``want``; it holds every variable's value, so never log it."""
        operation = "environmentPatchCommit"
        image = want.params.get("image")
        if not isinstance(image, str) or not image:
            raise ConfigError(PROVIDER, operation, "the deployment needs an image")
        deploy: dict[str, Any] = {
            "startCommand": str(want.params.get("start_command") or self.client.config.start_command)
        }
        containers: dict[str, Any] = {}
        cpu, memory = want.params.get("cpu"), want.params.get("memory_bytes")
        if cpu is not None:
            if isinstance(cpu, bool) or not isinstance(cpu, int | float) or cpu <= 0:
                raise ConfigError(PROVIDER, operation, "cpu must be a positive number")
            containers["cpu"] = cpu
        if memory is not None:
            if isinstance(memory, bool) or not isinstance(memory, int) or memory <= 0:
                raise ConfigError(PROVIDER, operation, "memory_bytes must be a positive integer")
            containers["memoryBytes"] = memory
        if containers:
            deploy["limitOverride"] = {"containers": containers}
        variables: dict[str, Any] = {name: {"value": value} for name, value in want.secrets.items()}
        # A null entry deletes a variable: the ones we set before and no longer want.
        for name in want.params.get("remove_variables") or ():
            if name not in variables:
                variables[str(name)] = None
        service = {"source": {"image": image}, "deploy": deploy, "variables": variables}
        return {"services": {_service_id(want): service}}

    async def _commit(self, want: DesiredResource) -> Observed:
        await self.client.execute(
            "environmentPatchCommit",
            ENVIRONMENT_PATCH_COMMIT,
            {
                "environmentId": await self.client.environment_id(),
                "patch": self._patch(want),
                "commitMessage": f"reconciler: deploy {want.name}",
            },
            secrets=tuple(want.secrets.values()),
        )
        return await self.observe(_service_id(want), want)

    async def lookup(self, want: DesiredResource) -> Observed | None:
        try:
            observed = await self.observe(_service_id(want), want)
        except NotFound:
            return None
        return None if observed.status == NO_DEPLOYMENT else observed

    async def observe(self, external_id: str, want: DesiredResource) -> Observed:
        instance = await self.client.service_instance(external_id)
        deployment = instance.get("latestDeployment")
        status = NO_DEPLOYMENT
        if deployment:
            status = str(require(PROVIDER, "serviceInstance", deployment, "status"))
        return Observed(
            external_id=external_id,
            name=want.name,
            attributes={
                "deploy_status": status,
                "deployment_id": deployment.get("id") if deployment else None,
                "image": (instance.get("source") or {}).get("image"),
            },
            ready=status == "SUCCESS",
            status=status,
        )

    async def create(self, want: DesiredResource) -> Observed:
        return await self._commit(want)

    async def update(self, external_id: str, want: DesiredResource) -> Observed:
        return await self._commit(want)

    async def delete(self, external_id: str, want: DesiredResource) -> None:
        """Nothing to do: deleting the service removes its deployments."""
