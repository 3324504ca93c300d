"""The seed Services API's routes (``seeds/services-api.md``), as desired-state writes.

Every route, path and body shape of the API this one replaced is kept, so an existing caller
keeps working, but no route talks to a provider: a write changes the desired row through
:mod:`desired_state.store` and waits for the loop (:mod:`desired_state.http.waiting`); a read
(``status/batch``) reads what the loop recorded. Every write is one statement (or a row-locked
read-modify-write for merges), validated before it is made, so bad input is a 400 naming the
field and never a half-written row.

``status/batch``, the pool's hot path, is one ordered scan of ``instance_infra`` turned into JSON
by a string template (about 40 ms end to end for 10,000 instances).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from json.encoder import encode_basestring
from typing import Annotated, Any

from fastapi import APIRouter, Body, Request
from fastapi.responses import Response
from psycopg.rows import dict_row

from desired_state import queries, store
from desired_state.http.body import StrictJsonRoute, strict_json_route
from desired_state.http.errors import ApiError, bad_input, documented_errors
from desired_state.http.schemas import (
    MAX_STATUS_IDS,
    AcceptedResponse,
    ConfigureRequest,
    CreateInstanceRequest,
    CreateInstanceResponse,
    DestroyedFlags,
    DestroyResponse,
    DestroyToolResponse,
    InstanceIdPath,
    OkResponse,
    ProvisionRequest,
    ProvisionResponse,
    RedeployRequest,
    RegistryResponse,
    RegistryTool,
    ResourcePath,
    ResourceRef,
    StatusBatchRequest,
    StatusBatchResponse,
    ToolPath,
)
from desired_state.http.state import AUTHENTICATED, ApiState
from desired_state.models import INSTANCE_ID_PATTERN, InstanceSpec, SpecError, parse_instance
from desired_state.vocabulary import TOOL_CATALOGUE, TOOLS, RailwayKind, Tool, derived_name

log = logging.getLogger(__name__)

ACCEPTED: dict[int | str, dict[str, Any]] = {
    202: {
        "model": AcceptedResponse,
        "description": "Accepted: still converging (Prefer: respond-async, or the wait ran out).",
    }
}
WRITE_ERRORS = {**ACCEPTED, **documented_errors(404, 409, 413, 415, 502)}


def _json_string(value: str | None) -> str:
    return "null" if value is None else encode_basestring(value)


def _domain(url: str | None) -> str | None:
    """The seed's ``domain``: the URL's host, without scheme or path."""
    if url is None:
        return None
    scheme_end = url.find("://")
    return (url[scheme_end + 3 :] if scheme_end >= 0 else url).split("/", 1)[0]


def status_batch_json(
    rows: list[tuple[Any, ...]], project_id: str | None, prefix: str, environment_id: str | None
) -> bytes:
    """The ``status/batch`` document, assembled from string pieces.

    This is the pool manager's hot path (every tick, the whole fleet): for 10,000 rows a
    template with the C string escaper takes ~13 ms, a third of building dicts for ``json.dumps``
    or of Postgres's own JSON functions. The shape is :class:`StatusBatchResponse`.
    """
    services = []
    for instance_id, service_id, deploy_status, url, image, env_id in rows:
        if env_id == "unknown" and environment_id is not None:
            env_id = environment_id
        services.append(
            f'{{"instanceId":{encode_basestring(instance_id)},"serviceId":{encode_basestring(service_id)},'
            f'"name":{encode_basestring(derived_name(prefix, instance_id))},'
            f'"deployStatus":{_json_string(deploy_status)},'
            f'"domain":{_json_string(_domain(url))},"image":{_json_string(image)},'
            f'"environmentIds":[{encode_basestring(env_id)}]}}'
        )
    return f'{{"projectId":{_json_string(project_id)},"services":[{",".join(services)}]}}'.encode()


def _env_to_variables(problems: list[str]) -> list[str]:
    """Messages about the merged spec's ``env`` name the field the caller sent: ``variables``."""
    return ["variables" + p.removeprefix("env") if p.startswith("env") else p for p in problems]


def router(state: ApiState) -> APIRouter:
    """The seed's routes on ``state``."""
    routes = APIRouter(route_class=StrictJsonRoute, **AUTHENTICATED)
    config, database, convergence = state.config, state.database, state.convergence

    async def create_answer(instance_id: str) -> CreateInstanceResponse:
        async with database.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(queries.SELECT_CREATE_ANSWER, {"instance_id": instance_id})
            row = await cur.fetchone()
        if row is None:  # Ready, yet the seed row is missing: answer what is known
            return CreateInstanceResponse(instanceId=instance_id, serviceId=None, url=None, services={})
        return CreateInstanceResponse(
            instanceId=instance_id,
            serviceId=row["provider_service_id"],
            url=row["url"],
            services={tool: ResourceRef(resourceId=ref["resourceId"]) for tool, ref in row["services"].items()},
        )

    async def tool_service(instance_id: str, tool: Tool) -> dict[str, Any] | None:
        async with database.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(queries.SELECT_TOOL_SERVICE, {"instance_id": instance_id, "tool_id": tool.value})
            return await cur.fetchone()

    async def modify(instance_id: str, change: Callable[[InstanceSpec], InstanceSpec]) -> store.ModifyResult:
        """A compare-and-set change of one spec, with the store's outcomes mapped to answers."""
        try:
            async with database.connection() as conn:
                return await store.modify(conn, instance_id, change)
        except store.InstanceNotFound:
            raise ApiError(404, f"instance {instance_id} not found") from None
        except store.InstanceDeleting:
            raise ApiError(409, f"instance {instance_id} is being destroyed") from None
        except store.StoredSpecInvalid as exc:
            raise ApiError(409, f"instance {instance_id} has an invalid stored spec: {exc}") from None
        except store.ConcurrentUpdate:
            raise ApiError(409, f"instance {instance_id} is being changed concurrently; retry") from None
        except SpecError as exc:
            # The change itself is fine but the spec it would make is not (a redeploy counter
            # at its maximum): a conflict with the instance's state, not bad input.
            raise ApiError(409, f"instance {instance_id} cannot take this change: {exc}") from None

    @routes.get("/registry", response_model=RegistryResponse, tags=["meta"])
    async def registry() -> RegistryResponse:
        """The tools an instance can have, their variables, and whether each is configured here."""
        return RegistryResponse(
            tools=[
                RegistryTool(
                    id=info.tool.value,
                    name=info.name,
                    mode=info.mode,
                    envKeys=list(info.env_keys),
                    available=info.tool.value in config.tools_enabled,
                )
                for info in TOOL_CATALOGUE
            ]
        )

    @routes.post(
        "/create-instance",
        response_model=CreateInstanceResponse,
        responses={**ACCEPTED, **documented_errors(409, 413, 415, 502)},
        tags=["instances"],
    )
    async def create_instance(request: Request, body: Annotated[CreateInstanceRequest, Body()]) -> Response:
        """Write the desired instance, wait until it is Ready, answer with its ids.

        Repeating a create with the same id and spec is idempotent (same answer); the same id with
        a different spec is a 409.
        """
        spec = body.spec()
        state.require_available(spec.tools, "tools")
        async with database.connection() as conn:
            result = await store.create(conn, spec)
        if result.outcome is store.CreateOutcome.CONFLICT:
            raise ApiError(409, f"instance {spec.instance_id} already exists with a different spec")
        if result.outcome is store.CreateOutcome.DELETING:
            raise ApiError(409, f"instance {spec.instance_id} is being destroyed; create it again once it is gone")
        log.info("create-instance %s: %s (generation %d)", spec.instance_id, result.outcome, result.generation)
        return await convergence.answer(
            request, spec.instance_id, result.generation, lambda: create_answer(spec.instance_id)
        )

    @routes.delete(
        "/destroy/{instanceId}",
        response_model=DestroyResponse,
        responses={**ACCEPTED, **documented_errors(404, 502)},
        tags=["instances"],
    )
    async def destroy(request: Request, instance_id: InstanceIdPath) -> Response:
        """Mark the instance absent and wait until every resource is gone and the row with them.

        The flags say what the teardown deleted (a delete the reconciler recorded as done since
        this request), not what might have existed: a resource that never landed is not reported.
        """
        async with database.connection() as conn, conn.transaction():
            # One the replaced system made (only instance_infra knows it) is imported for teardown.
            await store.adopt_for_teardown(conn, [instance_id], config.name_prefix)
            async with conn.cursor() as cur:
                await cur.execute(queries.SELECT_NOW)
                since = (await cur.fetchone() or (None,))[0]
            found = await store.mark_absent(conn, [instance_id])
        if not found:
            raise ApiError(404, f"instance {instance_id} not found")
        log.info("destroy %s: marked absent", instance_id)

        async def render() -> DestroyResponse:
            async with database.connection() as conn, conn.cursor() as cur:
                await cur.execute(queries.SELECT_DESTROYED_KINDS, {"instance_id": instance_id, "since": since})
                kinds = {row[0] for row in await cur.fetchall()}
            return DestroyResponse(
                instanceId=instance_id,
                destroyed=DestroyedFlags(
                    openrouter=TOOLS[Tool.OPENROUTER].kind in kinds,
                    agentmail=TOOLS[Tool.AGENTMAIL].kind in kinds,
                    telnyx=TOOLS[Tool.TELNYX].kind in kinds,
                    volumes=RailwayKind.VOLUME in kinds,
                    service=RailwayKind.SERVICE in kinds,
                ),
            )

        return await convergence.answer(request, instance_id, None, render)

    async def status_batch(body: Annotated[StatusBatchRequest | None, Body()] = None) -> Response:
        """Deploy status of every (or the listed) instance, from our tables: zero provider calls."""
        wanted = None if body is None else body.instanceIds
        ids = [] if wanted is None else [i for i in wanted if INSTANCE_ID_PATTERN.fullmatch(i)]
        async with database.connection() as conn, conn.cursor() as cur:
            await cur.execute(queries.STATUS_BATCH, {"all": wanted is None, "ids": ids})
            rows = await cur.fetchall()
        document = status_batch_json(rows, config.project_id, config.name_prefix, config.environment_id)
        return Response(document, media_type="application/json")

    # A list of up to 100,000 ids is a legitimate body here, so this route's value bound is larger.
    routes.add_api_route(
        "/status/batch",
        status_batch,
        methods=["POST"],
        response_model=StatusBatchResponse,
        responses=documented_errors(413, 415),
        tags=["status"],
        route_class_override=strict_json_route(MAX_STATUS_IDS + 2),
    )

    @routes.post("/configure/{instanceId}", response_model=OkResponse, responses=WRITE_ERRORS, tags=["instances"])
    async def configure(
        request: Request, instance_id: InstanceIdPath, body: Annotated[ConfigureRequest, Body()]
    ) -> Response:
        """Merge variables into the instance's env (``redeploy: true`` also forces a fresh deploy)."""

        def change(spec: InstanceSpec) -> InstanceSpec:
            document = spec.model_dump(by_alias=True)
            document["env"] = {**spec.env, **body.variables}
            if body.redeploy:
                document["redeploy"] = spec.redeploy + 1
            try:
                return parse_instance(document)
            except SpecError as exc:
                raise bad_input(_env_to_variables(exc.problems)) from None

        result = await modify(instance_id, change)
        log.info("configure %s: generation %d", instance_id, result.generation)

        async def render() -> OkResponse:
            return OkResponse(instanceId=instance_id, ok=True)

        return await convergence.answer(request, instance_id, result.generation, render)

    @routes.post("/redeploy/{instanceId}", response_model=OkResponse, responses=WRITE_ERRORS, tags=["instances"])
    async def redeploy(
        request: Request, instance_id: InstanceIdPath, body: Annotated[RedeployRequest | None, Body()] = None
    ) -> Response:
        """Bump the redeploy generation: the loop deploys the same spec again."""

        def change(spec: InstanceSpec) -> InstanceSpec:
            return parse_instance({**spec.model_dump(by_alias=True), "redeploy": spec.redeploy + 1})

        result = await modify(instance_id, change)
        log.info("redeploy %s: generation %d", instance_id, result.generation)

        async def render() -> OkResponse:
            return OkResponse(instanceId=instance_id, ok=True)

        return await convergence.answer(request, instance_id, result.generation, render)

    @routes.post(
        "/provision/{instanceId}/{toolId}", response_model=ProvisionResponse, responses=WRITE_ERRORS, tags=["tools"]
    )
    async def provision(
        request: Request,
        instance_id: InstanceIdPath,
        tool: ToolPath,
        body: Annotated[ProvisionRequest | None, Body()] = None,
    ) -> Response:
        """Add one tool to the instance and wait until its resource exists and the instance is Ready."""
        limit = body.config.limit if body is not None and body.config is not None else None
        if limit is not None and tool is not Tool.OPENROUTER:
            raise bad_input(["config.limit: only applies to openrouter"])
        state.require_available([tool], "toolId")

        def change(spec: InstanceSpec) -> InstanceSpec:
            if tool in spec.tools:
                raise ApiError(409, f"{tool.value} is already provisioned on instance {instance_id}")
            document = spec.model_dump(by_alias=True)
            document["tools"] = [*spec.tools, tool]
            if limit is not None:
                document["openrouterLimit"] = limit
            return parse_instance(document)

        result = await modify(instance_id, change)
        log.info("provision %s/%s: generation %d", instance_id, tool.value, result.generation)

        async def provisioned() -> bool:
            return await tool_service(instance_id, tool) is not None

        async def render() -> ProvisionResponse:
            row = await tool_service(instance_id, tool)
            if row is None:  # removed again between the wait and this read
                raise ApiError(409, f"{tool.value} of instance {instance_id} was removed meanwhile")
            return ProvisionResponse(
                toolId=tool.value, resourceId=row["resource_id"], envKey=row["env_key"], status=row["status"]
            )

        return await convergence.answer(request, instance_id, result.generation, render, extra=provisioned)

    @routes.delete(
        "/destroy/{instanceId}/{toolId}/{resourceId}",
        response_model=DestroyToolResponse,
        responses={**ACCEPTED, **documented_errors(404, 409, 502)},
        tags=["tools"],
    )
    async def destroy_tool(
        request: Request, instance_id: InstanceIdPath, tool: ToolPath, resource_id: ResourcePath
    ) -> Response:
        """Remove one tool from the instance; its resource is deleted at the provider by the loop."""
        async with database.connection() as conn, conn.cursor() as cur:
            await cur.execute(
                queries.SELECT_TOOL_RESOURCE_IDS,
                {"instance_id": instance_id, "tool_id": tool.value, "kind": TOOLS[tool].kind},
            )
            known = {row[0] for row in await cur.fetchall()}
        if resource_id not in known:
            raise ApiError(404, f"instance {instance_id} has no {tool.value} resource {resource_id}")

        def change(spec: InstanceSpec) -> InstanceSpec:
            if tool not in spec.tools:
                raise ApiError(404, f"instance {instance_id} has no {tool.value}")
            return parse_instance({**spec.model_dump(by_alias=True), "tools": [t for t in spec.tools if t != tool]})

        result = await modify(instance_id, change)
        log.info("destroy %s/%s: generation %d", instance_id, tool.value, result.generation)

        async def removed() -> bool:
            return await tool_service(instance_id, tool) is None

        async def render() -> DestroyToolResponse:
            return DestroyToolResponse(toolId=tool.value, resourceId=resource_id, deleted=True)

        return await convergence.answer(request, instance_id, result.generation, render, extra=removed)

    return routes
