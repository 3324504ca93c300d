"""OpenRouter API keys, one per instance, managed through the key-management REST API.

Each agent instance gets its own OpenRouter key with a spending limit, so one runaway agent can
only burn its own budget. The driver speaks the management endpoints (a *management key* in the
``Authorization`` header, base URL ending in ``/api/v1``)::

    POST   /keys            {name, limit, limit_reset?}  -> 201 {data: key, key: "sk-or-v1-..."}
    GET    /keys?offset=N   -> {data: [key, ...]}         most recent first, 100 a page
    GET    /keys/{hash}     -> {data: key}
    PATCH  /keys/{hash}     {limit, limit_reset}          -> {data: key}
    DELETE /keys/{hash}     -> {deleted: true}

The key's ``hash`` is its id. The plaintext key comes back only once, from ``POST``, and is
returned as :attr:`Observed.secret` (kept out of every repr and error). OpenRouter has no
idempotency key and allows duplicate names, so crash safety rests on :meth:`lookup`: the
reconciler calls it before a repeated create, and it pages through *every* key (disabled ones
included) for an exact name match. A key adopted that way has no secret (OpenRouter cannot show
it again); the reconciler decides what to do about that.

Paging is by ``offset`` over a most-recent-first list, so a key created while we page shifts the
rest by one: we may see a key twice (harmless), never miss one. A listing that stops advancing
(a page made only of keys already seen) is a broken answer, raised as ``Transient`` rather than
looped on forever.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any
from urllib.parse import quote

from providers.base import ConfigError, DesiredResource, Observed, ResourceKind, Transient
from providers.http import ProviderHTTP, require

PROVIDER = "openrouter"
LIMIT_RESETS = frozenset({"daily", "weekly", "monthly"})
MAX_PAGES = 10_000
STALE_PAGES_LIMIT = 3
OPERATIONS: tuple[str, ...] = ("lookup_key", "list_keys", "create_key", "get_key", "update_key", "delete_key")
"""Every operation name this module passes to ``ProviderHTTP.request`` (metric labels)."""


class OpenRouterKeyDriver:
    """Manages ``OPENROUTER_KEY``: ``want.params`` is ``{"limit": USD, "limit_reset": str | None}``."""

    kind = ResourceKind.OPENROUTER_KEY

    def __init__(self, http: ProviderHTTP) -> None:
        self._http = http

    async def lookup(self, want: DesiredResource) -> Observed | None:
        async for key in self._list_keys("lookup_key"):
            if key.get("name") == want.name:
                return _observed("lookup_key", key)
        return None

    async def list_managed(self, prefix: str) -> list[Observed]:
        """Every key whose name starts with ``prefix``, across all pages (for garbage collection)."""
        return [
            _observed("list_keys", key)
            async for key in self._list_keys("list_keys")
            if str(key.get("name", "")).startswith(prefix)
        ]

    async def create(self, want: DesiredResource) -> Observed:
        limit, limit_reset = _limits(want)
        body: dict[str, Any] = {"name": want.name, "limit": limit}
        if limit_reset is not None:
            body["limit_reset"] = limit_reset
        answer = await self._http.request("create_key", "POST", "/keys", json=body)
        secret = require(PROVIDER, "create_key", answer, "key")
        if not isinstance(secret, str):
            raise Transient(PROVIDER, "create_key", "answer has a non-string key (contract mismatch)")
        return _observed("create_key", require(PROVIDER, "create_key", answer, "data"), secret=secret)

    async def observe(self, external_id: str, want: DesiredResource) -> Observed:
        answer = await self._http.request("get_key", "GET", _key_path(external_id))
        return _observed("get_key", require(PROVIDER, "get_key", answer, "data"))

    async def update(self, external_id: str, want: DesiredResource) -> Observed:
        limit, limit_reset = _limits(want)
        # limit_reset is always sent: null is how a reset schedule is removed.
        answer = await self._http.request(
            "update_key",
            "PATCH",
            _key_path(external_id),
            json={"limit": limit, "limit_reset": limit_reset},
        )
        return _observed("update_key", require(PROVIDER, "update_key", answer, "data"))

    async def delete(self, external_id: str, want: DesiredResource) -> None:
        # A 404 surfaces as NotFound, which the reconciler reads as "already gone".
        answer = await self._http.request("delete_key", "DELETE", _key_path(external_id))
        require(PROVIDER, "delete_key", answer, "deleted")

    async def _list_keys(self, operation: str) -> AsyncIterator[Mapping[str, Any]]:
        """Every key once, page by page, until an empty page.

        The listing is newest first, so a key created while we page pushes older ones to later
        offsets and we see some twice: duplicates are skipped, not an error, unless several pages
        in a row bring nothing new (a server ignoring ``offset``). A key deleted while we page can
        shift one past us unseen; a lookup that misses is safe, because the garbage collector
        removes a second key under a live instance's name. ``MAX_PAGES`` bounds the listing.
        """
        seen: set[str] = set()
        offset = stale_pages = 0
        for _ in range(MAX_PAGES):
            answer = await self._http.request(
                operation, "GET", "/keys", params={"offset": offset, "include_disabled": "true"}
            )
            page = require(PROVIDER, operation, answer, "data")
            if not isinstance(page, list):
                raise Transient(PROVIDER, operation, "answer data is not a list (contract mismatch)")
            if not page:
                return
            fresh = 0
            for key in page:
                key_hash = str(require(PROVIDER, operation, key, "hash"))
                if key_hash not in seen:
                    seen.add(key_hash)
                    fresh += 1
                    yield key
            # One page of nothing new can be a burst of creates; several mean offset is ignored.
            stale_pages = 0 if fresh else stale_pages + 1
            if stale_pages >= STALE_PAGES_LIMIT:
                raise Transient(PROVIDER, operation, f"listing did not advance at offset {offset}")
            offset += len(page)
        raise Transient(PROVIDER, operation, f"listing did not end after {MAX_PAGES} pages")


def _key_path(key_hash: str) -> str:
    return "/keys/" + quote(key_hash, safe="")


def _limits(want: DesiredResource) -> tuple[float, str | None]:
    """``(limit, limit_reset)`` from ``want.params``; a malformed value is a ConfigError."""
    limit = want.params.get("limit")
    limit_reset = want.params.get("limit_reset")
    if isinstance(limit, bool) or not isinstance(limit, int | float) or limit < 0:
        raise ConfigError(PROVIDER, "params", f"limit must be a non-negative number of USD, not {limit!r}")
    if limit_reset is not None and limit_reset not in LIMIT_RESETS:
        allowed = ", ".join(sorted(LIMIT_RESETS))
        message = f"limit_reset must be one of {allowed} or None, not {limit_reset!r}"
        raise ConfigError(PROVIDER, "params", message)
    return float(limit), limit_reset


def _observed(operation: str, key: Any, secret: str | None = None) -> Observed:
    """The Observed for one key object; every field we rely on is contract-checked."""
    name = require(PROVIDER, operation, key, "name")
    disabled = require(PROVIDER, operation, key, "disabled")
    # limit and limit_reset are required but nullable ("no limit", "never resets").
    if not isinstance(key, Mapping) or "limit" not in key or "limit_reset" not in key:
        raise Transient(PROVIDER, operation, "answer lacks limit or limit_reset (contract mismatch)")
    return Observed(
        external_id=str(require(PROVIDER, operation, key, "hash")),
        name=str(name),
        attributes={
            "name": name,
            "limit": key["limit"],
            "limit_reset": key["limit_reset"],
            "disabled": bool(disabled),
        },
        secret=secret,
    )
