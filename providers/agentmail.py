"""AgentMail inboxes, one per instance, managed through the ``/v0/inboxes`` REST API.

Each agent instance gets its own email inbox. The driver speaks these endpoints (an ``am_`` API
key in the ``Authorization`` header, base URL ending in ``/v0``)::

    POST   /inboxes              {username, domain?, display_name, client_id} -> 200 Inbox
    GET    /inboxes?limit&page_token  -> {count, inboxes, next_page_token?}  newest first
    GET    /inboxes/{inbox_id}   -> Inbox
    PATCH  /inboxes/{inbox_id}   {display_name}  -> Inbox
    DELETE /inboxes/{inbox_id}   -> empty 2xx (204)

**Crash safety comes from AgentMail itself.** ``client_id`` is AgentMail's idempotency key: a
create repeated with the same ``client_id`` answers 200 with the *original* inbox instead of a
duplicate. We send the derived name as ``client_id`` (exactly, so lookups and the garbage
collector find our inboxes by it), so a create that crashed after the provider acted is simply
repeated. The one case left is a username already taken (403 ``resource_taken`` / 409
``already_exists``): then we list our inboxes, and if one carries our ``client_id`` it is ours
and is returned; otherwise somebody else holds the address, which retrying cannot change:
:class:`~providers.base.NameTaken`, a terminal error that names the address.

**Usernames are case-insensitive at AgentMail** (an address is lower-cased), while instance ids
are not: ``concA`` and ``conca`` would both ask for ``convos-agent-conca``. So the username is
:func:`inbox_username` of the derived name: the name itself when it is lower-case (what every
inbox made before this rule has, so nothing existing changes), else the lower-cased name, a dot
and a digest of the exact name. Instance ids have no dots, so such a username can never be
another instance's. An inbox made under the old rule for a mixed-case id still carries its exact
``client_id``, so it is still found and adopted.

The inbox id *is* the email address. Like the official SDK we put it in the path with a raw
``@`` (httpx leaves ``@`` alone in a path); anything else unsafe in it is percent-encoded.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Mapping
from typing import Any
from urllib.parse import quote

from providers.base import ConfigError, Conflict, DesiredResource, NameTaken, Observed, ResourceKind, Transient
from providers.http import ProviderHTTP, require

PROVIDER = "agentmail"
PAGE_LIMIT = 100
"""Inboxes asked for per page; the provider may return fewer (the paging does not depend on it)."""
OPERATIONS: tuple[str, ...] = (
    "lookup_inbox",
    "list_inboxes",
    "create_inbox",
    "get_inbox",
    "update_inbox",
    "delete_inbox",
)
"""Every operation name this module passes to ``ProviderHTTP.request`` (metric labels)."""


class _UsernameTaken(Conflict):
    """Create answered "username taken": maybe by our own earlier create, maybe by someone else."""


_TAKEN_CODES = {"resource_taken": _UsernameTaken, "already_exists": _UsernameTaken}
USERNAME_DIGEST_CHARS = 10


def inbox_username(name: str) -> str:
    """The inbox username for a derived name; two names that differ only in case never share one."""
    lowered = name.lower()
    if lowered == name:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:USERNAME_DIGEST_CHARS]
    return f"{lowered}.{digest}"


class AgentMailInboxDriver:
    """Manages ``AGENTMAIL_INBOX``: ``want.params`` is ``{"domain": str | None, "display_name": str}``."""

    kind = ResourceKind.AGENTMAIL_INBOX

    def __init__(self, http: ProviderHTTP) -> None:
        self._http = http

    async def lookup(self, want: DesiredResource) -> Observed | None:
        async for inbox in self._list_inboxes("lookup_inbox"):
            if inbox.get("client_id") == want.name:
                return _observed("lookup_inbox", inbox)
        return None

    async def list_managed(self, prefix: str) -> list[Observed]:
        """Every inbox whose ``client_id`` starts with ``prefix``, across all pages."""
        return [
            _observed("list_inboxes", inbox)
            async for inbox in self._list_inboxes("list_inboxes")
            if str(inbox.get("client_id") or "").startswith(prefix)
        ]

    async def create(self, want: DesiredResource) -> Observed:
        domain, display_name = _params(want)
        username = inbox_username(want.name)
        body: dict[str, Any] = {"username": username, "display_name": display_name, "client_id": want.name}
        if domain is not None:
            body["domain"] = domain
        try:
            answer = await self._http.request(
                "create_inbox", "POST", "/inboxes", json=body, error_codes=_TAKEN_CODES
            )
        except _UsernameTaken as taken:
            ours = await self.lookup(want)
            if ours is not None:
                return ours
            raise NameTaken(
                PROVIDER,
                "create_inbox",
                f"username {username!r} is held by an inbox we do not own (AgentMail usernames are "
                "case-insensitive); free the address or choose another instance id",
            ) from taken
        return _observed("create_inbox", answer)

    async def observe(self, external_id: str, want: DesiredResource) -> Observed:
        answer = await self._http.request("get_inbox", "GET", _inbox_path(external_id))
        return _observed("get_inbox", answer)

    async def update(self, external_id: str, want: DesiredResource) -> Observed:
        _, display_name = _params(want)
        current = await self.observe(external_id, want)
        if current.attributes.get("display_name") == display_name:
            return current
        answer = await self._http.request(
            "update_inbox", "PATCH", _inbox_path(external_id), json={"display_name": display_name}
        )
        return _observed("update_inbox", answer)

    async def delete(self, external_id: str, want: DesiredResource) -> None:
        # Any 2xx is success (204 per the spec, 200 per the docs); 404 raises NotFound.
        await self._http.request("delete_inbox", "DELETE", _inbox_path(external_id), expect_json=False)

    async def _list_inboxes(self, operation: str) -> AsyncIterator[Mapping[str, Any]]:
        """Every inbox, page by page, while the provider hands back a ``next_page_token``."""
        seen_tokens: set[str] = set()
        params: dict[str, Any] = {"limit": PAGE_LIMIT}
        while True:
            answer = await self._http.request(operation, "GET", "/inboxes", params=params)
            page = require(PROVIDER, operation, answer, "inboxes")
            if not isinstance(page, list):
                raise Transient(PROVIDER, operation, "answer inboxes is not a list (contract mismatch)")
            for inbox in page:
                yield inbox
            token = answer.get("next_page_token")
            if not token:
                return
            if not isinstance(token, str):
                raise Transient(PROVIDER, operation, "next_page_token is not a string (contract mismatch)")
            if token in seen_tokens:
                raise Transient(PROVIDER, operation, "listing did not advance (page token repeated)")
            seen_tokens.add(token)
            params = {"limit": PAGE_LIMIT, "page_token": token}


def _inbox_path(inbox_id: str) -> str:
    return "/inboxes/" + quote(inbox_id, safe="@")


def _params(want: DesiredResource) -> tuple[str | None, str]:
    """``(domain, display_name)`` from ``want.params``; a malformed value is a ConfigError."""
    domain = want.params.get("domain")
    display_name = want.params.get("display_name")
    if domain is not None and (not isinstance(domain, str) or not domain):
        raise ConfigError(PROVIDER, "params", f"domain must be a non-empty string or None, not {domain!r}")
    if not isinstance(display_name, str):
        raise ConfigError(PROVIDER, "params", f"display_name must be a string, not {display_name!r}")
    return domain, display_name


def _observed(operation: str, inbox: Any) -> Observed:
    """The Observed for one Inbox object; the fields we rely on are contract-checked."""
    inbox_id = require(PROVIDER, operation, inbox, "inbox_id")
    email = require(PROVIDER, operation, inbox, "email")
    # client_id and display_name are optional in the contract (inboxes made by other tools).
    client_id = inbox.get("client_id")
    return Observed(
        external_id=str(inbox_id),
        name=str(client_id or ""),
        attributes={"email": email, "client_id": client_id, "display_name": inbox.get("display_name")},
    )
