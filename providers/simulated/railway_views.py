"""The simulated Railway's objects as the schema shapes them: plain dicts for graphql-core.

Each view is a dict with the schema's field names; a field that takes arguments or leads to
more objects (a connection, ``project`` of a service) is a callable graphql-core calls only when
a document selects it, so a view costs only what is asked. graphql-core's default resolver
reads them, and checks every value against the schema's types on the way out.
"""

from __future__ import annotations

from typing import Any

from graphql import GraphQLResolveInfo

from providers.simulated.railway_state import (
    DOMAIN_SUFFIX,
    REGION,
    STOPPED,
    VOLUME_SIZE_MB,
    Deployment,
    Domain,
    Environment,
    Instance,
    RailwayWorld,
    Service,
    View,
    Volume,
    VolumeInstance,
)

Info = GraphQLResolveInfo[Any]


class RailwayViews:
    """Schema-shaped views of a :class:`RailwayWorld`."""

    def __init__(self, world: RailwayWorld) -> None:
        self.world = world

    def project_view(self) -> View:
        production = self.world.environment_ids["production"]
        return {
            "id": self.world.project_id,
            "name": self.world.project_name,
            "description": None,
            "createdAt": self.world.project_created_at,
            "updatedAt": self.world.project_created_at,
            "deletedAt": None,
            "expiredAt": None,
            "isPublic": False,
            "isTempProject": False,
            "prDeploys": False,
            "botPrEnvironments": False,
            "focusedPrEnvironments": False,
            "baseEnvironmentId": None,
            "primaryEnvironmentId": production,
            "workspaceId": None,
            "featureFlags": [],
            "members": [],
            "services": lambda _info, **page: self.world.page(self.world.services.values(), page, self.service_view),
            "environments": lambda _info, **page: self.world.page(
                self.world.environments.values(), page, self.environment_view
            ),
            "volumes": lambda _info, **page: self.world.page(self.world.volumes.values(), page, self.volume_view),
        }

    def environment_view(self, env: Environment) -> View:
        return {
            "id": env.id,
            "name": env.name,
            "projectId": self.world.project_id,
            "createdAt": env.created_at,
            "updatedAt": env.created_at,
            "deletedAt": None,
            "isEphemeral": False,
            "canAccess": True,
            "unmergedChangesCount": 0,
            "canvasGroupRefs": {},
            "meta": None,
            "sourceEnvironment": None,
            "serviceInstances": lambda _info, **page: self.world.page(
                (i for i in self.world.instances.values() if i.environment_id == env.id), page, self.instance_view
            ),
            "volumeInstances": lambda _info, **page: self.world.page(
                (vi for vi in self.world.volume_instances.values() if vi.environment_id == env.id),
                page,
                self.volume_instance_view,
            ),
            "deployments": lambda _info, **page: self.world.page(
                (d for d in self.world.deployments.values() if d.environment_id == env.id),
                page,
                self.deployment_view,
                newest_first=True,
            ),
            "config": lambda _info, decryptVariables=None: self.environment_config(env, bool(decryptVariables)),
        }

    def environment_config(self, env: Environment, decrypt: bool) -> dict[str, Any]:
        """The environment's serialized config, in the shape ``environmentPatchCommit`` accepts."""
        services: dict[str, Any] = {}
        for instance in self.world.instances.values():
            if instance.environment_id != env.id:
                continue
            entry: dict[str, Any] = {
                "source": {"image": instance.image},
                "deploy": {"startCommand": instance.start_command},
            }
            if instance.cpu is not None or instance.memory_bytes is not None:
                entry["deploy"]["limitOverride"] = {
                    "containers": {"cpu": instance.cpu, "memoryBytes": instance.memory_bytes}
                }
            # Without decryption Railway does not reveal values; names only.
            entry["variables"] = {
                name: ({"value": value} if decrypt else {}) for name, value in instance.variables.items()
            }
            services[instance.service_id] = entry
        return {"services": services}

    def service_view(self, service: Service) -> View:
        return {
            "id": service.id,
            "name": service.name,
            "projectId": self.world.project_id,
            "createdAt": service.created_at,
            "updatedAt": service.created_at,
            "deletedAt": None,
            "icon": None,
            "groupId": None,
            "templateId": None,
            "templateServiceId": None,
            "templateThreadSlug": None,
            "isRestricted": False,
            "hasHiddenRegistryCredentialsFromTemplate": False,
            "featureFlags": [],
            "project": lambda _info: self.project_view(),
            "serviceInstances": lambda _info, **page: self.world.page(
                (i for i in self.world.instances.values() if i.service_id == service.id), page, self.instance_view
            ),
            "deployments": lambda _info, **page: self.world.page(
                (d for d in self.world.deployments.values() if d.service_id == service.id),
                page,
                self.deployment_view,
                newest_first=True,
            ),
        }

    def instance_view(self, instance: Instance) -> View:
        service = self.world.services[instance.service_id]
        now = self.world.clock()

        def active(_info: Info) -> list[View]:
            mine = self.world.deployments_of.of(instance.service_id, instance.environment_id)
            return [self.deployment_view(d) for d in mine if d.status(now, self.world.deploy_seconds) == "SUCCESS"]

        def latest(_info: Info) -> View | None:
            deployment = self.world.latest_deployment(instance)
            return self.deployment_view(deployment) if deployment else None

        return {
            "id": instance.id,
            "serviceId": service.id,
            "serviceName": service.name,
            "environmentId": instance.environment_id,
            "createdAt": instance.created_at,
            "updatedAt": instance.updated_at,
            "deletedAt": None,
            "source": {"image": instance.image, "repo": None} if instance.image else None,
            "startCommand": instance.start_command,
            "builder": "RAILPACK",
            "numReplicas": 1,
            "region": REGION,
            "restartPolicyType": "ON_FAILURE",
            "restartPolicyMaxRetries": 10,
            "isUpdatable": True,
            "sleepApplication": False,
            "watchPatterns": [],
            "healthcheckPath": None,
            "healthcheckTimeout": None,
            "cronSchedule": None,
            "nextCronRunAt": None,
            "rootDirectory": None,
            "buildCommand": None,
            "dockerfilePath": None,
            "railwayConfigFile": None,
            "upstreamUrl": None,
            "latestDeployment": latest,
            "activeDeployments": active,
            "domains": lambda _info: self.domains_view(instance.service_id, instance.environment_id),
            "service": lambda _info: self.service_view(service),
        }

    def domains_view(self, service_id: str, environment_id: str) -> View:
        mine = sorted(self.world.domains_of.of(service_id, environment_id), key=lambda d: d.seq)
        return {"serviceDomains": [self.domain_view(d) for d in mine], "customDomains": []}

    def domain_view(self, domain: Domain) -> View:
        return {
            "id": domain.id,
            "domain": domain.domain,
            "serviceId": domain.service_id,
            "environmentId": domain.environment_id,
            "projectId": self.world.project_id,
            "createdAt": domain.created_at,
            "updatedAt": domain.created_at,
            "deletedAt": None,
            "suffix": DOMAIN_SUFFIX,
            "targetPort": domain.target_port,
            "syncStatus": "ACTIVE",
            "edgeId": None,
            "newDomainName": None,
            "newHostLabel": None,
            "cdnMode": None,
        }

    def volume_view(self, volume: Volume) -> View:
        return {
            "id": volume.id,
            "name": volume.name,
            "projectId": self.world.project_id,
            "createdAt": volume.created_at,
            "project": lambda _info: self.project_view(),
            "volumeInstances": lambda _info, **page: self.world.page(
                (vi for vi in self.world.volume_instances.values() if vi.volume_id == volume.id),
                page,
                self.volume_instance_view,
            ),
        }

    def volume_instance_view(self, vi: VolumeInstance) -> View:
        return {
            "id": vi.id,
            "volumeId": vi.volume_id,
            "serviceId": vi.service_id,
            "environmentId": vi.environment_id,
            "mountPath": vi.mount_path,
            "createdAt": vi.created_at,
            "deletedAt": None,
            "currentSizeMB": 0.0,
            "sizeMB": VOLUME_SIZE_MB,
            "state": "READY",
            "isPendingDeletion": False,
            "region": REGION,
            "externalId": None,
            "volume": lambda _info: self.volume_view(self.world.volumes[vi.volume_id]),
            "service": lambda _info: self.service_view(self.world.service(vi.service_id)),
            "environment": lambda _info: self.environment_view(self.world.environments[vi.environment_id]),
        }

    def deployment_view(self, deployment: Deployment) -> View:
        status = deployment.status(self.world.clock(), self.world.deploy_seconds)
        domains = self.domains_view(deployment.service_id, deployment.environment_id)["serviceDomains"]
        host = domains[0]["domain"] if domains else None
        return {
            "id": deployment.id,
            "status": status,
            "createdAt": deployment.created_at,
            "updatedAt": deployment.created_at,
            "statusUpdatedAt": deployment.created_at,
            "projectId": self.world.project_id,
            "environmentId": deployment.environment_id,
            "serviceId": deployment.service_id,
            "canRedeploy": True,
            "canRollback": status == "REMOVED",
            "deploymentStopped": status in STOPPED,
            "instances": [],
            "sockets": [],
            "suggestAddServiceDomain": host is None,
            "staticUrl": host,
            "url": f"https://{host}" if host else None,
            "meta": {"image": deployment.image, "startCommand": deployment.start_command},
            "snapshotId": None,
            "creator": None,
            "diagnosis": None,
            "service": lambda _info: self.service_view(self.world.services[deployment.service_id]),
            "environment": lambda _info: self.environment_view(self.world.environments[deployment.environment_id]),
        }

    def project_token_view(self) -> View:
        """``projectToken``: the scope of a project token (this project, its production environment)."""
        production = self.world.production()
        return {
            "id": self.world.project_token_id,
            "name": "simulated project token",
            "displayToken": "********",
            "createdAt": self.world.project_created_at,
            "projectId": self.world.project_id,
            "environmentId": production.id,
            "project": lambda _info: self.project_view(),
            "environment": lambda _info: self.environment_view(production),
        }

    def user_view(self) -> View:
        """``me`` for an account token: one made-up user (Railway lists projects through workspaces,
        so the deprecated ``User.projects`` is empty here as it is there)."""
        empty: View = {
            "edges": [],
            "pageInfo": {"hasNextPage": False, "hasPreviousPage": False, "startCursor": None, "endCursor": None},
        }
        return {
            "id": self.world.user_id,
            "email": "simulated@example.com",
            "name": "Simulated User",
            "username": "simulated",
            "avatar": None,
            "createdAt": self.world.project_created_at,
            "lastLogin": self.world.project_created_at,
            "agreedFairUse": True,
            "has2FA": False,
            "hasPasskeys": False,
            "isAdmin": False,
            "isConductor": False,
            "isVerified": True,
            "registrationStatus": "ONBOARDED",
            "featureFlags": [],
            "flags": [],
            "platformFeatureFlags": [],
            "apiTokenRateLimit": None,
            "banReason": None,
            "githubProviderId": None,
            "githubUsername": None,
            "profile": None,
            "riskLevel": None,
            "termsAgreedOn": None,
            "workspace": None,
            "workspaces": [],
            "projects": lambda _info, **_page: empty,
            "providerAuths": lambda _info, **_page: empty,
        }
