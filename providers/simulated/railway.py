"""Simulated Railway: the real public GraphQL schema, executed by graphql-core over in-memory state.

The fake does not parse requests by hand. It loads the complete public schema
(``specs/railway.schema.graphql``, 609 types) and runs every request through graphql-core's own
parse, validate and execute, so a document that the real API would reject (an unknown field, a
missing argument, ``environmentId`` on ``deploymentRedeploy``) is rejected here too, with a 400
and ``errors[]`` as Railway's GraphQL server answers. Only the root fields Railway clients use
have resolvers (:data:`RESOLVED`). Any other root field answers with a GraphQL error "not
supported by the simulator", and nested fields resolve from plain dicts (lazy callables for
connections), so whatever a client selects is checked against the schema's types on the way out.

**Tokens.** Any non-empty token is accepted; its header says its kind, as on Railway. A token in
``Project-Access-Token`` is a *project token*: it reaches the project (``project``,
``projectToken``) but not the account, so ``me`` and ``projects`` answer "Not Authorized" as
Railway does. A token in ``Authorization: Bearer`` is an *account token*: ``me`` is a made-up
user and ``projects`` lists the one project. The project's id is the one given
(``SimulatorSettings.railway_project_id``, ``reconciler simulate --project-id`` or
``RAILWAY_PROJECT_ID``), else drawn from the seed; any other id is "Not Authorized".

**Where things live.** This module is the HTTP endpoint and every resolver of the schema's root
fields, kept together so one file answers "what does the fake do for ``volumeCreate``". The
world (records, indexes, paging, deployments' clock) is :mod:`providers.simulated.railway_state`;
the schema-shaped views :mod:`providers.simulated.railway_views`; input checking of patches
:mod:`providers.simulated.railway_input`; the schema, operation names and error envelopes
:mod:`providers.simulated.railway_schema`.

Errors follow what the study saw in production: a missing token is a 401, a malformed request
or an invalid document a 400, and everything that fails while running (not found, bad input
values) an HTTP 200 with ``errors[]`` and an ``extensions.code``. Knobs: ``page_size`` (Relay
``first`` is capped to it) and :attr:`FakeRailway.faults`, the shared fault layer of
:mod:`providers.simulated.fault_layer`, which names each request by its GraphQL root field
(``volumeCreate``, ``project``...). Through it: latency, error statuses and GraphQL errors in a
200, 429s, timeouts, queued answers (``faults.fail_next``) and rate limits; a rate limit on
``volumeCreate`` answers as production did, HTTP 200 with "You are creating volumes too quickly"
and no ``Retry-After``. With list lag, new services and volumes (and their instances and
deployments) are left out of every connection for a while; ``service``, ``serviceInstance`` and
``volumeInstance`` by id still find them.
"""

from __future__ import annotations

import string
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from graphql import DocumentNode, GraphQLError, default_field_resolver, execute_sync, parse, validate
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp

from providers.simulated._common import InvalidJSON, iso_timestamp, read_json
from providers.simulated.fault_layer import Faults
from providers.simulated.railway_input import apply, mount_path, service_patch, string_map
from providers.simulated.railway_schema import (
    SCHEMA_PATH,
    TOO_QUICKLY,
    RailwayAPIError,
    bad_input,
    bearer,
    error_body,
    formatted,
    http_error,
    load_schema,
    not_authorized,
    not_found,
    operation_of,
    operations,
    too_quickly,
)
from providers.simulated.railway_state import (
    DOMAIN_SUFFIX,
    Domain,
    Instance,
    RailwayWorld,
    Record,
    Service,
    View,
    Volume,
    VolumeInstance,
)
from providers.simulated.railway_views import Info, RailwayViews

__all__ = [
    "SCHEMA_PATH",
    "TOO_QUICKLY",
    "FakeRailway",
    "RailwayAPIError",
    "error_body",
    "load_schema",
    "operation_of",
    "operations",
]

TokenKind = Literal["project", "account"]


@dataclass(frozen=True)
class _Call:
    """Per-request context handed to the resolvers."""

    token: str
    kind: TokenKind
    now: float


Resolver = Callable[[_Call, dict[str, Any]], Any]


class FakeRailway:
    """In-memory Railway behind its real GraphQL schema. See the module docstring."""

    def __init__(
        self,
        deploy_seconds: float = 3.0,
        seed: int | None = None,
        page_size: int = 100,
        *,
        project_id: str | None = None,
        project_name: str = "convos-agents",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._clock = clock
        self.faults = Faults(
            "railway", error_body, seed=seed, clock=clock, rate_limited=too_quickly, graphql_errors=True
        )
        self.world = RailwayWorld(
            self.faults,
            deploy_seconds=deploy_seconds,
            seed=seed,
            page_size=page_size,
            project_id=project_id,
            project_name=project_name,
            clock=clock,
        )
        self.views = RailwayViews(self.world)
        self._lock = threading.RLock()
        self._schema = load_schema()
        self._project = Record(self.world.project_id, 0, self.world.project_created_at)
        self._resolvers: dict[str, Resolver] = {
            "me": self._q_me,
            "project": self._q_project,
            "projects": self._q_projects,
            "projectToken": self._q_project_token,
            "service": self._q_service,
            "serviceInstance": self._q_service_instance,
            "environment": self._q_environment,
            "environments": self._q_environments,
            "deployment": self._q_deployment,
            "volumeInstance": self._q_volume_instance,
            "domains": self._q_domains,
            "serviceCreate": self._m_service_create,
            "serviceDelete": self._m_service_delete,
            "volumeCreate": self._m_volume_create,
            "volumeDelete": self._m_volume_delete,
            "volumeInstanceUpdate": self._m_volume_instance_update,
            "serviceDomainCreate": self._m_service_domain_create,
            "serviceDomainDelete": self._m_service_domain_delete,
            "environmentPatchCommit": self._m_environment_patch_commit,
            "serviceInstanceRedeploy": self._m_service_instance_redeploy,
            "deploymentRedeploy": self._m_deployment_redeploy,
        }

    # --- public knobs and views -----------------------------------------------------------------

    @property
    def project_id(self) -> str:
        return self.world.project_id

    @property
    def project_name(self) -> str:
        return self.world.project_name

    @property
    def deploy_seconds(self) -> float:
        return self.world.deploy_seconds

    @deploy_seconds.setter
    def deploy_seconds(self, seconds: float) -> None:
        self.world.deploy_seconds = seconds

    @property
    def page_size(self) -> int:
        return self.world.page_size

    @property
    def environment_ids(self) -> dict[str, str]:
        """``{"production": <id>, "staging": <id>}``."""
        return self.world.environment_ids

    @property
    def resolved(self) -> frozenset[str]:
        """The root fields this fake answers (every other one is "not supported by the simulator")."""
        return frozenset(self._resolvers)

    def crash(self, service_id: str, environment_id: str | None = None) -> str:
        """Make the latest deployment of the service (in ``environment_id`` if given) CRASHED.

        Returns the deployment id; raises ``KeyError`` if the service never deployed.
        """
        with self._lock:
            return self.world.crash(service_id, environment_id)

    def snapshot(self, *, reveal_secrets: bool = True) -> dict[str, list[dict[str, Any]]]:
        """Every service, volume, domain and deployment held; variable values only if ``reveal_secrets``."""
        with self._lock:
            return self.world.snapshot(reveal_secrets=reveal_secrets)

    def reset(self) -> None:
        """Forget every service, volume, domain, deployment, queued failure and logged request
        (the project and the fault plan stay)."""
        with self._lock:
            self.world.clear()
        self.faults.reset()

    def asgi(self) -> ASGIApp:
        """The GraphQL endpoint. It answers on any path, so it works mounted under a prefix and
        served at the exact ``/graphql/v2`` path alike."""
        app = Starlette(routes=[Route("/{path:path}", self._endpoint, methods=["GET", "POST"])])
        return self.faults.wrap(app, operation_of)

    # --- HTTP -----------------------------------------------------------------------------------

    async def _endpoint(self, request: Request) -> Response:
        project_token = request.headers.get("project-access-token", "").strip()
        token = project_token or bearer(request.headers.get("authorization", ""))
        if not token:
            return http_error(401, "Not Authorized", "UNAUTHENTICATED")
        if request.method != "POST":
            return http_error(405, "Railway's GraphQL API takes POST requests", "METHOD_NOT_ALLOWED")
        try:
            body = await read_json(request)
        except InvalidJSON:
            return http_error(400, "Request body is not valid JSON", "BAD_REQUEST")
        if not isinstance(body, dict) or not isinstance(body.get("query"), str):
            return http_error(400, "Request body must be a JSON object with a string 'query'", "BAD_REQUEST")
        variables = body.get("variables") or {}
        operation_name = body.get("operationName")
        if not isinstance(variables, dict) or not isinstance(operation_name, str | None):
            return http_error(400, "'variables' must be an object and 'operationName' a string", "BAD_REQUEST")
        try:
            document = parse(body["query"])
        except GraphQLError as exc:
            return http_error(400, exc.message, "GRAPHQL_PARSE_FAILED")
        invalid = validate(self._schema, document)
        if invalid:
            return JSONResponse({"errors": [formatted(e, "GRAPHQL_VALIDATION_FAILED") for e in invalid]}, 400)
        kind: TokenKind = "project" if project_token else "account"
        return self._execute(document, variables, operation_name, _Call(token, kind, self._clock()))

    def _execute(
        self, document: DocumentNode, variables: dict[str, Any], operation_name: str | None, call: _Call
    ) -> JSONResponse:
        def resolve(source: Any, info: Info, **args: Any) -> Any:
            if info.path.prev is not None:
                return default_field_resolver(source, info, **args)
            handler = self._resolvers.get(info.field_name)
            if handler is None:
                raise RailwayAPIError(f"{info.field_name} is not supported by the simulator", "NOT_SUPPORTED")
            return handler(call, args)

        with self._lock:
            result = execute_sync(
                self._schema,
                document,
                variable_values=variables,
                operation_name=operation_name,
                field_resolver=resolve,
            )
        errors = list(result.errors or [])
        if result.data is None and errors and all(e.path is None for e in errors):
            # Request errors (variables that do not coerce, no such operation): nothing ran.
            return JSONResponse({"errors": [formatted(e, "BAD_USER_INPUT") for e in errors]}, 400)
        answer: dict[str, Any] = {"data": result.data}
        if errors:
            answer["errors"] = [formatted(e) for e in errors]
        return JSONResponse(answer)

    def _check_project(self, project_id: Any) -> None:
        if project_id != self.world.project_id:
            raise not_authorized()

    # --- queries: the account and the project ---------------------------------------------------

    def _q_me(self, call: _Call, args: dict[str, Any]) -> View:
        if call.kind == "project":
            raise not_authorized()  # a project token has no user behind it
        return self.views.user_view()

    def _q_projects(self, call: _Call, args: dict[str, Any]) -> View:
        """The projects the token reaches: the one project (workspace and user filters do not
        narrow it: the simulator has one account)."""
        if call.kind == "project":
            raise not_authorized()
        return self.world.page([self._project], args, lambda _record: self.views.project_view())

    def _q_project_token(self, call: _Call, args: dict[str, Any]) -> View:
        if call.kind != "project":
            raise not_authorized()
        return self.views.project_token_view()

    def _q_project(self, call: _Call, args: dict[str, Any]) -> View:
        self._check_project(args["id"])
        return self.views.project_view()

    # --- queries: what the project holds ---------------------------------------------------------

    def _q_service(self, call: _Call, args: dict[str, Any]) -> View:
        return self.views.service_view(self.world.service(args["id"]))

    def _q_service_instance(self, call: _Call, args: dict[str, Any]) -> View:
        return self.views.instance_view(self.world.instance(args["serviceId"], args["environmentId"]))

    def _q_environment(self, call: _Call, args: dict[str, Any]) -> View:
        if args.get("projectId") is not None:
            self._check_project(args["projectId"])
        return self.views.environment_view(self.world.environment(args["id"]))

    def _q_environments(self, call: _Call, args: dict[str, Any]) -> View:
        self._check_project(args["projectId"])
        wanted = args.get("isEphemeral")
        envs = (e for e in self.world.environments.values() if wanted in (None, False))
        return self.world.page(envs, args, self.views.environment_view)

    def _q_deployment(self, call: _Call, args: dict[str, Any]) -> View:
        return self.views.deployment_view(self.world.deployment(args["id"]))

    def _q_volume_instance(self, call: _Call, args: dict[str, Any]) -> View:
        vi = self.world.volume_instances.get(args["id"])
        if vi is None:
            raise not_found("VolumeInstance")
        return self.views.volume_instance_view(vi)

    def _q_domains(self, call: _Call, args: dict[str, Any]) -> View:
        self._check_project(args["projectId"])
        instance = self.world.instance(args["serviceId"], args["environmentId"])
        return self.views.domains_view(instance.service_id, instance.environment_id)

    # --- mutations ----------------------------------------------------------------------------

    def _m_service_create(self, call: _Call, args: dict[str, Any]) -> View:
        world, given = self.world, args["input"]
        self._check_project(given["projectId"])
        environment_id = given.get("environmentId")
        home = world.environment(environment_id) if environment_id is not None else None
        if given.get("templateId") or given.get("templateServiceId") or given.get("registryCredentials"):
            raise bad_input("templates and registry credentials are not supported by the simulator")
        source = given.get("source") or {}
        if source.get("repo"):
            raise bad_input("repository sources are not supported by the simulator")
        variables = string_map(given.get("variables") or {}, "variables")
        name = given.get("name") or f"service-{world.random.token(6, string.ascii_lowercase)}"
        service = Service(*world.new_id(), name=name, home_environment_id=(home or world.production()).id)
        world.services[service.id] = service
        self.faults.created("serviceCreate", service.id)
        # Documented: a service created in a non-fork environment gets an instance in all of them.
        for env in world.environments.values():
            instance = Instance(
                *world.new_id(),
                service_id=service.id,
                environment_id=env.id,
                updated_at=iso_timestamp(),
                image=source.get("image"),
                variables=dict(variables),
            )
            world.instances[(service.id, env.id)] = instance
            if instance.image:
                world.deploy(instance, call.now)
        return self.views.service_view(service)

    def _m_service_delete(self, call: _Call, args: dict[str, Any]) -> bool:
        service = self.world.service(args["id"])
        if args.get("environmentId") is not None:
            self.world.environment(args["environmentId"])
        self.world.drop_service(service)
        return True

    def _m_volume_create(self, call: _Call, args: dict[str, Any]) -> View:
        world, given = self.world, args["input"]
        self._check_project(given["projectId"])
        path = mount_path(given["mountPath"])
        service = world.service(given["serviceId"]) if given.get("serviceId") is not None else None
        if "environmentId" not in given:
            environments = list(world.environments.values())  # omitted: every environment
        elif given["environmentId"] is None:
            environments = []  # null: no environment
        else:
            environments = [world.environment(given["environmentId"])]
        if service is not None:
            for env in environments:
                world.check_no_volume(service.id, env.id)
        name = f"{service.name}-volume" if service else f"volume-{world.random.token(6, string.ascii_lowercase)}"
        volume = Volume(*world.new_id(), name=name)
        world.volumes[volume.id] = volume
        self.faults.created("volumeCreate", volume.id)
        for env in environments:
            vi = VolumeInstance(
                *world.new_id(),
                volume_id=volume.id,
                service_id=service.id if service else None,
                environment_id=env.id,
                mount_path=path,
            )
            world.volume_instances[vi.id] = vi
        return self.views.volume_view(volume)

    def _m_volume_delete(self, call: _Call, args: dict[str, Any]) -> bool:
        volume_id = args["volumeId"]
        if volume_id not in self.world.volumes:
            raise not_found("Volume")
        self.world.drop_volume_instances(vi for vi in self.world.volume_instances.values() if vi.volume_id == volume_id)
        self.world.volumes.pop(volume_id, None)
        return True

    def _m_volume_instance_update(self, call: _Call, args: dict[str, Any]) -> bool:
        world = self.world
        volume_id, environment_id, given = args["volumeId"], args.get("environmentId"), args["input"]
        if volume_id not in world.volumes:
            raise not_found("Volume")
        if environment_id is not None:
            world.environment(environment_id)
        targets = [
            vi
            for vi in world.volume_instances.values()
            if vi.volume_id == volume_id and environment_id in (None, vi.environment_id)
        ]
        if not targets:
            raise not_found("VolumeInstance")
        path = mount_path(given["mountPath"]) if given.get("mountPath") is not None else None
        # Documented: without serviceId the volume is disconnected.
        service_id = world.service(given["serviceId"]).id if given.get("serviceId") is not None else None
        for vi in targets:
            if service_id is not None and service_id != vi.service_id:
                world.check_no_volume(service_id, vi.environment_id)
        for vi in targets:
            vi.service_id = service_id
            if path is not None:
                vi.mount_path = path
        return True

    def _m_service_domain_create(self, call: _Call, args: dict[str, Any]) -> View:
        world, given = self.world, args["input"]
        instance = world.instance(given["serviceId"], given["environmentId"])
        port = given.get("targetPort")
        if port is not None and not 1 <= port <= 65535:
            raise bad_input("targetPort must be between 1 and 65535")
        label = world.random.token(4, string.ascii_lowercase + string.digits)
        host = f"{world.services[instance.service_id].name}-{label}.{DOMAIN_SUFFIX}"
        domain = Domain(
            *world.new_id(),
            service_id=instance.service_id,
            environment_id=instance.environment_id,
            domain=host,
            target_port=port,
        )
        world.domains[domain.id] = domain
        world.domains_of.add(domain)
        return self.views.domain_view(domain)

    def _m_service_domain_delete(self, call: _Call, args: dict[str, Any]) -> bool:
        domain = self.world.domains.pop(args["id"], None)
        if domain is None:
            raise not_found("Service domain")
        self.world.domains_of.remove(domain)
        return True

    def _m_environment_patch_commit(self, call: _Call, args: dict[str, Any]) -> str:
        env = self.world.environment(args["environmentId"])
        patch = args.get("patch") or {}
        if not isinstance(patch, dict):
            raise bad_input("Invalid environment config: the patch must be an object")
        unknown = set(patch) - {"services"}
        if unknown:
            raise bad_input(f"Invalid environment config: {sorted(unknown)} not supported by the simulator")
        services = patch.get("services") or {}
        if not isinstance(services, dict):
            raise bad_input("Invalid environment config: services must be an object")
        # Validate everything before changing anything: a commit applies whole or not at all.
        changes = [(self.world.instance(sid, env.id), service_patch(sid, cfg)) for sid, cfg in services.items()]
        for instance, change in changes:
            before = instance.config()
            apply(instance, change)
            if instance.config() != before:
                instance.updated_at = iso_timestamp()
                if instance.image:
                    self.world.deploy(instance, call.now)
        return self.world.random.uuid()

    def _m_service_instance_redeploy(self, call: _Call, args: dict[str, Any]) -> bool:
        self.world.deploy(self.world.instance(args["serviceId"], args["environmentId"]), call.now)
        return True

    def _m_deployment_redeploy(self, call: _Call, args: dict[str, Any]) -> View:
        deployment = self.world.deployment(args["id"])
        instance = self.world.instance(deployment.service_id, deployment.environment_id)
        return self.views.deployment_view(self.world.deploy(instance, call.now))
