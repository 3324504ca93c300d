"""Simulated Telnyx v2: number search and ordering, phone numbers, messaging profiles.

Serves the paths and payload shapes of ``specs/telnyx-numbers.openapi.yaml`` (mounted at
``/telnyx/v2`` by :mod:`providers.simulated.app`) from memory:

* **Inventory.** ``inventory`` US numbers (E.164, real area codes) are for sale. A search returns
  the *first* ``filter[limit]`` unsold numbers in a fixed order, as a busy real search does, so
  two buyers who both take the first hit collide: that was the production failure of the seed
  study (section 5.3), and it is what makes a client's random pick and re-search matter.
* **Orders.** ``POST /number_orders`` sells every listed number or none; a number that is already
  sold (or was never for sale) is a 422 in the Telnyx error envelope, so of two racing buyers one
  wins and one sees a conflict. Orders succeed at once (status ``success``); the bought numbers
  show up in ``GET /phone_numbers`` carrying the order's ``customer_reference``.
* **Eventual consistency.** A bought number stays ``purchase-pending`` for ``ready_delay``
  seconds: until then every ``PATCH`` on it answers 404, as the real API does "while the number
  is not ready yet". When it turns ``active`` the order's ``messaging_profile_id`` takes effect.
* **Release.** ``DELETE /phone_numbers/{id}`` returns the number to the inventory.

``{id}`` in the number paths may be the numeric id or the E.164 number (the official SDK sends
the number). Every request needs ``Authorization: Bearer <any token>``; request bodies are
checked against the spec's schemas (400 when they do not match); every error uses the envelope
``{"errors": [{code, title, detail, source?, meta?}]}``.

:attr:`FakeTelnyx.faults` is the shared fault layer (:mod:`providers.simulated.fault_layer`); its
operation names are :data:`OPERATIONS` (``search_numbers``, ``order_number``, ``list_numbers``,
``update_messaging``...). With list lag, new orders, numbers and messaging profiles are left out
of their listings for a while; GET by id still finds them.

This module holds the state and the route handlers; the stateless contract (spec, body checks,
error envelope, records, inventory, JSON shapes) is :mod:`providers.simulated.telnyx_wire`.
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from providers.simulated._common import (
    FakeRandom,
    envelope_handlers,
    error_response,
    iso_timestamp,
    missing_bearer,
)
from providers.simulated.fault_layer import Faults, route_operations
from providers.simulated.telnyx_wire import (
    DEFAULT_SEARCH_LIMIT,
    MAX_PAGE_SIZE,
    OPERATIONS,
    SEARCH_FEATURES,
    SPEC_PATH,
    ApiError,
    ForSale,
    Number,
    Order,
    Profile,
    available_json,
    error_body,
    int_param,
    load_spec,
    make_inventory,
    matches_digits,
    messaging_json,
    order_json,
    profile_json,
    schema_fields,
    search_meta,
    validated_body,
)

__all__ = ["OPERATIONS", "SPEC_PATH", "FakeTelnyx", "error_body", "load_spec"]

_T = TypeVar("_T")


class FakeTelnyx:
    """In-memory Telnyx numbers API. See the module docstring for the behaviour it models.

    ``inventory`` is how many numbers are for sale, ``page_size`` the default and the largest page
    a listing returns (the real API caps at 250; a small value exercises pagination) and
    ``ready_delay`` how long a bought number stays ``purchase-pending``. ``clock`` (monotonic
    seconds) is what ``ready_delay`` is measured on, so tests can move time instead of sleeping.
    """

    def __init__(
        self,
        seed: int | None = None,
        inventory: int = 500,
        page_size: int = 20,
        ready_delay: float = 0.0,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 1 <= page_size <= MAX_PAGE_SIZE:
            raise ValueError(f"page_size must be within 1..{MAX_PAGE_SIZE}")
        self.page_size = page_size
        self.ready_delay = ready_delay
        self._clock = clock
        self._seed = seed
        self._lock = threading.Lock()
        self._inventory_size = inventory
        self._ids = FakeRandom(seed)
        self._for_sale: list[ForSale] = []
        self._numbers: dict[str, Number] = {}
        self._pending: set[str] = set()
        """Ids of numbers still ``purchase-pending``."""
        self._profiles: dict[str, Profile] = {}
        self._orders: dict[str, Order] = {}
        self.faults = Faults("telnyx", error_body, seed=seed, clock=clock)
        """The fault layer, in front of everything (the bearer-token check included)."""
        self._last_stamp = datetime.min.replace(tzinfo=UTC)
        self.reset()
        routes = self._routes()
        self._app = self.faults.wrap(self._authenticated(self._build_app(routes)), route_operations(routes))

    # -- the FakeProvider protocol -------------------------------------------------------------

    def asgi(self) -> ASGIApp:
        return self._app

    def snapshot(self, *, reveal_secrets: bool = True) -> dict[str, list[dict[str, Any]]]:
        """Every number and messaging profile held (no secret among them; ``reveal_secrets`` changes
        nothing)."""
        with self._lock:
            self._settle()
            return {
                "phone_numbers": [
                    {
                        "id": n.id,
                        "name": n.customer_reference,
                        "phone_number": n.phone_number,
                        "messaging_profile_id": n.messaging_profile_id,
                        "status": n.status,
                        "tags": list(n.tags),
                    }
                    for n in self._numbers.values()
                ],
                "messaging_profiles": [{"id": p.id, "name": p.name} for p in self._profiles.values()],
            }

    def reset(self) -> None:
        """Forget every number, order, profile, queued failure and logged request; put the whole
        inventory back on sale (the fault plan stays)."""
        with self._lock:
            self._numbers.clear()
            self._pending.clear()
            self._profiles.clear()
            self._orders.clear()
            self.faults.reset()
            self._for_sale = make_inventory(self._inventory_size, random.Random(self._seed))

    # -- plumbing --------------------------------------------------------------------------------

    def _routes(self) -> list[Route]:
        """The API's routes, each named by its operation (:data:`OPERATIONS`)."""
        endpoints = [
            ("/available_phone_numbers", "GET", self._search, "search_numbers"),
            ("/number_orders", "GET", self._list_orders, "list_orders"),
            ("/number_orders", "POST", self._create_order, "order_number"),
            ("/number_orders/{order_id}", "GET", self._get_order, "get_order"),
            ("/phone_numbers", "GET", self._list_numbers, "list_numbers"),
            ("/phone_numbers/{ref}", "GET", self._get_number, "get_number"),
            ("/phone_numbers/{ref}", "PATCH", self._update_number, "update_number"),
            ("/phone_numbers/{ref}", "DELETE", self._delete_number, "release_number"),
            ("/phone_numbers/{ref}/messaging", "GET", self._get_messaging, "get_messaging"),
            ("/phone_numbers/{ref}/messaging", "PATCH", self._update_messaging, "update_messaging"),
            ("/messaging_profiles", "GET", self._list_profiles, "list_profiles"),
            ("/messaging_profiles", "POST", self._create_profile, "create_profile"),
            ("/messaging_profiles/{profile_id}", "GET", self._get_profile, "get_profile"),
        ]
        return [Route(path, call, methods=[method], name=name) for path, method, call, name in endpoints]

    def _build_app(self, routes: list[Route]) -> Starlette:
        async def api_error(_: Request, exc: Exception) -> Response:
            assert isinstance(exc, ApiError)
            body = error_body(exc.status, exc.detail, title=exc.title, pointer=exc.pointer, parameter=exc.parameter)
            return error_response(exc.status, body)

        handlers = {**envelope_handlers(error_body), ApiError: api_error}
        return Starlette(routes=routes, exception_handlers=handlers)

    @staticmethod
    def _authenticated(app: ASGIApp) -> ASGIApp:
        """``app`` behind the bearer-token check (401 in the Telnyx envelope)."""

        async def gate(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] == "http":
                refusal = missing_bearer(Request(scope), error_body)
                if refusal is not None:
                    await refusal(scope, receive, send)
                    return
            await app(scope, receive, send)

        return gate

    def _stamp(self) -> datetime:
        """Now, strictly later than any earlier stamp, so creation order is total."""
        now = datetime.now(UTC)
        if now <= self._last_stamp:
            now = self._last_stamp + timedelta(milliseconds=1)
        self._last_stamp = now
        return now

    def _settle(self) -> None:
        """Activate every bought number whose ``ready_delay`` has passed."""
        now = self._clock()
        for number_id in list(self._pending):
            number = self._numbers.get(number_id)
            if number is None:  # released while pending
                self._pending.discard(number_id)
            elif now >= number.ready_at:
                self._pending.discard(number_id)
                number.status = "active"
                number.activated_at = number.updated_at = self._stamp()
                if number.messaging_profile_id is None and number.order_profile_id in self._profiles:
                    number.messaging_profile_id = number.order_profile_id

    def _find(self, ref: str) -> Number:
        """A held number by numeric id or E.164; 404 otherwise."""
        if ref.startswith("+"):
            for number in self._numbers.values():
                if number.phone_number == ref:
                    return number
        elif ref in self._numbers:
            return self._numbers[ref]
        raise ApiError(404, f"Phone number {ref} not found")

    def _find_ready(self, ref: str) -> Number:
        number = self._find(ref)
        if number.status == "purchase-pending":
            # What the real API answers while a fresh purchase is still being provisioned.
            raise ApiError(404, f"Phone number {ref} not found")
        return number

    def _page(self, request: Request, items: Sequence[_T]) -> tuple[Sequence[_T], dict[str, int]]:
        number = int_param(request, "page[number]", 1, minimum=1)
        asked = int_param(request, "page[size]", self.page_size, minimum=1, maximum=MAX_PAGE_SIZE)
        size = min(asked, self.page_size)
        start = (number - 1) * size
        meta = {
            "page_number": number,
            "page_size": size,
            "total_pages": math.ceil(len(items) / size),
            "total_results": len(items),
        }
        return items[start : start + size], meta

    # -- number search and orders ----------------------------------------------------------------

    async def _search(self, request: Request) -> Response:
        query = request.query_params
        limit = int_param(request, "filter[limit]", DEFAULT_SEARCH_LIMIT, minimum=1)
        features = {
            item.strip()
            for key in ("filter[features]", "filter[features][]")  # SDK comma-joins; the seed used []
            for value in query.getlist(key)
            for item in value.split(",")
            if item.strip()
        }
        unknown = features - SEARCH_FEATURES
        if unknown:
            raise ApiError(400, f"Unknown feature {sorted(unknown)[0]!r}", parameter="filter[features]")
        if query.get("filter[country_code]", "US").upper() != "US":
            return JSONResponse({"data": [], "meta": search_meta(0), "metadata": search_meta(0)})
        tests: dict[str, Callable[[ForSale, str], bool]] = {
            "filter[phone_number][starts_with]": lambda n, v: n.phone_number[2:].startswith(v),
            "filter[phone_number][ends_with]": lambda n, v: n.phone_number.endswith(v),
            "filter[phone_number][contains]": lambda n, v: v in n.phone_number,
            "filter[administrative_area]": lambda n, v: n.state == v.upper(),
            "filter[locality]": lambda n, v: n.city.lower() == v.lower(),
        }
        given = [(test, query[key]) for key, test in tests.items() if key in query]
        with self._lock:
            matches = [
                n
                for n in self._for_sale
                if not n.sold and features.issubset(n.features) and all(test(n, value) for test, value in given)
            ]
        data = [available_json(n) for n in matches[:limit]]
        meta = search_meta(len(data))
        return JSONResponse({"data": data, "meta": meta, "metadata": meta})

    async def _create_order(self, request: Request) -> Response:
        body = await validated_body(request, "CreateNumberOrderRequest")
        wanted = [line["phone_number"] for line in body.get("phone_numbers", [])]
        if not wanted:
            raise ApiError(422, "At least one phone number is required", pointer="/phone_numbers")
        if len(set(wanted)) != len(wanted):
            raise ApiError(422, "A phone number is listed twice", pointer="/phone_numbers")
        profile_id = body.get("messaging_profile_id")
        with self._lock:
            if profile_id is not None and profile_id not in self._profiles:
                raise ApiError(422, "Messaging profile not found", pointer="/messaging_profile_id")
            listings = {n.phone_number: n for n in self._for_sale}
            for index, phone_number in enumerate(wanted):
                listing = listings.get(phone_number)
                if listing is None or listing.sold:
                    raise ApiError(
                        422,
                        f"Number {phone_number} is not available for purchase",
                        title="Number not available",
                        pointer=f"/phone_numbers/{index}/phone_number",
                    )
            now = self._stamp()
            order = Order(
                id=self._ids.uuid(),
                lines=[(self._ids.uuid(), phone_number) for phone_number in wanted],
                customer_reference=body.get("customer_reference"),
                messaging_profile_id=profile_id,
                connection_id=body.get("connection_id"),
                billing_group_id=body.get("billing_group_id"),
                created_at=now,
            )
            self._orders[order.id] = order
            for phone_number in wanted:
                listing = listings[phone_number]
                listing.sold = True
                number = Number(
                    id="1" + self._ids.digits(18),
                    listing=listing,
                    customer_reference=order.customer_reference,
                    order_profile_id=profile_id,
                    connection_id=order.connection_id,
                    billing_group_id=order.billing_group_id,
                    created_at=now,
                    updated_at=now,
                    ready_at=self._clock() + self.ready_delay,
                )
                self._numbers[number.id] = number
                self._pending.add(number.id)
                self.faults.created("order_number", number.id)
            self.faults.created("order_number", order.id)
            self._settle()
            return JSONResponse({"data": order_json(order, detailed=True)})

    async def _list_orders(self, request: Request) -> Response:
        reference = request.query_params.get("filter[customer_reference]")
        with self._lock:
            orders = [
                o
                for o in sorted(self._orders.values(), key=lambda o: o.created_at, reverse=True)
                if (reference is None or o.customer_reference == reference) and self.faults.is_listed(o.id)
            ]
            page, meta = self._page(request, orders)
            return JSONResponse({"data": [order_json(o, detailed=False) for o in page], "meta": meta})

    async def _get_order(self, request: Request) -> Response:
        with self._lock:
            order = self._orders.get(request.path_params["order_id"])
            if order is None:
                raise ApiError(404, "Number order not found")
            return JSONResponse({"data": order_json(order, detailed=True)})

    # -- phone numbers ---------------------------------------------------------------------------

    async def _list_numbers(self, request: Request) -> Response:
        query = request.query_params
        tests: dict[str, Callable[[Number, str], bool]] = {
            "filter[customer_reference]": lambda n, v: n.customer_reference == v,
            "filter[tag]": lambda n, v: v in n.tags,
            "filter[status]": lambda n, v: n.status == v,
            "filter[phone_number]": matches_digits,
        }
        given = [(test, query[key]) for key, test in tests.items() if key in query]
        sort = query.get("sort")
        with self._lock:
            self._settle()
            numbers = [
                n
                for n in self._numbers.values()
                if all(test(n, v) for test, v in given) and self.faults.is_listed(n.id)
            ]
            if sort == "phone_number":
                numbers.sort(key=lambda n: n.phone_number)
            else:
                numbers.sort(key=lambda n: n.created_at, reverse=sort != "purchased_at")
            page, meta = self._page(request, numbers)
            return JSONResponse({"data": [self._number_json(n) for n in page], "meta": meta})

    async def _get_number(self, request: Request) -> Response:
        with self._lock:
            self._settle()
            number = self._find(request.path_params["ref"])
            return JSONResponse({"data": self._number_json(number)})

    async def _update_number(self, request: Request) -> Response:
        body = await validated_body(request, "UpdatePhoneNumberRequest")
        with self._lock:
            self._settle()
            number = self._find_ready(request.path_params["ref"])
            for key in ("customer_reference", "connection_id", "billing_group_id", "external_pin"):
                if key in body:
                    setattr(number, key, body[key] or None)
            if "tags" in body:
                number.tags = list(dict.fromkeys(body["tags"]))
            if "hd_voice_enabled" in body:
                number.hd_voice_enabled = body["hd_voice_enabled"]
            number.updated_at = self._stamp()
            return JSONResponse({"data": self._number_json(number)})

    async def _delete_number(self, request: Request) -> Response:
        with self._lock:
            self._settle()
            number = self._find(request.path_params["ref"])
            del self._numbers[number.id]
            number.listing.sold = False
            number.status = "deleted"
            number.updated_at = self._stamp()
            detailed = self._number_json(number)
            # PhoneNumberDeletedDetailed has fewer fields, and none of them nullable.
            deleted_fields = schema_fields("PhoneNumberDeletedDetailed")
            data = {k: v for k, v in detailed.items() if k in deleted_fields and v is not None}
            return JSONResponse({"data": data})

    async def _get_messaging(self, request: Request) -> Response:
        with self._lock:
            self._settle()
            number = self._find(request.path_params["ref"])
            return JSONResponse({"data": messaging_json(number)})

    async def _update_messaging(self, request: Request) -> Response:
        body = await validated_body(request, "UpdatePhoneNumberMessagingSettingsRequest")
        with self._lock:
            self._settle()
            number = self._find_ready(request.path_params["ref"])
            profile_id = body.get("messaging_profile_id")
            if profile_id == "":  # the spec's way to unassign
                number.messaging_profile_id = None
            elif profile_id is not None:
                if profile_id not in self._profiles:
                    raise ApiError(422, "Messaging profile not found", pointer="/messaging_profile_id")
                number.messaging_profile_id = profile_id
            if body.get("messaging_product") is not None:
                number.messaging_product = body["messaging_product"]
            if body.get("tags") is not None:
                number.tags = list(dict.fromkeys(body["tags"]))
            number.updated_at = self._stamp()
            return JSONResponse({"data": messaging_json(number)})

    def _number_json(self, number: Number) -> dict[str, Any]:
        profile = self._profiles.get(number.messaging_profile_id or "")
        return {
            "id": number.id,
            "record_type": "phone_number",
            "phone_number": number.phone_number,
            "status": number.status,
            "tags": list(number.tags),
            "external_pin": number.external_pin,
            "connection_id": number.connection_id,
            "connection_name": None,
            "customer_reference": number.customer_reference,
            "messaging_profile_id": number.messaging_profile_id,
            "messaging_profile_name": profile.name if profile else None,
            "billing_group_id": number.billing_group_id,
            "emergency_enabled": False,
            "emergency_address_id": None,
            "emergency_status": "disabled",
            "call_forwarding_enabled": True,
            "cnam_listing_enabled": False,
            "caller_id_name_enabled": False,
            "call_recording_enabled": False,
            "t38_fax_gateway_enabled": False,
            "hd_voice_enabled": number.hd_voice_enabled,
            "inbound_call_screening": "disabled",
            "deletion_lock_enabled": False,
            "phone_number_type": "local",
            "country_iso_alpha2": "US",
            "source_type": "number_order",
            "purchased_at": iso_timestamp(number.created_at),
            "activated_at": iso_timestamp(number.activated_at) if number.activated_at else None,
            "created_at": iso_timestamp(number.created_at),
            "updated_at": iso_timestamp(number.updated_at),
        }

    # -- messaging profiles ----------------------------------------------------------------------

    async def _list_profiles(self, request: Request) -> Response:
        query = request.query_params
        exact = query.get("filter[name][eq]", query.get("filter[name]"))
        part = query.get("filter[name][contains]")
        with self._lock:
            profiles = [
                p
                for p in sorted(self._profiles.values(), key=lambda p: p.created_at)
                if (exact is None or p.name == exact)
                and (part is None or part in p.name)
                and self.faults.is_listed(p.id)
            ]
            page, meta = self._page(request, profiles)
            return JSONResponse({"data": [profile_json(p) for p in page], "meta": meta})

    async def _create_profile(self, request: Request) -> Response:
        body = await validated_body(request, "CreateMessagingProfileRequest")
        known = schema_fields("MessagingProfile")  # the create schema is open; keep what a profile has
        with self._lock:
            now = self._stamp()
            profile = Profile(
                id=self._ids.uuid(),
                name=body["name"],
                settings={k: v for k, v in body.items() if k in known and k != "name"},
                created_at=now,
                updated_at=now,
            )
            self._profiles[profile.id] = profile
            self.faults.created("create_profile", profile.id)
            return JSONResponse({"data": profile_json(profile)})

    async def _get_profile(self, request: Request) -> Response:
        with self._lock:
            profile = self._profiles.get(request.path_params["profile_id"])
            if profile is None:
                raise ApiError(404, "Messaging profile not found")
            return JSONResponse({"data": profile_json(profile)})


# -- helpers without state ---------------------------------------------------------------------
