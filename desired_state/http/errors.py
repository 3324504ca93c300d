"""Every answer other than success: the seed's ``{"error": message}``, bounded, and what maps to it.

A 400 names each bad field (``field: rule``) and never echoes much of the input: at most
:data:`MAX_PROBLEMS` problems are listed, then a count of the rest, and each is cut to
:data:`MAX_PROBLEM_CHARS` characters, so a hostile body cannot make a large error body (issue 11:
a list of 1.6 million bad tools once answered with 223 MB). A lost database is a 503 with
``Retry-After``; anything unexpected a 500 that says nothing internal.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import psycopg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from psycopg_pool import PoolTimeout
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)

MAX_PROBLEMS = 10
MAX_PROBLEM_CHARS = 300
DATABASE_RETRY_AFTER_SECONDS = 5
DATABASE_UNAVAILABLE = "database unavailable; retry shortly"


class ErrorResponse(BaseModel):
    error: str
    details: list[str] | None = None


class ApiError(StarletteHTTPException):
    """An answer other than success: status code, one-line message, optional details.

    A Starlette ``HTTPException`` so that FastAPI lets it through untouched when it is raised
    while a body is read or decoded (anything else raised there becomes a vague 400).
    """

    def __init__(
        self, status: int, message: str, details: list[str] | None = None, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(status, message, dict(headers) if headers else None)
        self.status = status
        self.message = message
        self.details = details


class DatabaseUnavailable(Exception):
    """No database connection within the configured time: answered 503 with ``Retry-After``."""


def _cut(problem: str) -> str:
    return problem if len(problem) <= MAX_PROBLEM_CHARS else problem[: MAX_PROBLEM_CHARS - 3] + "..."


def bad_input(problems: Iterable[str], status: int = 400) -> ApiError:
    """A 400 (or ``status``) naming the first problems and counting the rest."""
    shown: list[str] = []
    more = 0
    for problem in problems:
        if len(shown) < MAX_PROBLEMS:
            shown.append(_cut(problem))
        else:
            more += 1
    if more:
        shown.append(f"... and {more} more problem{'s' if more > 1 else ''}")
    return ApiError(status, "; ".join(shown), details=shown if len(shown) > 1 else None)


def error_response(
    status: int, message: str, details: list[str] | None = None, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    body: dict[str, Any] = {"error": message}
    if details:
        body["details"] = details
    return JSONResponse(body, status_code=status, headers=dict(headers) if headers else None)


def validation_problems(errors: Iterable[Mapping[str, Any]]) -> Iterable[str]:
    """pydantic's errors as ``field: rule`` lines, without the input values (the models' wording:
    ``desired_state.models.describe_validation_error``, over the dicts FastAPI hands over)."""
    for item in errors:
        loc = [str(part) for part in item.get("loc", ())]
        if loc and loc[0] in ("path", "query", "body", "header"):
            loc = loc[1:]
        message = str(item.get("msg", "is not valid")).removeprefix("Value error, ")
        if item.get("type") == "extra_forbidden":
            message = "is not a known field"
        yield f"{'.'.join(loc) or 'body'}: {message}"


def install_error_handlers(app: FastAPI, on_database_error: Callable[[], None] | None = None) -> None:
    """Every error is the seed's ``{"error": message}``; nothing internal leaks."""

    async def api_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return error_response(exc.status, exc.message, exc.details, exc.headers)

    async def validation_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        error = bad_input(validation_problems(exc.errors()))
        return error_response(error.status, error.message, error.details)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        return error_response(exc.status_code, str(exc.detail), headers=exc.headers)

    async def database_error(request: Request, exc: Exception) -> Response:
        log.error("database unavailable on %s %s: %s", request.method, request.url.path, type(exc).__name__)
        if on_database_error is not None:
            on_database_error()
        return error_response(503, DATABASE_UNAVAILABLE, headers={"Retry-After": str(DATABASE_RETRY_AFTER_SECONDS)})

    async def unexpected(request: Request, exc: Exception) -> Response:
        log.error("unexpected error on %s %s: %s", request.method, request.url.path, type(exc).__name__)
        return error_response(500, "internal error")

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    for database_failure in (psycopg.OperationalError, psycopg.InterfaceError, PoolTimeout, DatabaseUnavailable):
        app.add_exception_handler(database_failure, database_error)
    app.add_exception_handler(Exception, unexpected)


def documented_errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for these statuses, all :class:`ErrorResponse`."""
    descriptions = {
        400: "Bad input: the message names the field.",
        401: "Missing or wrong bearer token.",
        404: "Unknown instance (or resource).",
        409: "Conflicts with the instance's current state.",
        413: "Body too large.",
        415: "Body is not JSON.",
        502: "The instance failed to converge (the message says why).",
        503: "The database is unavailable; retry after Retry-After seconds.",
    }
    return {status: {"model": ErrorResponse, "description": descriptions[status]} for status in statuses}
