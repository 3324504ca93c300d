"""A simulated AgentMail inbox API (``/inboxes``, ``/inboxes/{inbox_id}``), held in memory.

It serves the paths, status codes and payload shapes of ``specs/agentmail-inboxes.openapi.json``
(mounted under a base URL ending in ``/v0``, like ``https://api.agentmail.to/v0``), including
the two behaviours the driver's crash safety leans on:

* **Idempotent create.** A ``POST /inboxes`` whose ``client_id`` belongs to a live inbox answers
  200 with that *original* inbox, whatever else the body says (AgentMail's idempotency docs).
* **Taken usernames.** An address already held by an inbox with another (or no) ``client_id``
  answers 403 ``{"name": "IsTakenError", "code": "resource_taken", ...}``.

Inbox ids are email addresses (``username@domain``, lower-cased); a path may carry the ``@`` raw
or as ``%40``, both are decoded to the same id. Listing is newest first (``ascending=true``
flips it), at most ``page_size`` a page, with an opaque ``next_page_token`` that names the last
inbox returned, so inboxes created or deleted between pages neither repeat nor vanish. Every
domain counts as verified (the fake has no domain setup); omitted ones are ``default_domain``.

Requests need a bearer token (any non-empty one). Bad bodies answer 400 ValidationErrorResponse
``{name, errors: [{path, message}], ...}``; other errors use ErrorResponse ``{name, message,
code}``.

:attr:`FakeAgentMail.faults` is the shared fault layer (:mod:`providers.simulated.fault_layer`); its
operation names are :data:`OPERATIONS`: ``list_inboxes``, ``create_inbox``, ``get_inbox``,
``update_inbox``, ``delete_inbox``. With list lag, a new inbox is left out of ``GET /inboxes`` for
a while (an idempotent create replay and ``GET /inboxes/{id}`` still find it).
"""

from __future__ import annotations

import base64
import binascii
import json
import threading
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp

from providers.simulated._common import (
    BodyError,
    FakeRandom,
    envelope_handlers,
    error_response,
    iso_timestamp,
    missing_bearer,
    parse_body,
)
from providers.simulated.fault_layer import Faults, route_operations

OPERATIONS = ("list_inboxes", "create_inbox", "get_inbox", "update_inbox", "delete_inbox")
"""The fault layer's names for this fake's routes, in route order."""

CLIENT_ID_PATTERN = r"^[A-Za-z0-9._~-]{1,256}$"
USERNAME_PATTERN = r"^[A-Za-z0-9._+-]{1,64}$"
DOMAIN_PATTERN = r"^[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+$"

# (name, code) of the ErrorResponse for each status, after AgentMail's error reference.
_ERRORS = {
    400: ("ValidationError", "validation_error"),
    401: ("UnauthorizedError", "unauthorized"),
    403: ("ForbiddenError", "missing_permission"),
    404: ("NotFoundError", "not_found"),
    405: ("MethodNotAllowedError", "method_not_allowed"),
    409: ("AlreadyExistsError", "already_exists"),
    422: ("UnprocessableEntityError", "unprocessable_entity"),
    429: ("RateLimitError", "rate_limit_exceeded"),
}

_Text = Annotated[str, Field(max_length=256)]
_MetadataValue = _Text | float | bool


def error_body(status: int, message: str) -> dict[str, Any]:
    """AgentMail's ErrorResponse, or ValidationErrorResponse for a 400."""
    name, code = _ERRORS.get(status, ("ServerError", "internal_error"))
    body: dict[str, Any] = {"name": name, "message": message, "code": code}
    if status == 400:
        body["errors"] = [{"path": "", "message": message}]
    return body


def _validation_error(exc: BodyError) -> Response:
    body = error_body(400, "Request body is invalid")
    body["errors"] = [{"path": path, "message": message} for path, message in exc.problems]
    return error_response(400, body)


class _CreateInbox(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")

    username: str | None = Field(default=None, pattern=USERNAME_PATTERN)
    domain: str | None = Field(default=None, pattern=DOMAIN_PATTERN)
    display_name: str | None = None
    client_id: str | None = Field(default=None, pattern=CLIENT_ID_PATTERN)
    metadata: dict[_Text, _MetadataValue] | None = Field(default=None, max_length=256)


class _UpdateInbox(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")

    display_name: str | None = None
    metadata: dict[_Text, _MetadataValue | None] | None = Field(default=None, max_length=256)


class FakeAgentMail:
    """In-memory AgentMail inboxes of one organisation (one pod)."""

    def __init__(
        self, seed: int | None = None, page_size: int = 50, default_domain: str = "agentmail.to"
    ) -> None:
        if page_size < 1:
            raise ValueError("page_size must be at least 1")
        self.page_size = page_size
        self.default_domain = default_domain.lower()
        self.faults = Faults("agentmail", error_body, seed=seed)
        self._random = FakeRandom(seed)
        self._lock = threading.Lock()
        self._inboxes: dict[str, dict[str, Any]] = {}  # by inbox_id
        self._serial: dict[str, int] = {}  # inbox_id -> creation order, for stable paging
        self._next_serial = 0
        self._pod_id = self._random.uuid()

    def asgi(self) -> ASGIApp:
        routes = [
            Route("/inboxes", self._list_inboxes, methods=["GET"], name="list_inboxes"),
            Route("/inboxes", self._create_inbox, methods=["POST"], name="create_inbox"),
            Route("/inboxes/{inbox_id}", self._get_inbox, methods=["GET"], name="get_inbox"),
            Route("/inboxes/{inbox_id}", self._update_inbox, methods=["PATCH"], name="update_inbox"),
            Route("/inboxes/{inbox_id}", self._delete_inbox, methods=["DELETE"], name="delete_inbox"),
        ]
        app = Starlette(routes=routes, exception_handlers=envelope_handlers(error_body))
        return self.faults.wrap(app, route_operations(routes))

    def snapshot(self, *, reveal_secrets: bool = True) -> dict[str, list[dict[str, Any]]]:
        """Every inbox held, with the fields an operator checks (never a secret; ``reveal_secrets``
        changes nothing)."""
        with self._lock:
            inboxes = [
                {
                    "id": inbox_id,
                    "name": inbox.get("client_id"),
                    "email": inbox["email"],
                    "display_name": inbox.get("display_name"),
                }
                for inbox_id, inbox in self._inboxes.items()
            ]
        return {"inboxes": inboxes}

    def reset(self) -> None:
        """Forget every inbox, queued failure and logged request (the fault plan stays)."""
        with self._lock:
            self._inboxes.clear()
            self._serial.clear()
        self.faults.reset()

    async def _list_inboxes(self, request: Request) -> Response:
        if denied := missing_bearer(request, error_body):
            return denied
        query = request.query_params
        try:
            limit = min(_integer(query.get("limit"), self.page_size), self.page_size)
            ascending = _boolean(query.get("ascending", "false"))
            after = _read_token(query["page_token"], ascending) if query.get("page_token") else None
        except ValueError as exc:
            return error_response(400, error_body(400, str(exc)))
        if limit < 1:
            return error_response(400, error_body(400, "limit must be at least 1"))
        with self._lock:
            listed = [i for i in self._inboxes if self.faults.is_listed(i)]
            ordered = sorted(listed, key=self._serial.__getitem__, reverse=not ascending)
            if after is not None:
                ordered = [i for i in ordered if _beyond(self._serial[i], after, ascending)]
            page = [dict(self._inboxes[i]) for i in ordered[:limit]]
            more = len(ordered) > limit
            last = self._serial[ordered[limit - 1]] if more else None
        answer: dict[str, Any] = {"count": len(page), "limit": limit, "inboxes": page}
        if last is not None:
            answer["next_page_token"] = _make_token(last, ascending)
        return JSONResponse(answer)

    async def _create_inbox(self, request: Request) -> Response:
        if denied := missing_bearer(request, error_body):
            return denied
        try:
            body = await parse_body(request, _CreateInbox, required=False)
        except BodyError as exc:
            return _validation_error(exc)
        username = (body.username or self._random.token(12, "abcdefghijklmnopqrstuvwxyz0123456789")).lower()
        email = f"{username}@{(body.domain or self.default_domain).lower()}"
        now = iso_timestamp()
        with self._lock:
            owned = [i for i in self._inboxes.values() if i.get("client_id") == body.client_id]
            if body.client_id and owned:  # an idempotent replay: the original inbox, unchanged
                return JSONResponse(dict(owned[0]))
            if email in self._inboxes:
                taken = {"name": "IsTakenError", "message": f"Inbox {email} is taken"}
                return error_response(403, {**taken, "code": "resource_taken"})
            inbox: dict[str, Any] = {
                "pod_id": self._pod_id,
                "inbox_id": email,
                "email": email,
                "updated_at": now,
                "created_at": now,
            }
            # Optional fields are left out rather than sent as null (the spec's nullable sits
            # beside a $ref, which OpenAPI 3.0 ignores, so null would break the contract).
            optional = body.model_dump(include={"display_name", "client_id", "metadata"})
            inbox.update({name: value for name, value in optional.items() if value})
            self._inboxes[email] = inbox
            self._serial[email] = self._next_serial
            self._next_serial += 1
            self.faults.created("create_inbox", email)
            return JSONResponse(dict(inbox))

    async def _get_inbox(self, request: Request) -> Response:
        if denied := missing_bearer(request, error_body):
            return denied
        with self._lock:
            inbox = self._inboxes.get(_inbox_id(request))
            data = None if inbox is None else dict(inbox)
        return _not_found() if data is None else JSONResponse(data)

    async def _update_inbox(self, request: Request) -> Response:
        if denied := missing_bearer(request, error_body):
            return denied
        try:
            body = await parse_body(request, _UpdateInbox)
        except BodyError as exc:
            return _validation_error(exc)
        given = body.model_fields_set
        if not given & {"display_name", "metadata"}:
            return _validation_error(BodyError([("", "provide at least one of display_name or metadata")]))
        if body.metadata == {}:
            return _validation_error(BodyError([("metadata", "empty object; send null to clear")]))
        with self._lock:
            inbox = self._inboxes.get(_inbox_id(request))
            if inbox is None:
                return _not_found()
            if "display_name" in given:
                inbox["display_name"] = body.display_name
            if "metadata" in given:
                inbox["metadata"] = _merge_metadata(inbox.get("metadata"), body.metadata)
            for emptied in [name for name in ("display_name", "metadata") if not inbox.get(name)]:
                inbox.pop(emptied, None)
            inbox["updated_at"] = iso_timestamp()
            return JSONResponse(dict(inbox))

    async def _delete_inbox(self, request: Request) -> Response:
        if denied := missing_bearer(request, error_body):
            return denied
        inbox_id = _inbox_id(request)
        with self._lock:
            removed = self._inboxes.pop(inbox_id, None)
            self._serial.pop(inbox_id, None)
        return _not_found() if removed is None else Response(status_code=204)


def _inbox_id(request: Request) -> str:
    # Starlette hands over the percent-decoded path, so "a@x.to" and "a%40x.to" are the same id.
    return str(request.path_params["inbox_id"]).lower()


def _merge_metadata(
    current: dict[str, Any] | None, update: dict[str, _MetadataValue | None] | None
) -> dict[str, Any]:
    """Metadata after an update: null clears it all, a null value removes one key."""
    if update is None:
        return {}
    merged = dict(current or {})
    for key, value in update.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = value
    return merged


def _integer(value: str | None, default: int) -> int:
    try:
        return default if value is None else int(value)
    except ValueError:
        raise ValueError(f"not an integer: {value!r}") from None


def _boolean(value: str) -> bool:
    if value.lower() in ("true", "1"):
        return True
    if value.lower() in ("false", "0"):
        return False
    raise ValueError(f"not a boolean: {value!r}")


def _beyond(serial: int, after: int, ascending: bool) -> bool:
    """Whether the inbox numbered ``serial`` comes after the one numbered ``after`` in this order."""
    return serial > after if ascending else serial < after


def _make_token(serial: int, ascending: bool) -> str:
    raw = json.dumps({"after": serial, "asc": ascending}).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _read_token(token: str, ascending: bool) -> int:
    """The serial a page token continues after; it must come from a listing in the same order."""
    try:
        decoded = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        serial, token_ascending = decoded["after"], decoded["asc"]
    except (ValueError, binascii.Error, KeyError, TypeError):
        raise ValueError("page_token is invalid") from None
    if not isinstance(serial, int) or token_ascending is not ascending:
        raise ValueError("page_token is invalid")
    return serial


def _not_found() -> Response:
    return error_response(404, error_body(404, "Inbox not found"))
