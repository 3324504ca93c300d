"""Telnyx's wire contract for the simulated Telnyx: its spec, its errors, its records and JSON shapes.

Everything here is stateless: the OpenAPI document (:func:`load_spec`) and the body checks it
gives (:func:`validated_body`), the error envelope (:func:`error_body`, :class:`ApiError`), the
records the fake keeps (:class:`Number`, :class:`Order`, :class:`Profile`, :class:`ForSale`),
the inventory of numbers for sale (:func:`make_inventory`) and the JSON each record is answered
as. :mod:`providers.simulated.telnyx` holds the state and serves the routes.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match
from referencing import Registry
from referencing.jsonschema import DRAFT202012
from starlette.requests import Request

from providers.simulated._common import (
    NO_BODY,
    InvalidJSON,
    iso_timestamp,
    read_json,
)

SPEC_PATH = Path(__file__).parent / "specs" / "telnyx-numbers.openapi.yaml"
_SPEC_URI = "urn:telnyx-numbers-openapi"

MAX_PAGE_SIZE = 250
"""The spec's ``page[size]`` maximum."""
DEFAULT_SEARCH_LIMIT = 20
"""Results of a search without ``filter[limit]`` (the spec names no default)."""
SEARCH_FEATURES = frozenset(
    {"sms", "mms", "voice", "fax", "emergency", "hd_voice", "international_sms", "local_calling"}
)

# (area code, state, city): where the inventory's numbers live.
_AREAS = (
    ("212", "NY", "New York"),
    ("312", "IL", "Chicago"),
    ("415", "CA", "San Francisco"),
    ("512", "TX", "Austin"),
    ("617", "MA", "Boston"),
    ("720", "CO", "Denver"),
    ("206", "WA", "Seattle"),
    ("305", "FL", "Miami"),
)
_SMS_FEATURES = ("sms", "mms", "voice", "fax", "emergency")
_VOICE_ONLY_FEATURES = ("voice", "fax", "emergency")
_VOICE_ONLY_EVERY = 10
"""Every tenth inventory number cannot do SMS, so a search must ask for ``filter[features]=sms``."""

# Numeric error codes in Telnyx's style; 10007 and 10009 are the ones the spec itself shows.
_CODES = {400: "10015", 401: "10009", 404: "10005", 422: "10015", 429: "10011"}
_TITLES = {
    400: "Bad Request",
    401: "Authentication failed",
    404: "Resource not found",
    422: "Unprocessable entity",
    429: "Too many requests",
}

OPERATIONS = (
    "search_numbers",
    "list_orders",
    "order_number",
    "get_order",
    "list_numbers",
    "get_number",
    "update_number",
    "release_number",
    "get_messaging",
    "update_messaging",
    "list_profiles",
    "create_profile",
    "get_profile",
)
"""The fault layer's names for this fake's routes, in route order."""


class ApiError(Exception):
    """Raised by a handler; becomes one Telnyx error envelope."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        title: str | None = None,
        pointer: str | None = None,
        parameter: str | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.title = title
        self.pointer = pointer
        self.parameter = parameter


def error_body(
    status: int,
    detail: str,
    *,
    title: str | None = None,
    pointer: str | None = None,
    parameter: str | None = None,
) -> dict[str, Any]:
    """The Telnyx error envelope ``{"errors": [{code, title, detail, source?, meta}]}``."""
    code = _CODES.get(status, "10007")
    error: dict[str, Any] = {
        "code": code,
        "title": title or _TITLES.get(status, "Unexpected error"),
        "detail": detail,
        "meta": {"url": f"https://developers.telnyx.com/docs/overview/errors/{code}"},
    }
    source = {k: v for k, v in (("pointer", pointer), ("parameter", parameter)) if v is not None}
    if source:
        error["source"] = source
    return {"errors": [error]}


@functools.cache
def load_spec() -> dict[str, Any]:
    """The Telnyx OpenAPI document this simulator serves (parsed once)."""
    spec: dict[str, Any] = yaml.safe_load(SPEC_PATH.read_text(encoding="utf-8"))
    return spec


@functools.cache
def body_validator(schema_name: str) -> Draft202012Validator:
    # OpenAPI 3.1 schemas are JSON Schema 2020-12; $refs resolve inside the spec document.
    registry: Registry[Any] = Registry().with_resource(_SPEC_URI, DRAFT202012.create_resource(load_spec()))
    return Draft202012Validator({"$ref": f"{_SPEC_URI}#/components/schemas/{schema_name}"}, registry=registry)


def schema_fields(schema_name: str) -> Mapping[str, Any]:
    """The properties the spec defines for a component schema."""
    fields: Mapping[str, Any] = load_spec()["components"]["schemas"][schema_name]["properties"]
    return fields


@dataclass
class ForSale:
    phone_number: str
    state: str
    city: str
    features: tuple[str, ...]
    sold: bool = False


@dataclass
class Profile:
    id: str
    name: str
    settings: dict[str, Any]
    created_at: datetime
    updated_at: datetime


@dataclass
class Number:
    id: str
    listing: ForSale
    customer_reference: str | None
    order_profile_id: str | None
    connection_id: str | None
    billing_group_id: str | None
    created_at: datetime
    updated_at: datetime
    ready_at: float
    status: str = "purchase-pending"
    activated_at: datetime | None = None
    messaging_profile_id: str | None = None
    messaging_product: str = "P2P"
    tags: list[str] = field(default_factory=list)
    external_pin: str | None = None
    hd_voice_enabled: bool = False

    @property
    def phone_number(self) -> str:
        return self.listing.phone_number


@dataclass
class Order:
    id: str
    lines: list[tuple[str, str]]
    """(order line id, E.164 number)."""
    customer_reference: str | None
    messaging_profile_id: str | None
    connection_id: str | None
    billing_group_id: str | None
    created_at: datetime


def int_param(request: Request, name: str, default: int, *, minimum: int, maximum: int | None = None) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(400, f"{name} must be an integer", parameter=name) from None
    if value < minimum or (maximum is not None and value > maximum):
        bound = f"between {minimum} and {maximum}" if maximum is not None else f"at least {minimum}"
        raise ApiError(400, f"{name} must be {bound}", parameter=name)
    return value


async def validated_body(request: Request, schema_name: str) -> dict[str, Any]:
    """The JSON body, checked against the spec's ``schema_name``; 400 in the envelope otherwise."""
    try:
        body = await read_json(request)
    except InvalidJSON:
        raise ApiError(400, "The request body is not valid JSON") from None
    if body is NO_BODY:
        raise ApiError(400, "A request body is required")
    error = best_match(body_validator(schema_name).iter_errors(body))
    if error is not None:
        pointer = "/" + "/".join(str(step) for step in error.absolute_path)
        raise ApiError(400, error.message, title="Invalid parameter", pointer=pointer)
    assert isinstance(body, dict)  # every schema used here is an object
    return body


def make_inventory(size: int, rng: random.Random) -> list[ForSale]:
    numbers: dict[str, ForSale] = {}
    while len(numbers) < size:
        area, state, city = rng.choice(_AREAS)
        # NANP: the exchange starts with 2-9; line numbers are free.
        phone_number = f"+1{area}{rng.randint(200, 999)}{rng.randint(0, 9999):04d}"
        features = _VOICE_ONLY_FEATURES if len(numbers) % _VOICE_ONLY_EVERY == 9 else _SMS_FEATURES
        numbers.setdefault(phone_number, ForSale(phone_number, state, city, features))
    return list(numbers.values())


def matches_digits(number: Number, digits: str) -> bool:
    # The spec: "Requires at least three digits. Non-numerical characters will result in no values".
    return len(digits) >= 3 and digits.isdigit() and digits in number.phone_number


def search_meta(count: int) -> dict[str, int]:
    return {"total_results": count, "best_effort_results": 0}


def available_json(listing: ForSale) -> dict[str, Any]:
    return {
        "record_type": "available_phone_number",
        "phone_number": listing.phone_number,
        "vanity_format": "",
        "best_effort": False,
        "quickship": True,
        "reservable": True,
        "features": [{"name": name} for name in listing.features],
        "cost_information": {"currency": "USD", "monthly_cost": "1.00", "upfront_cost": "1.00"},
        "region_information": [
            {"region_type": "country_code", "region_name": "US"},
            {"region_type": "state", "region_name": listing.state},
            {"region_type": "location", "region_name": listing.city},
        ],
    }


def order_json(order: Order, *, detailed: bool) -> dict[str, Any]:
    """NumberOrderWithPhoneNumbers (``detailed``) or the listing's NumberOrder shape."""
    if detailed:
        lines: list[dict[str, Any]] = [
            {
                "id": line_id,
                "record_type": "number_order_phone_number",
                "phone_number": phone_number,
                "status": "success",
                "requirements_met": True,
                "requirements_status": "approved",
                "regulatory_requirements": [],
                "country_code": "US",
                "phone_number_type": "local",
            }
            for line_id, phone_number in order.lines
        ]
    else:
        lines = [{"id": line_id, "phone_number": phone_number} for line_id, phone_number in order.lines]
    optional = {
        "customer_reference": order.customer_reference,
        "messaging_profile_id": order.messaging_profile_id,
        "connection_id": order.connection_id,
        "billing_group_id": order.billing_group_id,
    }
    return {
        "id": order.id,
        "record_type": "number_order",
        "status": "success",
        "phone_numbers": lines,
        "phone_numbers_count": len(lines),
        "requirements_met": True,
        "sub_number_orders_ids": [order.id],
        "created_at": iso_timestamp(order.created_at),
        "updated_at": iso_timestamp(order.created_at),
        # These are plain strings in the spec (not nullable): left out when unset.
        **{k: v for k, v in optional.items() if v is not None},
    }


def messaging_json(number: Number) -> dict[str, Any]:
    sms = "sms" in number.listing.features
    feature_set = {"domestic_two_way": True, "international_inbound": False, "international_outbound": False}
    return {
        "record_type": "messaging_settings",
        "id": number.id,
        "phone_number": number.phone_number,
        "country_code": "US",
        "type": "long-code",
        "messaging_profile_id": number.messaging_profile_id,
        "messaging_product": number.messaging_product,
        "traffic_type": number.messaging_product,
        "eligible_messaging_products": ["A2P", "P2P"],
        "features": {"sms": feature_set if sms else None, "mms": feature_set if sms else None},
        "tags": list(number.tags),
        "created_at": iso_timestamp(number.created_at),
        "updated_at": iso_timestamp(number.updated_at),
    }


def profile_json(profile: Profile) -> dict[str, Any]:
    defaults: Mapping[str, Any] = {
        "enabled": True,
        "webhook_url": None,
        "webhook_failover_url": None,
        "webhook_api_version": "2",
        "number_pool_settings": None,
        "url_shortener_settings": None,
        "alpha_sender": None,
        "daily_spend_limit_enabled": False,
        "mms_fall_back_to_sms": False,
        "mms_transcoding": False,
        "mobile_only": False,
        "smart_encoding": False,
        "redaction_enabled": False,
        "redaction_level": 2,
        "ai_assistant_id": None,
        "resource_group_id": None,
        "health_webhook_url": None,
    }
    return {
        "record_type": "messaging_profile",
        "id": profile.id,
        "name": profile.name,
        **defaults,
        **profile.settings,
        "created_at": iso_timestamp(profile.created_at),
        "updated_at": iso_timestamp(profile.updated_at),
    }
