"""Simulated Railway: the real public GraphQL schema, executed by graphql-core over in-memory state.

The fake does not parse requests by hand. It loads the complete public schema
(``specs/railway.schema.graphql``, 609 types) and runs every request through graphql-core's own
parse, validate and execute, so a document that the real API would reject (an unknown field, a
missing argument, ``environmentId`` on ``deploymentRedeploy``) is rejected here too, with a 400
and ``errors[]`` as Railway's GraphQL server answers. Only the root fields Railway clients use
have resolvers. Any other root field answers with a GraphQL error "not supported by the
simulator", and nested fields resolve from plain dicts (lazy callables for connections), so
whatever a client selects is checked against the schema's types on the way out.

The world: one project (id from the seed unless given) with two environments, ``production``
and ``staging``. Services get an instance in every environment (as ``serviceCreate`` documents
for non-fork environments). Volumes have volume instances per environment. Service domains are
``<service>-<random>.up.railway.app``. Deployments come from ``environmentPatchCommit`` (only
when the patch changes the instance: Railway deploys on a diff) and the redeploy mutations.
A deployment's status is computed from the clock when it is read (QUEUED -> BUILDING ->
DEPLOYING -> SUCCESS over ``deploy_seconds``), so no background task is needed; :meth:`crash`
makes one CRASHED.

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

import base64
import json
import re
import string
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import cache, lru_cache
from pathlib import Path
from typing import Any, Generic, TypeVar

from graphql import (
    DocumentNode,
    FieldNode,
    GraphQLError,
    GraphQLResolveInfo,
    GraphQLSchema,
    OperationDefinitionNode,
    build_schema,
    default_field_resolver,
    execute_sync,
    parse,
    validate,
    validate_schema,
)
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Scope

from providers.simulated._common import FakeRandom, InvalidJSON, iso_timestamp, read_json
from providers.simulated.fault_layer import Faults
from providers.simulated.fault_plan import UNKNOWN

SCHEMA_PATH = Path(__file__).parent / "specs" / "railway.schema.graphql"
ENVIRONMENT_NAMES = ("production", "staging")
DOMAIN_SUFFIX = "up.railway.app"
REGION = "us-west2"
VOLUME_SIZE_MB = 5000
TOO_QUICKLY = "You are creating volumes too quickly. Please wait a moment and try again."

# Share of deploy_seconds spent in each phase before SUCCESS.
_PHASES = (("QUEUED", 0.15), ("BUILDING", 0.70), ("DEPLOYING", 1.0))
_STOPPED = frozenset({"CRASHED", "FAILED", "REMOVED", "SKIPPED"})
_VARIABLE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_SERVICE_KEYS = frozenset({"source", "deploy", "build", "variables", "networking", "volumeMounts", "isDeleted"})
_DEPLOY_KEYS = frozenset(
    {
        "startCommand",
        "limitOverride",
        "numReplicas",
        "healthcheckPath",
        "healthcheckTimeout",
        "restartPolicyType",
        "restartPolicyMaxRetries",
        "region",
        "multiRegionConfig",
        "sleepApplication",
        "cronSchedule",
        "drainingSeconds",
        "overlapSeconds",
        "preDeployCommand",
    }
)


# Railway's published schema deprecates Team.id although Node.id is not deprecated; graphql-core
# 3.3 refuses such a schema. The real API serves it and no operation is affected, so this one
# known quirk is tolerated; any other schema error still fails loudly.
_TOLERATED_SCHEMA_ERRORS = frozenset(
    {"Interface field Node.id is not deprecated, so implementation field Team.id must not be deprecated."}
)


@cache
def load_schema() -> GraphQLSchema:
    """The full public schema, checked and built once per process (it is 175 KB of SDL)."""
    sdl = SCHEMA_PATH.read_text(encoding="utf-8")
    problems = [e.message for e in validate_schema(build_schema(sdl))]
    unexpected = [message for message in problems if message not in _TOLERATED_SCHEMA_ERRORS]
    if unexpected:
        raise TypeError(f"{SCHEMA_PATH.name} is not a valid schema: {'; '.join(unexpected)}")
    return build_schema(sdl, assume_valid=True)


class RailwayAPIError(Exception):
    """A failure the simulated API reports in ``errors[]`` of an HTTP 200, as Railway's resolvers do."""

    def __init__(self, message: str, code: str = "INTERNAL_SERVER_ERROR") -> None:
        super().__init__(message)
        self.code = code


def _not_found(what: str) -> RailwayAPIError:
    return RailwayAPIError(f"{what} not found", "NOT_FOUND")


def _bad_input(message: str) -> RailwayAPIError:
    return RailwayAPIError(message, "BAD_USER_INPUT")


@cache
def operations() -> frozenset[str]:
    """Every root field of the schema: the operation names the fault layer can give a request."""
    schema = load_schema()
    roots = (schema.query_type, schema.mutation_type, schema.subscription_type)
    return frozenset(name for root in roots if root is not None for name in root.fields)


_FAULT_CODES = {
    400: "BAD_REQUEST",
    401: "UNAUTHENTICATED",
    403: "FORBIDDEN",
    404: "NOT_FOUND",
    429: "RATE_LIMITED",
}


def error_body(status: int, message: str) -> dict[str, Any]:
    """Railway's envelope for an injected failure; with status 200 it is a GraphQL error."""
    code = _FAULT_CODES.get(status, "INTERNAL_SERVER_ERROR")
    return {"data": None, "errors": [{"message": message, "extensions": {"code": code}}]}


def operation_of(scope: Scope, body: bytes) -> str:
    """The root field a request runs (the first one, if its document has several)."""
    try:
        payload = json.loads(body)
    except ValueError:
        return UNKNOWN
    if not isinstance(payload, dict) or not isinstance(payload.get("query"), str):
        return UNKNOWN
    name = payload.get("operationName")
    return _document_operation(payload["query"], name if isinstance(name, str) else None)


@lru_cache(maxsize=256)
def _document_operation(query: str, operation_name: str | None) -> str:
    try:
        document = parse(query)
    except GraphQLError:
        return UNKNOWN
    fields = _root_fields(document, operation_name)
    return fields[0] if fields and fields[0] in operations() else UNKNOWN


def _too_quickly(operation: str, retry_after: float) -> Response | None:
    """Over a ``volumeCreate`` rate limit, Railway answered a 200 with this error and no Retry-After."""
    if operation != "volumeCreate":
        return None
    error = {"message": TOO_QUICKLY, "path": [operation], "extensions": {"code": "INTERNAL_SERVER_ERROR"}}
    return JSONResponse({"data": None, "errors": [error]})


# --- state ------------------------------------------------------------------------------------


@dataclass
class _Record:
    id: str
    seq: int
    created_at: str


@dataclass
class _Environment(_Record):
    name: str


@dataclass
class _Service(_Record):
    name: str
    home_environment_id: str


@dataclass
class _Instance(_Record):
    """One service in one environment, with the deploy config patches have given it."""

    service_id: str
    environment_id: str
    updated_at: str
    image: str | None = None
    start_command: str | None = None
    cpu: float | None = None
    memory_bytes: int | None = None
    variables: dict[str, str] = field(default_factory=dict)

    def config(self) -> tuple[Any, ...]:
        return (self.image, self.start_command, self.cpu, self.memory_bytes, sorted(self.variables.items()))


@dataclass
class _Volume(_Record):
    name: str


@dataclass
class _VolumeInstance(_Record):
    volume_id: str
    service_id: str | None
    environment_id: str
    mount_path: str


@dataclass
class _Domain(_Record):
    service_id: str
    environment_id: str
    domain: str
    target_port: int | None


@dataclass
class _Deployment(_Record):
    service_id: str
    environment_id: str
    started: float
    image: str | None
    start_command: str | None
    outcome: str | None = None
    """A status that overrides the clock: CRASHED (see ``crash``) or REMOVED (superseded)."""

    def status(self, now: float, deploy_seconds: float) -> str:
        if self.outcome is not None:
            return self.outcome
        elapsed = now - self.started
        if deploy_seconds <= 0 or elapsed >= deploy_seconds:
            return "SUCCESS"
        share = elapsed / deploy_seconds
        return next(name for name, end in _PHASES if share < end)


R = TypeVar("R", bound=_Record)
D = TypeVar("D", _Domain, _Deployment)
Info = GraphQLResolveInfo[Any]
View = dict[str, Any]


class _PerInstance(Generic[D]):
    """Domains or deployments grouped by service instance, kept beside their table.

    A listing page shows each service instance's latest deployment and its domains; finding them
    by scanning the whole table made a page cost O(fleet) and one listing O(fleet^2), seconds of
    the fake's one event loop per page at 10,000 services, stalling every other call.
    """

    def __init__(self) -> None:
        self._groups: dict[tuple[str, str], dict[str, D]] = {}

    def add(self, record: D) -> None:
        self._groups.setdefault((record.service_id, record.environment_id), {})[record.id] = record

    def remove(self, record: D) -> None:
        group = self._groups.get((record.service_id, record.environment_id), {})
        group.pop(record.id, None)
        if not group:
            self._groups.pop((record.service_id, record.environment_id), None)

    def of(self, service_id: str, environment_id: str) -> list[D]:
        return list(self._groups.get((service_id, environment_id), {}).values())

    def clear(self) -> None:
        self._groups.clear()


@dataclass(frozen=True)
class _Call:
    """Per-request context handed to the resolvers."""

    token: str
    now: float


# --- the fake ---------------------------------------------------------------------------------


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
        if page_size < 1:
            raise ValueError("page_size must be at least 1")
        self.deploy_seconds = deploy_seconds
        self.page_size = page_size
        self._clock = clock
        self.faults = Faults(
            "railway", error_body, seed=seed, clock=clock, rate_limited=_too_quickly, graphql_errors=True
        )
        self._random = FakeRandom(seed)
        self._lock = threading.RLock()
        self._schema = load_schema()
        self._seq = 0
        self.project_id = project_id or self._random.uuid()
        self.project_name = project_name
        self._project_created_at = iso_timestamp()
        self._environments = {
            env.id: env
            for env in (
                _Environment(self._random.uuid(), self._next_seq(), iso_timestamp(), name) for name in ENVIRONMENT_NAMES
            )
        }
        self._services: dict[str, _Service] = {}
        self._instances: dict[tuple[str, str], _Instance] = {}
        self._volumes: dict[str, _Volume] = {}
        self._volume_instances: dict[str, _VolumeInstance] = {}
        self._domains: dict[str, _Domain] = {}
        self._deployments: dict[str, _Deployment] = {}
        self._domains_of: _PerInstance[_Domain] = _PerInstance()
        self._deployments_of: _PerInstance[_Deployment] = _PerInstance()
        self._queries: dict[str, Callable[[_Call, dict[str, Any]], Any]] = {
            "project": self._q_project,
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
    def environment_ids(self) -> dict[str, str]:
        """``{"production": <id>, "staging": <id>}``."""
        return {env.name: env.id for env in self._environments.values()}

    def crash(self, service_id: str, environment_id: str | None = None) -> str:
        """Make the latest deployment of the service (in ``environment_id`` if given) CRASHED.

        Returns the deployment id; raises ``KeyError`` if the service never deployed.
        """
        with self._lock:
            candidates = [
                d
                for d in self._deployments.values()
                if d.service_id == service_id and environment_id in (None, d.environment_id)
            ]
            if not candidates:
                raise KeyError(f"service {service_id} has no deployment")
            latest = max(candidates, key=lambda d: d.seq)
            latest.outcome = "CRASHED"
            return latest.id

    def snapshot(self) -> dict[str, list[dict[str, Any]]]:
        with self._lock:
            now = self._clock()
            return {
                "services": [self._service_snapshot(s, now) for s in self._services.values()],
                "volumes": [self._volume_snapshot(v) for v in self._volumes.values()],
                "domains": [
                    {
                        "id": d.id,
                        "name": self._services[d.service_id].name,
                        "service_id": d.service_id,
                        "environment_id": d.environment_id,
                        "domain": d.domain,
                        "created_at": d.created_at,
                    }
                    for d in self._domains.values()
                ],
                "deployments": [
                    {
                        "id": d.id,
                        "name": self._services[d.service_id].name,
                        "service_id": d.service_id,
                        "environment_id": d.environment_id,
                        "status": d.status(now, self.deploy_seconds),
                        "image": d.image,
                        "created_at": d.created_at,
                    }
                    for d in self._deployments.values()
                ],
            }

    def reset(self) -> None:
        """Forget every service, volume, domain, deployment, queued failure and logged request
        (the project and the fault plan stay)."""
        with self._lock:
            for table in (
                self._services,
                self._instances,
                self._volumes,
                self._volume_instances,
                self._domains,
                self._deployments,
            ):
                table.clear()
            self._domains_of.clear()
            self._deployments_of.clear()
        self.faults.reset()

    def asgi(self) -> ASGIApp:
        """The GraphQL endpoint. It answers on any path, so it works mounted under a prefix and
        served at the exact ``/graphql/v2`` path alike."""
        app = Starlette(routes=[Route("/{path:path}", self._endpoint, methods=["GET", "POST"])])
        return self.faults.wrap(app, operation_of)

    # --- HTTP -----------------------------------------------------------------------------------

    async def _endpoint(self, request: Request) -> Response:
        token = request.headers.get("project-access-token", "").strip() or _bearer(
            request.headers.get("authorization", "")
        )
        if not token:
            return _errors(401, "Not Authorized", "UNAUTHENTICATED")
        if request.method != "POST":
            return _errors(405, "Railway's GraphQL API takes POST requests", "METHOD_NOT_ALLOWED")
        try:
            body = await read_json(request)
        except InvalidJSON:
            return _errors(400, "Request body is not valid JSON", "BAD_REQUEST")
        if not isinstance(body, dict) or not isinstance(body.get("query"), str):
            return _errors(400, "Request body must be a JSON object with a string 'query'", "BAD_REQUEST")
        variables = body.get("variables") or {}
        operation_name = body.get("operationName")
        if not isinstance(variables, dict) or not isinstance(operation_name, str | None):
            return _errors(400, "'variables' must be an object and 'operationName' a string", "BAD_REQUEST")
        try:
            document = parse(body["query"])
        except GraphQLError as exc:
            return _errors(400, exc.message, "GRAPHQL_PARSE_FAILED")
        invalid = validate(self._schema, document)
        if invalid:
            return JSONResponse({"errors": [_formatted(e, "GRAPHQL_VALIDATION_FAILED") for e in invalid]}, 400)
        return self._execute(document, variables, operation_name, _Call(token, self._clock()))

    def _execute(
        self, document: DocumentNode, variables: dict[str, Any], operation_name: str | None, call: _Call
    ) -> JSONResponse:
        def resolve(source: Any, info: Info, **args: Any) -> Any:
            if info.path.prev is not None:
                return default_field_resolver(source, info, **args)
            handler = self._queries.get(info.field_name)
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
            return JSONResponse({"errors": [_formatted(e, "BAD_USER_INPUT") for e in errors]}, 400)
        answer: dict[str, Any] = {"data": result.data}
        if errors:
            answer["errors"] = [_formatted(e) for e in errors]
        return JSONResponse(answer)

    # --- helpers --------------------------------------------------------------------------------

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _new_id(self) -> tuple[str, int, str]:
        return self._random.uuid(), self._next_seq(), iso_timestamp()

    def _check_project(self, project_id: Any) -> None:
        if project_id != self.project_id:
            raise RailwayAPIError("Not Authorized", "FORBIDDEN")

    def _environment(self, environment_id: Any) -> _Environment:
        env = self._environments.get(environment_id)
        if env is None:
            raise _not_found("Environment")
        return env

    def _service(self, service_id: Any) -> _Service:
        service = self._services.get(service_id)
        if service is None:
            raise _not_found("Service")
        return service

    def _instance(self, service_id: Any, environment_id: Any) -> _Instance:
        instance = self._instances.get((service_id, environment_id))
        if instance is None:
            raise _not_found("ServiceInstance")
        return instance

    def _deploy(self, instance: _Instance, call: _Call) -> _Deployment:
        """Start a deployment of the instance's current config; older ones are superseded."""
        if instance.image is None:
            raise _bad_input("Service instance has no source to deploy")
        for older in self._deployments_of.of(instance.service_id, instance.environment_id):
            older.outcome = older.outcome or "REMOVED"
        deployment = _Deployment(
            *self._new_id(),
            service_id=instance.service_id,
            environment_id=instance.environment_id,
            started=call.now,
            image=instance.image,
            start_command=instance.start_command,
        )
        self._deployments[deployment.id] = deployment
        self._deployments_of.add(deployment)
        return deployment

    def _listed(self, record: _Record) -> bool:
        """Whether listings show ``record``: neither it nor the service or volume it belongs to is
        hidden by list lag."""
        refs = (record.id, getattr(record, "service_id", None), getattr(record, "volume_id", None))
        return all(self.faults.is_listed(ref) for ref in refs if ref)

    def _latest_deployment(self, instance: _Instance) -> _Deployment | None:
        mine = self._deployments_of.of(instance.service_id, instance.environment_id)
        return max(mine, key=lambda d: d.seq) if mine else None

    def _drop_volume_instances(self, doomed: Iterable[_VolumeInstance]) -> None:
        """Remove volume instances, and each volume left with none."""
        for volume_instance in list(doomed):
            del self._volume_instances[volume_instance.id]
        remaining = {vi.volume_id for vi in self._volume_instances.values()}
        for volume_id in [v for v in self._volumes if v not in remaining]:
            del self._volumes[volume_id]

    def _page(
        self,
        records: Iterable[R],
        args: Mapping[str, Any],
        view: Callable[[R], View],
        *,
        newest_first: bool = False,
    ) -> View:
        """A Relay connection over ``records``: opaque cursors, ``first`` capped at the page size.
        Records still hidden by list lag are left out."""
        ordered = sorted((r for r in records if self._listed(r)), key=lambda r: r.seq, reverse=newest_first)
        after, before = _cursor_seq(args.get("after")), _cursor_seq(args.get("before"))

        def follows(seq: int, cursor: int) -> bool:
            return seq < cursor if newest_first else seq > cursor

        # Cursors hold a position, not an index, so a deletion between pages skips nothing.
        if after is not None:
            ordered = [r for r in ordered if follows(r.seq, after)]
        if before is not None:
            ordered = [r for r in ordered if follows(before, r.seq)]
        first, last = args.get("first"), args.get("last")
        for name, value in (("first", first), ("last", last)):
            if value is not None and value < 0:
                raise _bad_input(f"'{name}' must not be negative")
        has_next = has_previous = False
        if last is not None and first is None:
            count = min(last, self.page_size)
            has_previous = len(ordered) > count
            ordered = ordered[len(ordered) - count :] if count else []
        else:
            count = min(first if first is not None else self.page_size, self.page_size)
            has_next = len(ordered) > count
            ordered = ordered[:count]
        edges = [{"cursor": _cursor(r.seq), "node": view(r)} for r in ordered]
        return {
            "edges": edges,
            "pageInfo": {
                "hasNextPage": has_next,
                "hasPreviousPage": has_previous or after is not None,
                "startCursor": edges[0]["cursor"] if edges else None,
                "endCursor": edges[-1]["cursor"] if edges else None,
            },
        }

    # --- views: schema-shaped dicts, with callables for fields that take arguments or recurse ----

    def _project_view(self) -> View:
        production = self.environment_ids["production"]
        return {
            "id": self.project_id,
            "name": self.project_name,
            "description": None,
            "createdAt": self._project_created_at,
            "updatedAt": self._project_created_at,
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
            "services": lambda _info, **page: self._page(self._services.values(), page, self._service_view),
            "environments": lambda _info, **page: self._page(self._environments.values(), page, self._environment_view),
            "volumes": lambda _info, **page: self._page(self._volumes.values(), page, self._volume_view),
        }

    def _environment_view(self, env: _Environment) -> View:
        return {
            "id": env.id,
            "name": env.name,
            "projectId": self.project_id,
            "createdAt": env.created_at,
            "updatedAt": env.created_at,
            "deletedAt": None,
            "isEphemeral": False,
            "canAccess": True,
            "unmergedChangesCount": 0,
            "canvasGroupRefs": {},
            "meta": None,
            "sourceEnvironment": None,
            "serviceInstances": lambda _info, **page: self._page(
                (i for i in self._instances.values() if i.environment_id == env.id), page, self._instance_view
            ),
            "volumeInstances": lambda _info, **page: self._page(
                (vi for vi in self._volume_instances.values() if vi.environment_id == env.id),
                page,
                self._volume_instance_view,
            ),
            "deployments": lambda _info, **page: self._page(
                (d for d in self._deployments.values() if d.environment_id == env.id),
                page,
                self._deployment_view,
                newest_first=True,
            ),
            "config": lambda _info, decryptVariables=None: self._environment_config(env, bool(decryptVariables)),
        }

    def _environment_config(self, env: _Environment, decrypt: bool) -> dict[str, Any]:
        """The environment's serialized config, in the shape ``environmentPatchCommit`` accepts."""
        services: dict[str, Any] = {}
        for instance in self._instances.values():
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

    def _service_view(self, service: _Service) -> View:
        return {
            "id": service.id,
            "name": service.name,
            "projectId": self.project_id,
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
            "project": lambda _info: self._project_view(),
            "serviceInstances": lambda _info, **page: self._page(
                (i for i in self._instances.values() if i.service_id == service.id), page, self._instance_view
            ),
            "deployments": lambda _info, **page: self._page(
                (d for d in self._deployments.values() if d.service_id == service.id),
                page,
                self._deployment_view,
                newest_first=True,
            ),
        }

    def _instance_view(self, instance: _Instance) -> View:
        service = self._services[instance.service_id]
        now = self._clock()

        def active(_info: Info) -> list[View]:
            mine = self._deployments_of.of(instance.service_id, instance.environment_id)
            return [self._deployment_view(d) for d in mine if d.status(now, self.deploy_seconds) == "SUCCESS"]

        def latest(_info: Info) -> View | None:
            deployment = self._latest_deployment(instance)
            return self._deployment_view(deployment) if deployment else None

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
            "domains": lambda _info: self._domains_view(instance.service_id, instance.environment_id),
            "service": lambda _info: self._service_view(service),
        }

    def _domains_view(self, service_id: str, environment_id: str) -> View:
        mine = sorted(self._domains_of.of(service_id, environment_id), key=lambda d: d.seq)
        return {"serviceDomains": [self._domain_view(d) for d in mine], "customDomains": []}

    def _domain_view(self, domain: _Domain) -> View:
        return {
            "id": domain.id,
            "domain": domain.domain,
            "serviceId": domain.service_id,
            "environmentId": domain.environment_id,
            "projectId": self.project_id,
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

    def _volume_view(self, volume: _Volume) -> View:
        return {
            "id": volume.id,
            "name": volume.name,
            "projectId": self.project_id,
            "createdAt": volume.created_at,
            "project": lambda _info: self._project_view(),
            "volumeInstances": lambda _info, **page: self._page(
                (vi for vi in self._volume_instances.values() if vi.volume_id == volume.id),
                page,
                self._volume_instance_view,
            ),
        }

    def _volume_instance_view(self, vi: _VolumeInstance) -> View:
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
            "volume": lambda _info: self._volume_view(self._volumes[vi.volume_id]),
            "service": lambda _info: self._service_view(self._service(vi.service_id)),
            "environment": lambda _info: self._environment_view(self._environments[vi.environment_id]),
        }

    def _deployment_view(self, deployment: _Deployment) -> View:
        status = deployment.status(self._clock(), self.deploy_seconds)
        domains = self._domains_view(deployment.service_id, deployment.environment_id)["serviceDomains"]
        host = domains[0]["domain"] if domains else None
        return {
            "id": deployment.id,
            "status": status,
            "createdAt": deployment.created_at,
            "updatedAt": deployment.created_at,
            "statusUpdatedAt": deployment.created_at,
            "projectId": self.project_id,
            "environmentId": deployment.environment_id,
            "serviceId": deployment.service_id,
            "canRedeploy": True,
            "canRollback": status == "REMOVED",
            "deploymentStopped": status in _STOPPED,
            "instances": [],
            "sockets": [],
            "suggestAddServiceDomain": host is None,
            "staticUrl": host,
            "url": f"https://{host}" if host else None,
            "meta": {"image": deployment.image, "startCommand": deployment.start_command},
            "snapshotId": None,
            "creator": None,
            "diagnosis": None,
            "service": lambda _info: self._service_view(self._services[deployment.service_id]),
            "environment": lambda _info: self._environment_view(self._environments[deployment.environment_id]),
        }

    # --- queries ------------------------------------------------------------------------------

    def _q_project(self, call: _Call, args: dict[str, Any]) -> View:
        self._check_project(args["id"])
        return self._project_view()

    def _q_service(self, call: _Call, args: dict[str, Any]) -> View:
        return self._service_view(self._service(args["id"]))

    def _q_service_instance(self, call: _Call, args: dict[str, Any]) -> View:
        return self._instance_view(self._instance(args["serviceId"], args["environmentId"]))

    def _q_environment(self, call: _Call, args: dict[str, Any]) -> View:
        if args.get("projectId") is not None:
            self._check_project(args["projectId"])
        return self._environment_view(self._environment(args["id"]))

    def _q_environments(self, call: _Call, args: dict[str, Any]) -> View:
        self._check_project(args["projectId"])
        wanted = args.get("isEphemeral")
        envs = (e for e in self._environments.values() if wanted in (None, False))
        return self._page(envs, args, self._environment_view)

    def _q_deployment(self, call: _Call, args: dict[str, Any]) -> View:
        deployment = self._deployments.get(args["id"])
        if deployment is None:
            raise _not_found("Deployment")
        return self._deployment_view(deployment)

    def _q_volume_instance(self, call: _Call, args: dict[str, Any]) -> View:
        vi = self._volume_instances.get(args["id"])
        if vi is None:
            raise _not_found("VolumeInstance")
        return self._volume_instance_view(vi)

    def _q_domains(self, call: _Call, args: dict[str, Any]) -> View:
        self._check_project(args["projectId"])
        instance = self._instance(args["serviceId"], args["environmentId"])
        return self._domains_view(instance.service_id, instance.environment_id)

    # --- mutations ----------------------------------------------------------------------------

    def _m_service_create(self, call: _Call, args: dict[str, Any]) -> View:
        given = args["input"]
        self._check_project(given["projectId"])
        environment_id = given.get("environmentId")
        home = self._environment(environment_id) if environment_id is not None else None
        if given.get("templateId") or given.get("templateServiceId") or given.get("registryCredentials"):
            raise _bad_input("templates and registry credentials are not supported by the simulator")
        source = given.get("source") or {}
        if source.get("repo"):
            raise _bad_input("repository sources are not supported by the simulator")
        variables = _string_map(given.get("variables") or {}, "variables")
        name = given.get("name") or f"service-{self._random.token(6, string.ascii_lowercase)}"
        service = _Service(*self._new_id(), name=name, home_environment_id=(home or self._production()).id)
        self._services[service.id] = service
        self.faults.created("serviceCreate", service.id)
        # Documented: a service created in a non-fork environment gets an instance in all of them.
        for env in self._environments.values():
            instance = _Instance(
                *self._new_id(),
                service_id=service.id,
                environment_id=env.id,
                updated_at=iso_timestamp(),
                image=source.get("image"),
                variables=dict(variables),
            )
            self._instances[(service.id, env.id)] = instance
            if instance.image:
                self._deploy(instance, call)
        return self._service_view(service)

    def _m_service_delete(self, call: _Call, args: dict[str, Any]) -> bool:
        service = self._service(args["id"])
        if args.get("environmentId") is not None:
            self._environment(args["environmentId"])
        del self._services[service.id]
        for key in [k for k in self._instances if k[0] == service.id]:
            del self._instances[key]
        for domain in [d for d in self._domains.values() if d.service_id == service.id]:
            del self._domains[domain.id]
            self._domains_of.remove(domain)
        for deployment in [d for d in self._deployments.values() if d.service_id == service.id]:
            del self._deployments[deployment.id]
            self._deployments_of.remove(deployment)
        self._drop_volume_instances(vi for vi in self._volume_instances.values() if vi.service_id == service.id)
        return True

    def _m_volume_create(self, call: _Call, args: dict[str, Any]) -> View:
        given = args["input"]
        self._check_project(given["projectId"])
        mount_path = _mount_path(given["mountPath"])
        service = self._service(given["serviceId"]) if given.get("serviceId") is not None else None
        if "environmentId" not in given:
            environments = list(self._environments.values())  # omitted: every environment
        elif given["environmentId"] is None:
            environments = []  # null: no environment
        else:
            environments = [self._environment(given["environmentId"])]
        if service is not None:
            for env in environments:
                self._check_no_volume(service.id, env.id)
        name = f"{service.name}-volume" if service else f"volume-{self._random.token(6, string.ascii_lowercase)}"
        volume = _Volume(*self._new_id(), name=name)
        self._volumes[volume.id] = volume
        self.faults.created("volumeCreate", volume.id)
        for env in environments:
            vi = _VolumeInstance(
                *self._new_id(),
                volume_id=volume.id,
                service_id=service.id if service else None,
                environment_id=env.id,
                mount_path=mount_path,
            )
            self._volume_instances[vi.id] = vi
        return self._volume_view(volume)

    def _m_volume_delete(self, call: _Call, args: dict[str, Any]) -> bool:
        volume_id = args["volumeId"]
        if volume_id not in self._volumes:
            raise _not_found("Volume")
        self._drop_volume_instances(vi for vi in self._volume_instances.values() if vi.volume_id == volume_id)
        self._volumes.pop(volume_id, None)
        return True

    def _m_volume_instance_update(self, call: _Call, args: dict[str, Any]) -> bool:
        volume_id, environment_id, given = args["volumeId"], args.get("environmentId"), args["input"]
        if volume_id not in self._volumes:
            raise _not_found("Volume")
        if environment_id is not None:
            self._environment(environment_id)
        targets = [
            vi
            for vi in self._volume_instances.values()
            if vi.volume_id == volume_id and environment_id in (None, vi.environment_id)
        ]
        if not targets:
            raise _not_found("VolumeInstance")
        mount_path = _mount_path(given["mountPath"]) if given.get("mountPath") is not None else None
        # Documented: without serviceId the volume is disconnected.
        service_id = self._service(given["serviceId"]).id if given.get("serviceId") is not None else None
        for vi in targets:
            if service_id is not None and service_id != vi.service_id:
                self._check_no_volume(service_id, vi.environment_id)
        for vi in targets:
            vi.service_id = service_id
            if mount_path is not None:
                vi.mount_path = mount_path
        return True

    def _m_service_domain_create(self, call: _Call, args: dict[str, Any]) -> View:
        given = args["input"]
        instance = self._instance(given["serviceId"], given["environmentId"])
        port = given.get("targetPort")
        if port is not None and not 1 <= port <= 65535:
            raise _bad_input("targetPort must be between 1 and 65535")
        label = self._random.token(4, string.ascii_lowercase + string.digits)
        host = f"{self._services[instance.service_id].name}-{label}.{DOMAIN_SUFFIX}"
        domain = _Domain(
            *self._new_id(),
            service_id=instance.service_id,
            environment_id=instance.environment_id,
            domain=host,
            target_port=port,
        )
        self._domains[domain.id] = domain
        self._domains_of.add(domain)
        return self._domain_view(domain)

    def _m_service_domain_delete(self, call: _Call, args: dict[str, Any]) -> bool:
        domain = self._domains.pop(args["id"], None)
        if domain is None:
            raise _not_found("Service domain")
        self._domains_of.remove(domain)
        return True

    def _m_environment_patch_commit(self, call: _Call, args: dict[str, Any]) -> str:
        env = self._environment(args["environmentId"])
        patch = args.get("patch") or {}
        if not isinstance(patch, dict):
            raise _bad_input("Invalid environment config: the patch must be an object")
        unknown = set(patch) - {"services"}
        if unknown:
            raise _bad_input(f"Invalid environment config: {sorted(unknown)} not supported by the simulator")
        services = patch.get("services") or {}
        if not isinstance(services, dict):
            raise _bad_input("Invalid environment config: services must be an object")
        # Validate everything before changing anything: a commit applies whole or not at all.
        changes = [(self._instance(sid, env.id), _service_patch(sid, cfg)) for sid, cfg in services.items()]
        for instance, change in changes:
            before = instance.config()
            _apply(instance, change)
            if instance.config() != before:
                instance.updated_at = iso_timestamp()
                if instance.image:
                    self._deploy(instance, call)
        return self._random.uuid()

    def _m_service_instance_redeploy(self, call: _Call, args: dict[str, Any]) -> bool:
        self._deploy(self._instance(args["serviceId"], args["environmentId"]), call)
        return True

    def _m_deployment_redeploy(self, call: _Call, args: dict[str, Any]) -> View:
        deployment = self._deployments.get(args["id"])
        if deployment is None:
            raise _not_found("Deployment")
        instance = self._instance(deployment.service_id, deployment.environment_id)
        return self._deployment_view(self._deploy(instance, call))

    def _check_no_volume(self, service_id: str, environment_id: str) -> None:
        for vi in self._volume_instances.values():
            if (vi.service_id, vi.environment_id) == (service_id, environment_id):
                raise RailwayAPIError("Service already has a volume mounted in this environment", "CONFLICT")

    def _production(self) -> _Environment:
        return next(e for e in self._environments.values() if e.name == "production")

    # --- snapshot -----------------------------------------------------------------------------

    def _service_snapshot(self, service: _Service, now: float) -> dict[str, Any]:
        instances = [i for i in self._instances.values() if i.service_id == service.id]

        def describe(instance: _Instance) -> dict[str, Any]:
            latest = self._latest_deployment(instance)
            return {
                "environment_id": instance.environment_id,
                "environment": self._environments[instance.environment_id].name,
                "image": instance.image,
                "start_command": instance.start_command,
                "cpu": instance.cpu,
                "memory_bytes": instance.memory_bytes,
                "variables": dict(instance.variables),
                "deploy_status": latest.status(now, self.deploy_seconds) if latest else None,
            }

        home = self._instances[(service.id, service.home_environment_id)]
        return {
            "id": service.id,
            "name": service.name,
            "created_at": service.created_at,
            **describe(home),
            "instances": [describe(i) for i in instances],
        }

    def _volume_snapshot(self, volume: _Volume) -> dict[str, Any]:
        instances = sorted(
            (vi for vi in self._volume_instances.values() if vi.volume_id == volume.id), key=lambda vi: vi.seq
        )
        attached = next((vi for vi in instances if vi.service_id in self._services), None)
        return {
            "id": volume.id,
            "name": self._services[attached.service_id].name if attached and attached.service_id else volume.name,
            "volume_name": volume.name,
            "service_id": attached.service_id if attached else None,
            "mount_path": attached.mount_path if attached else None,
            "environment_ids": [vi.environment_id for vi in instances],
            "created_at": volume.created_at,
        }


# --- module helpers ---------------------------------------------------------------------------


def _bearer(header: str) -> str:
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def _errors(status: int, message: str, code: str) -> JSONResponse:
    """An error answer in Railway's envelope: ``{"errors": [{"message", "extensions": {"code"}}]}``."""
    return JSONResponse({"errors": [{"message": message, "extensions": {"code": code}}]}, status)


def _formatted(error: GraphQLError, default_code: str = "INTERNAL_SERVER_ERROR") -> dict[str, Any]:
    original = error.original_error
    code = original.code if isinstance(original, RailwayAPIError) else default_code
    formatted: dict[str, Any] = dict(error.formatted)
    formatted["extensions"] = {**(error.extensions or {}), "code": code}
    return formatted


def _root_fields(document: DocumentNode, operation_name: str | None) -> list[str]:
    """Names of the root fields of the operation that will run, in document order."""
    for definition in document.definitions:
        if isinstance(definition, OperationDefinitionNode) and (
            operation_name is None or (definition.name and definition.name.value == operation_name)
        ):
            return [s.name.value for s in definition.selection_set.selections if isinstance(s, FieldNode)]
    return []


def _cursor(seq: int) -> str:
    return base64.urlsafe_b64encode(f"cursor:{seq}".encode()).decode()


def _cursor_seq(cursor: Any) -> int | None:
    if cursor is None:
        return None
    try:
        prefix, _, seq = base64.urlsafe_b64decode(str(cursor).encode()).decode().partition(":")
        if prefix == "cursor":
            return int(seq)
    except ValueError:
        pass
    raise _bad_input("Invalid cursor")


def _mount_path(value: Any) -> str:
    if not isinstance(value, str) or not value.startswith("/") or value == "/" or " " in value:
        raise _bad_input("Invalid mount path: use an absolute path other than /")
    return value


def _string_map(value: Any, where: str) -> dict[str, str]:
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise _bad_input(f"Invalid {where}: expected a map of names to string values")
    for name in value:
        if not _VARIABLE_NAME.match(name):
            raise _bad_input(f"Invalid variable name {name!r}")
    return dict(value)


@dataclass
class _ServiceChange:
    """What one service entry of an environment patch sets (None: left alone)."""

    image: str | None = None
    start_command: str | None = None
    cpu: float | None = None
    memory_bytes: int | None = None
    variables: dict[str, str | None] = field(default_factory=dict)


def _service_patch(service_id: str, config: Any) -> _ServiceChange:
    """Check one ``services.<id>`` entry of a patch; messages never echo a variable's value."""
    where = f"services.{service_id}"
    if not isinstance(config, dict):
        raise _bad_input(f"Invalid environment config: {where} must be an object")
    unknown = set(config) - _SERVICE_KEYS
    if unknown:
        raise _bad_input(f"Invalid environment config: unknown field(s) {sorted(unknown)} in {where}")
    change = _ServiceChange()
    source = _object(config.get("source"), f"{where}.source")
    if source.get("repo"):
        raise _bad_input("repository sources are not supported by the simulator")
    change.image = _optional(source.get("image"), str, f"{where}.source.image")
    deploy = _object(config.get("deploy"), f"{where}.deploy")
    unknown = set(deploy) - _DEPLOY_KEYS
    if unknown:
        raise _bad_input(f"Invalid environment config: unknown field(s) {sorted(unknown)} in {where}.deploy")
    change.start_command = _optional(deploy.get("startCommand"), str, f"{where}.deploy.startCommand")
    override = _object(deploy.get("limitOverride"), f"{where}.deploy.limitOverride")
    containers = f"{where}.deploy.limitOverride.containers"
    limits = _object(override.get("containers"), containers)
    change.cpu = _optional(limits.get("cpu"), (int, float), f"{containers}.cpu")
    change.memory_bytes = _optional(limits.get("memoryBytes"), int, f"{containers}.memoryBytes")
    variables = _object(config.get("variables"), f"{where}.variables")
    for name, entry in variables.items():
        if not _VARIABLE_NAME.match(name):
            raise _bad_input(f"Invalid variable name {name!r} in {where}.variables")
        if entry is None:
            change.variables[name] = None  # null deletes the variable
            continue
        value = entry.get("value") if isinstance(entry, dict) else None
        if not isinstance(value, str):
            raise _bad_input(f"Invalid environment config: {where}.variables.{name} needs a string 'value'")
        change.variables[name] = value
    return change


def _apply(instance: _Instance, change: _ServiceChange) -> None:
    if change.image is not None:
        instance.image = change.image
    if change.start_command is not None:
        instance.start_command = change.start_command
    if change.cpu is not None:
        instance.cpu = float(change.cpu)
    if change.memory_bytes is not None:
        instance.memory_bytes = change.memory_bytes
    for name, value in change.variables.items():
        if value is None:
            instance.variables.pop(name, None)
        else:
            instance.variables[name] = value


def _object(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _bad_input(f"Invalid environment config: {where} must be an object")
    return value


def _optional(value: Any, kind: type | tuple[type, ...], where: str) -> Any:
    """``value`` if it is None or of ``kind`` (a bool is not a number here)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, kind):
        raise _bad_input(f"Invalid environment config: {where} has the wrong type")
    return value
