"""Telnyx: one SMS phone number per instance, bought, named and attached to a messaging profile.

How a number is made (``create``), and why each step is shaped the way it is:

1. **Messaging profile.** The configured ``messaging_profile_id``, else the profile named
   ``profile_name`` (get-or-create, cached on the driver). When two workers create it at the same
   time, both then take the *oldest* profile of that name, so they agree on one.
2. **Search and order.** Search up to 20 SMS-capable numbers and order one picked at random:
   a search returns the same first hits to everyone, and two provisioners that both took the first
   one bought the same number in production (seed study section 5.3). A 409/422 from the order
   means the number is gone, so search again and pick another, at most 5 attempts in all. This is
   not a retry of the same call; throttling and 5xx still go straight back to the reconciler.
   The order carries ``customer_reference = want.name``: from that moment the purchase can be
   found again by name, even if we crash before the next step.
3. **Assign and name.** ``PATCH /phone_numbers/{e164}/messaging`` sets the profile (the plain
   ``PATCH /phone_numbers/{id}`` has no such field, which is why the seed's first assignment did
   nothing); ``PATCH /phone_numbers/{id}`` writes ``customer_reference`` on the number itself.
   Right after a purchase both may answer 404 while Telnyx provisions the number: that is raised
   as ``Transient("not ready yet")``, never slept on here. The reconciler retries; ``lookup``
   finds the bought number by name and ``update`` finishes the two steps.

``lookup`` filters ``GET /phone_numbers`` on ``filter[customer_reference]`` (the spec also has
``filter[tag]``, but an order cannot set tags, so only the reference survives a crash right after
the purchase). Whether Telnyx copies an order's reference onto its numbers is not stated by the
spec, so if no number carries the name, ``lookup`` falls back to the orders with that reference
and finds their numbers by phone number. ``ready`` means the number carries both the name and the
profile; ``update`` repairs whichever is missing. Every listing is paged to its end.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import httpx

from providers.base import Conflict, DesiredResource, NotFound, Observed, ResourceKind, Transient
from providers.http import CallObserver, ProviderHTTP, require

PROVIDER = "telnyx"
SEARCH_LIMIT = 20
"""Numbers asked for per search; one is picked at random."""
MAX_PURCHASE_ATTEMPTS = 5
"""Orders tried (each for a freshly searched number) before giving up with ``Conflict``."""
PAGE_SIZE = 250
"""The spec's largest ``page[size]``."""
DEFAULT_COUNTRY = "US"
OPERATIONS: tuple[str, ...] = (
    "lookup_number",
    "lookup_order",
    "find_number",
    "list_numbers",
    "search_numbers",
    "order_number",
    "get_number",
    "get_messaging",
    "assign_profile",
    "record_name",
    "release_number",
    "find_profile",
    "create_profile",
)
"""Every operation name this module passes to ``ProviderHTTP.request`` (metric labels)."""


def telnyx_http(
    client: httpx.AsyncClient,
    base_url: str,
    api_key: str,
    *,
    timeout: float | None = None,
    observer: CallObserver | None = None,
) -> ProviderHTTP:
    """The transport for Telnyx v2 (``base_url`` ends in ``/v2``), authenticated with ``api_key``."""
    return ProviderHTTP(
        PROVIDER,
        client,
        base_url,
        {"Authorization": f"Bearer {api_key}"},
        timeout=timeout,
        observer=observer,
    )


@dataclass(frozen=True)
class _Number:
    """The fields of a Telnyx phone number this driver reads."""

    id: str
    phone_number: str
    name: str | None
    """``customer_reference``: the derived name we record on the number."""
    status: str
    messaging_profile_id: str | None


class TelnyxNumberDriver:
    """Manages ``TELNYX_NUMBER``: ``want.params = {"country_code": "US"}`` (the default).

    ``rng`` picks among search results (a seeded one makes races reproducible in tests).
    """

    kind = ResourceKind.TELNYX_NUMBER

    def __init__(
        self,
        http: ProviderHTTP,
        messaging_profile_id: str | None = None,
        profile_name: str = "convos-sms",
        *,
        rng: random.Random | None = None,
    ) -> None:
        self._http = http
        self._provider = http.provider
        self._configured_profile = messaging_profile_id
        self._profile_name = profile_name
        self._rng = rng or random.SystemRandom()
        self._resolved_profile: str | None = None
        self._profile_lock = asyncio.Lock()

    # -- the ResourceDriver protocol -----------------------------------------------------------

    async def lookup(self, want: DesiredResource) -> Observed | None:
        named = await self._list_numbers("lookup_number", [("filter[customer_reference]", want.name)])
        for number in named:
            if number.name == want.name:
                return self._observed(number, want.name, await self._profile_id(create=False))
        ordered = await self._lookup_by_order(want)
        if ordered is not None:
            return ordered
        # Bought by the system this replaces, which set no reference: known only by its number.
        known = want.params.get("phone_number")
        held = await self._find_held(str(known)) if known else None
        return None if held is None else self._observed(held, want.name, await self._profile_id(create=False))

    async def create(self, want: DesiredResource) -> Observed:
        profile_id = await self._require_profile()
        phone_number = await self._buy(want, profile_id)
        # By E.164: the order answer names the number, not its id (the spec: "the phone number").
        settings = await self._assign_profile(phone_number, profile_id)
        number = await self._record_name(self._text("assign_profile", settings, "id"), want.name)
        number = replace(number, messaging_profile_id=_optional_text(settings.get("messaging_profile_id")))
        return self._observed(number, want.name, profile_id)

    async def observe(self, external_id: str, want: DesiredResource) -> Observed:
        number = await self._get_number(external_id)
        settings = await self._get_messaging(number.id)
        number = replace(number, messaging_profile_id=_optional_text(settings.get("messaging_profile_id")))
        return self._observed(number, want.name, await self._profile_id(create=False))

    async def update(self, external_id: str, want: DesiredResource) -> Observed:
        profile_id = await self._require_profile()
        number = await self._get_number(external_id)
        if number.name != want.name:
            number = await self._record_name(number.id, want.name)
        settings = await self._get_messaging(number.id)
        if settings.get("messaging_profile_id") != profile_id:
            settings = await self._assign_profile(number.id, profile_id)
        number = replace(number, messaging_profile_id=_optional_text(settings.get("messaging_profile_id")))
        return self._observed(number, want.name, profile_id)

    async def delete(self, external_id: str, want: DesiredResource) -> None:
        # Releases the number; a 404 (already released) propagates as NotFound by contract.
        await self._http.request("release_number", "DELETE", f"/phone_numbers/{external_id}")

    async def list_managed(self, prefix: str) -> list[Observed]:
        """Every number whose recorded name starts with ``prefix`` (one paged listing)."""
        numbers = await self._list_numbers("list_numbers", [])
        profile_id = await self._profile_id(create=False)
        return [
            self._observed(number, number.name, profile_id)
            for number in numbers
            if number.name is not None and number.name.startswith(prefix)
        ]

    # -- buying ------------------------------------------------------------------------------------

    async def _buy(self, want: DesiredResource, profile_id: str) -> str:
        """Order one number with ``want.name`` as reference; return its E.164 form."""
        country = str(want.params.get("country_code", DEFAULT_COUNTRY))
        tried: set[str] = set()
        last_conflict: Conflict | None = None
        for _ in range(MAX_PURCHASE_ATTEMPTS):
            candidates = [n for n in await self._search(country) if n not in tried]
            if not candidates:
                break
            choice = self._rng.choice(candidates)
            tried.add(choice)
            body = {
                "phone_numbers": [{"phone_number": choice}],
                "messaging_profile_id": profile_id,
                "customer_reference": want.name,
            }
            try:
                answer = await self._http.request("order_number", "POST", "/number_orders", json=body)
            except Conflict as exc:  # sold to someone else meanwhile: pick another number
                last_conflict = exc
                continue
            order = self._object("order_number", answer)
            if order.get("status") == "failure":
                last_conflict = Conflict(self._provider, "order_number", f"order for {choice} failed")
                continue
            bought = self._text("order_number", order, "phone_numbers", 0, "phone_number")
            if bought != choice:
                raise Transient(self._provider, "order_number", "answer names another number (mismatch)")
            return bought
        if last_conflict is None:
            raise Transient(self._provider, "search_numbers", f"no SMS numbers for sale in {country}")
        raise Conflict(
            self._provider,
            "order_number",
            f"no number bought after {len(tried)} attempts; last: {last_conflict.message}",
        )

    async def _search(self, country: str) -> list[str]:
        params = [
            ("filter[country_code]", country),
            ("filter[features]", "sms"),  # an array; the official SDK comma-joins it
            ("filter[limit]", SEARCH_LIMIT),
        ]
        answer = await self._http.request("search_numbers", "GET", "/available_phone_numbers", params=params)
        found = self._list("search_numbers", answer)
        return [self._text("search_numbers", item, "phone_number") for item in found]

    # -- reading and fixing one number -------------------------------------------------------------

    async def _get_number(self, number_id: str) -> _Number:
        answer = await self._http.request("get_number", "GET", f"/phone_numbers/{number_id}")
        return self._number("get_number", self._object("get_number", answer))

    async def _get_messaging(self, number_id: str) -> dict[str, Any]:
        path = f"/phone_numbers/{number_id}/messaging"
        answer = await self._http.request("get_messaging", "GET", path)
        return self._object("get_messaging", answer)

    async def _assign_profile(self, number_ref: str, profile_id: str) -> dict[str, Any]:
        path = f"/phone_numbers/{number_ref}/messaging"
        answer = await self._patch_when_ready("assign_profile", path, {"messaging_profile_id": profile_id})
        return self._object("assign_profile", answer)

    async def _record_name(self, number_id: str, name: str) -> _Number:
        path = f"/phone_numbers/{number_id}"
        answer = await self._patch_when_ready("record_name", path, {"customer_reference": name})
        return self._number("record_name", self._object("record_name", answer))

    async def _patch_when_ready(self, operation: str, path: str, body: dict[str, Any]) -> Any:
        """PATCH a number that exists; its 404 means Telnyx is still provisioning it."""
        try:
            return await self._http.request(operation, "PATCH", path, json=body)
        except NotFound:
            message = "number not ready yet (HTTP 404 after purchase)"
            raise Transient(self._provider, operation, message) from None

    async def _lookup_by_order(self, want: DesiredResource) -> Observed | None:
        """The number of an order placed with ``want.name``, if we still hold it and it is not renamed."""
        orders = await self._list_all(
            "lookup_order", "/number_orders", [("filter[customer_reference]", want.name)]
        )
        for order in orders:
            if order.get("customer_reference") != want.name or order.get("status") == "failure":
                continue
            for line in self._list_field("lookup_order", order, "phone_numbers"):
                phone_number = self._text("lookup_order", line, "phone_number")
                number = await self._find_held(phone_number)
                if number is not None and number.name in (None, want.name):
                    return self._observed(number, want.name, await self._profile_id(create=False))
            if order.get("status") == "pending":
                # Bought but not yet listed: buying again now would make a duplicate.
                raise Transient(self._provider, "lookup_order", "number order still pending")
        return None

    async def _find_held(self, phone_number: str) -> _Number | None:
        # The filter takes digits only ("non-numerical characters will result in no values").
        digits = phone_number.lstrip("+")
        numbers = await self._list_numbers("find_number", [("filter[phone_number]", digits)])
        return next((n for n in numbers if n.phone_number == phone_number), None)

    # -- messaging profile -------------------------------------------------------------------------

    async def _require_profile(self) -> str:
        profile_id = await self._profile_id(create=True)
        assert profile_id is not None  # create=True either finds, makes or raises
        return profile_id

    async def _profile_id(self, *, create: bool) -> str | None:
        """The profile numbers must carry; with ``create``, made when missing. None: none exists."""
        if self._configured_profile is not None:
            return self._configured_profile
        async with self._profile_lock:
            if self._resolved_profile is None:
                found = await self._find_profile()
                if found is None and create:
                    created = await self._create_profile()
                    # Re-read: if another worker raced us, both settle on the oldest profile.
                    found = await self._find_profile() or created
                self._resolved_profile = found
            return self._resolved_profile

    async def _find_profile(self) -> str | None:
        profiles = await self._list_all(
            "find_profile", "/messaging_profiles", [("filter[name][eq]", self._profile_name)]
        )
        named = [p for p in profiles if p.get("name") == self._profile_name]
        if not named:
            return None
        oldest = min(named, key=lambda p: (str(p.get("created_at", "")), str(p.get("id", ""))))
        return self._text("find_profile", oldest, "id")

    async def _create_profile(self) -> str:
        body = {"name": self._profile_name, "whitelisted_destinations": ["US"]}
        answer = await self._http.request("create_profile", "POST", "/messaging_profiles", json=body)
        return self._text("create_profile", answer, "data", "id")

    # -- listings and answer parsing ---------------------------------------------------------------

    async def _list_numbers(self, operation: str, filters: Sequence[tuple[str, str]]) -> list[_Number]:
        items = await self._list_all(operation, "/phone_numbers", filters)
        return [self._number(operation, item) for item in items]

    async def _list_all(
        self, operation: str, path: str, filters: Sequence[tuple[str, str]]
    ) -> list[dict[str, Any]]:
        """Every item of a ``page[number]``/``page[size]`` listing, following ``meta.total_pages``."""
        items: list[dict[str, Any]] = []
        page = 1
        while True:
            params = [*filters, ("page[number]", str(page)), ("page[size]", str(PAGE_SIZE))]
            answer = await self._http.request(operation, "GET", path, params=params)
            found = self._list(operation, answer)
            items.extend(found)
            total_pages = require(self._provider, operation, answer, "meta", "total_pages")
            if not isinstance(total_pages, int):
                raise Transient(self._provider, operation, "answer has a non-integer meta.total_pages")
            if not found or page >= total_pages:
                return items
            page += 1

    def _observed(self, number: _Number, name: str | None, profile_id: str | None) -> Observed:
        named = name is not None and number.name == name
        assigned = profile_id is not None and number.messaging_profile_id == profile_id
        if named and assigned:
            status = "ready"
        elif number.status != "active":
            status = number.status  # purchase-pending and the like
        else:
            status = "profile-unassigned" if not assigned else "unnamed"
        return Observed(
            external_id=number.id,
            name=name or "",
            attributes={
                "phone_number": number.phone_number,
                "messaging_profile_id": number.messaging_profile_id,
                "status": number.status,
            },
            ready=named and assigned,
            status=status,
        )

    def _number(self, operation: str, item: dict[str, Any]) -> _Number:
        return _Number(
            id=self._text(operation, item, "id"),
            phone_number=self._text(operation, item, "phone_number"),
            name=_optional_text(item.get("customer_reference")),
            status=self._text(operation, item, "status"),
            messaging_profile_id=_optional_text(item.get("messaging_profile_id")),
        )

    def _text(self, operation: str, body: Any, *path: str | int) -> str:
        value = require(self._provider, operation, body, *path)
        if not isinstance(value, str) or not value:
            where = ".".join(str(step) for step in path)
            raise Transient(self._provider, operation, f"answer has a non-text {where} (contract mismatch)")
        return value

    def _object(self, operation: str, answer: Any) -> dict[str, Any]:
        data = require(self._provider, operation, answer, "data")
        if not isinstance(data, dict):
            raise Transient(self._provider, operation, "answer data is not an object (contract mismatch)")
        return data

    def _list(self, operation: str, answer: Any) -> list[dict[str, Any]]:
        return self._list_field(operation, answer, "data")

    def _list_field(self, operation: str, body: Any, key: str) -> list[dict[str, Any]]:
        value = require(self._provider, operation, body, key)
        if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
            raise Transient(
                self._provider, operation, f"answer {key} is not a list of objects (contract mismatch)"
            )
        return value


def _optional_text(value: Any) -> str | None:
    """A string field that may be null or empty (both mean unset)."""
    return value if isinstance(value, str) and value else None
