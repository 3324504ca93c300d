"""Railway's wire contract for the simulated Railway: its schema, its operation names, its errors.

* :func:`load_schema` - the complete public schema (``specs/railway.schema.graphql``, 609
  types), built and checked once per process; :func:`operations`, every root field of it (the
  names the fault layer gives requests, :func:`operation_of`).
* Errors as production showed them: :class:`RailwayAPIError` is a failure reported in
  ``errors[]`` of an HTTP 200 with an ``extensions.code`` (:func:`not_found`,
  :func:`bad_input`, :func:`not_authorized`); :func:`http_error` is a request refused before
  anything ran (401, 400); :func:`error_body` is the envelope of an injected failure and
  :func:`too_quickly` the answer over a ``volumeCreate`` rate limit.

No state here: :mod:`providers.simulated.railway_state` holds the world and
:mod:`providers.simulated.railway` resolves the schema's root fields over it.
"""

from __future__ import annotations

import json
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

from graphql import (
    DocumentNode,
    FieldNode,
    GraphQLError,
    GraphQLSchema,
    OperationDefinitionNode,
    build_schema,
    parse,
    validate_schema,
)
from starlette.responses import JSONResponse, Response
from starlette.types import Scope

from providers.simulated.fault_plan import UNKNOWN

SCHEMA_PATH = Path(__file__).parent / "specs" / "railway.schema.graphql"
TOO_QUICKLY = "You are creating volumes too quickly. Please wait a moment and try again."
NOT_AUTHORIZED = "Not Authorized"


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


def not_found(what: str) -> RailwayAPIError:
    return RailwayAPIError(f"{what} not found", "NOT_FOUND")


def bad_input(message: str) -> RailwayAPIError:
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
    fields = root_fields(document, operation_name)
    return fields[0] if fields and fields[0] in operations() else UNKNOWN


def too_quickly(operation: str, retry_after: float) -> Response | None:
    """Over a ``volumeCreate`` rate limit, Railway answered a 200 with this error and no Retry-After."""
    if operation != "volumeCreate":
        return None
    error = {"message": TOO_QUICKLY, "path": [operation], "extensions": {"code": "INTERNAL_SERVER_ERROR"}}
    return JSONResponse({"data": None, "errors": [error]})


def not_authorized() -> RailwayAPIError:
    """What Railway answers when the token may not reach what was asked (HTTP 200, ``errors[]``)."""
    return RailwayAPIError(NOT_AUTHORIZED, "FORBIDDEN")


def bearer(header: str) -> str:
    """The token of an ``Authorization: Bearer <token>`` header, or ``""``."""
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def http_error(status: int, message: str, code: str) -> JSONResponse:
    """An error answer in Railway's envelope: ``{"errors": [{"message", "extensions": {"code"}}]}``."""
    return JSONResponse({"errors": [{"message": message, "extensions": {"code": code}}]}, status)


def formatted(error: GraphQLError, default_code: str = "INTERNAL_SERVER_ERROR") -> dict[str, Any]:
    """A GraphQL error as Railway prints it, with the ``extensions.code`` of a :class:`RailwayAPIError`."""
    original = error.original_error
    code = original.code if isinstance(original, RailwayAPIError) else default_code
    answer: dict[str, Any] = dict(error.formatted)
    answer["extensions"] = {**(error.extensions or {}), "code": code}
    return answer


def root_fields(document: DocumentNode, operation_name: str | None) -> list[str]:
    """Names of the root fields of the operation that will run, in document order."""
    for definition in document.definitions:
        if isinstance(definition, OperationDefinitionNode) and (
            operation_name is None or (definition.name and definition.name.value == operation_name)
        ):
            return [s.name.value for s in definition.selection_set.selections if isinstance(s, FieldNode)]
    return []
