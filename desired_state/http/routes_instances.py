"""``/instances``: what the loop recorded about each instance, read from our tables.

``GET /instances/{id}`` serves the instance read model (:mod:`desired_state.read_model`, the same
JSON ``reconciler status --json`` prints); ``GET /instances`` lists instances in id order, filtered,
a page at a time, with an opaque cursor (keyset pagination on the primary key).
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import Response
from psycopg.rows import dict_row

from desired_state import queries
from desired_state.http.body import StrictJsonRoute
from desired_state.http.errors import ApiError, bad_input, documented_errors
from desired_state.http.schemas import InstanceIdPath, InstanceList, InstanceSummary
from desired_state.http.state import AUTHENTICATED, ApiState
from desired_state.http.waiting import json_answer
from desired_state.models import INSTANCE_ID_PATTERN
from desired_state.read_model import InstanceView, read_instance, spec_view
from desired_state.vocabulary import Phase, Tool

NOT_A_CURSOR = "cursor: is not a cursor this API issued"


def encode_cursor(instance_id: str) -> str:
    return base64.urlsafe_b64encode(json.dumps({"after": instance_id}).encode()).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> str:
    if not cursor:
        return ""
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        after = json.loads(base64.urlsafe_b64decode(padded.encode()))["after"]
    except (ValueError, KeyError, TypeError, binascii.Error, UnicodeError):
        raise bad_input([NOT_A_CURSOR]) from None
    if not isinstance(after, str) or not INSTANCE_ID_PATTERN.fullmatch(after):
        raise bad_input([NOT_A_CURSOR])
    return after


def router(state: ApiState) -> APIRouter:
    routes = APIRouter(route_class=StrictJsonRoute, tags=["status"], **AUTHENTICATED)
    database = state.database

    @routes.get("/instances/{instanceId}", response_model=InstanceView, responses=documented_errors(404))
    async def get_instance(instance_id: InstanceIdPath) -> Response:
        """Spec, generations, phase, conditions, resources and recent events of one instance."""
        async with database.connection() as conn:
            view = await read_instance(conn, instance_id, events=state.config.events_limit)
        if view is None:
            raise ApiError(404, f"instance {instance_id} not found")
        return json_answer(view)

    @routes.get("/instances", response_model=InstanceList)
    async def list_instances(
        phase: Annotated[Phase | None, Query(description="Only instances in this phase.")] = None,
        tool: Annotated[Tool | None, Query(description="Only instances with this tool.")] = None,
        present: Annotated[bool | None, Query(description="false: only those being destroyed.")] = None,
        limit: Annotated[int, Query(ge=1, le=1000, description="Page size.")] = 100,
        cursor: Annotated[str | None, Query(max_length=200, description="From the previous page.")] = None,
    ) -> Response:
        """Instances in id order, filtered, one page at a time."""
        params = {
            "after": decode_cursor(cursor),
            "phase": phase.value if phase else None,
            "tool": tool.value if tool else None,
            "present": present,
            "limit": limit + 1,
        }
        async with database.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(queries.LIST_INSTANCES, params)
            rows = await cur.fetchall()
        page = rows[:limit]
        items = [
            InstanceSummary(
                instanceId=r["instance_id"],
                name=r["name"],
                present=r["present"],
                tools=spec_view(r["spec"]).tools,
                generation=r["generation"],
                observedGeneration=r["observed_generation"],
                phase=r["phase"],
                lastError=r["last_error"],
                updatedAt=r["updated_at"],
            )
            for r in page
        ]
        next_cursor = encode_cursor(page[-1]["instance_id"]) if len(rows) > limit else None
        return json_answer(InstanceList(items=items, nextCursor=next_cursor))

    return routes
