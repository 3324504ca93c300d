"""The four Railway drivers: service, volume, domain and deployment, over one :class:`RailwayClient`.

Deploys. The service is created without a source, so it does not deploy. The first deploy comes
from ONE ``environmentPatchCommit`` that carries the image, start command, limits and every
variable (the deployment driver): separate calls raced in production and about one instance in
ten booted without its variables.

Listing. The service driver lists the project's services under our prefix; the deployment driver
lists each such service's latest deployment status and live config (variables, image) in a
constant number of calls per page, which is what the observer diffs against. A volume and a
domain have no name of ours and hang off their service: they are not listed on their own.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import aclosing
from typing import Any

from providers.base import ConfigError, DesiredResource, NotFound, Observed, ResourceKind
from providers.http import require
from providers.railway.client import (
    DEFAULT_MOUNT_PATH,
    NO_DEPLOYMENT,
    PROVIDER,
    SERVICE_INSTANCES_LISTING,
    RailwayClient,
    confirmed,
    service_id_of,
)
from providers.railway.documents import (
    ENVIRONMENT_PATCH_COMMIT,
    ENVIRONMENT_VOLUME_INSTANCES,
    SERVICE,
    SERVICE_CREATE,
    SERVICE_DELETE,
    SERVICE_DOMAIN_CREATE,
    SERVICE_DOMAIN_DELETE,
    VOLUME_CREATE,
    VOLUME_DELETE,
    VOLUME_INSTANCE_UPDATE,
)


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

    async def list_managed(self, prefix: str) -> list[Observed]:
        """Every service of the project whose name starts with ``prefix`` (all pages)."""
        return [
            await self._observed(node, "project.services")
            async for node in self.client.services()
            if str(node.get("name") or "").startswith(prefix)
        ]

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
        confirmed("serviceDelete", data)


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
        node = await self._find("serviceId", service_id_of(want))
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
            "serviceId": service_id_of(want),
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
            "serviceId": service_id_of(want),
        }
        variables = {
            "volumeId": external_id,
            "environmentId": await self.client.environment_id(),
            "input": volume_input,
        }
        data = await self.client.execute("volumeInstanceUpdate", VOLUME_INSTANCE_UPDATE, variables)
        confirmed("volumeInstanceUpdate", data)
        return await self.observe(external_id, want)

    async def delete(self, external_id: str, want: DesiredResource) -> None:
        data = await self.client.execute("volumeDelete", VOLUME_DELETE, {"volumeId": external_id})
        confirmed("volumeDelete", data)

    async def list_managed(self, prefix: str) -> None:
        """Not listed on its own: a volume has no name of ours and goes with its service."""
        return None


class RailwayDomainDriver:
    """The Railway-provided domain (``*.up.railway.app``) of the service in our environment."""

    kind = ResourceKind.RAILWAY_DOMAIN

    def __init__(self, client: RailwayClient) -> None:
        self.client = client

    async def _service_domains(self, want: DesiredResource) -> list[dict[str, Any]]:
        instance = await self.client.service_instance(service_id_of(want))
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
        domain_input = {"serviceId": service_id_of(want), "environmentId": await self.client.environment_id()}
        operation = "serviceDomainCreate"
        data = await self.client.execute(operation, SERVICE_DOMAIN_CREATE, {"input": domain_input})
        node = require(PROVIDER, operation, data, operation)
        return self._observed(want, node, "serviceDomainCreate")

    async def update(self, external_id: str, want: DesiredResource) -> Observed:
        return await self.observe(external_id, want)

    async def delete(self, external_id: str, want: DesiredResource) -> None:
        data = await self.client.execute("serviceDomainDelete", SERVICE_DOMAIN_DELETE, {"id": external_id})
        confirmed("serviceDomainDelete", data)

    async def list_managed(self, prefix: str) -> None:
        """Not listed on its own: the domain is read with its service instance."""
        return None


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
        return {"services": {service_id_of(want): service}}

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
        return await self.observe(service_id_of(want), want)

    async def lookup(self, want: DesiredResource) -> Observed | None:
        try:
            observed = await self.observe(service_id_of(want), want)
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
            status=status,  # raw DeploymentStatus: what counts as ready is the reconciler's reading
        )

    async def create(self, want: DesiredResource) -> Observed:
        return await self._commit(want)

    async def update(self, external_id: str, want: DesiredResource) -> Observed:
        return await self._commit(want)

    async def delete(self, external_id: str, want: DesiredResource) -> None:
        """Nothing to do: deleting the service removes its deployments."""

    async def list_managed(self, prefix: str) -> list[Observed]:
        """The deploy state of every service under ``prefix`` in our environment, in two reads.

        One paged listing of the environment's service instances (the latest deployment's raw
        status) and one read of the environment's config (every service's image and variables).
        External id, as for the driver's other answers: the service id. ``secrets``: the live
        variables, decrypted, to compare with what we applied; ``attributes["configured"]`` is
        False when the config has no entry for the service (then nothing can be compared).
        """
        configs = await self.client.service_configs()
        listed: list[Observed] = []
        async for node in self.client.service_instances():
            name = str(require(PROVIDER, SERVICE_INSTANCES_LISTING, node, "serviceName"))
            if not name.startswith(prefix):
                continue
            service_id = str(require(PROVIDER, SERVICE_INSTANCES_LISTING, node, "serviceId"))
            deployment = node.get("latestDeployment")
            status = NO_DEPLOYMENT
            if deployment:
                status = str(require(PROVIDER, SERVICE_INSTANCES_LISTING, deployment, "status"))
            config = configs.get(service_id)
            listed.append(
                Observed(
                    external_id=service_id,
                    name=name,
                    attributes={
                        "deploy_status": status,
                        "deployment_id": deployment.get("id") if deployment else None,
                        "image": config["image"] if config else None,
                        "configured": config is not None,
                    },
                    status=status,
                    secrets=config["variables"] if config else {},
                )
            )
        return listed

