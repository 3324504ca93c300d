"""Typed service definitions and the registry that holds them (ARCHITECTURE.md section 8).

A service is one :class:`ServiceDefinition`: an id ``group.kebab-method``, a summary, a cost in
integer credits, a runtime (``proxy`` or ``job``), a timeout, pydantic input and output models, an
optional rate limit (per minute/hour/day), an optional course gate, and whether its handler may be
re-run after a crash (``idempotent``). The definitions are the callers' contract and live here,
in ``desired_state``; the handlers that run them are the reconciler's, keyed by the same id.
Adding a service is one definition plus one handler: the catalog, the invoke route, admission and
the loop all read the registry, so no route or dispatcher changes.

The registry is an object, not a module global: the programs build it from the built-in
definitions (:mod:`desired_state.services.builtin`), and tests build their own with services made
for the test (a rate limit of 2 per minute, a course gate, a one-second timeout).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, RootModel, ValidationError

from desired_state.models import describe_validation_error
from desired_state.services.vocabulary import JobErrorCode, Runtime

SERVICE_ID_PATTERN = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*\.[a-z][a-z0-9]*(-[a-z0-9]+)*$")
COURSE_ID_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]{0,99}$")


class InputError(ValueError):
    """Input a definition refuses; ``problems`` are ``field: rule`` lines (no input values echoed)."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problems))


class UpstreamError(Exception):
    """A proxy's upstream call failed; raised by the call the API is given, refunded by the API."""

    def __init__(self, code: JobErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class AnyObject(RootModel[dict[str, Any]]):
    """Any JSON object (``util.echo``'s input and output)."""


class RateLimitModel(BaseModel):
    """The catalog's ``rateLimit``: admissions per (caller, service) per sliding window."""

    model_config = ConfigDict(frozen=True)

    perMinute: int | None = Field(default=None, gt=0)
    perHour: int | None = Field(default=None, gt=0)
    perDay: int | None = Field(default=None, gt=0)


@dataclass(frozen=True)
class RateLimit:
    per_minute: int | None = None
    per_hour: int | None = None
    per_day: int | None = None

    def __post_init__(self) -> None:
        for name in ("per_minute", "per_hour", "per_day"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"rate limit {name} must be positive")

    def wire(self) -> RateLimitModel:
        return RateLimitModel(perMinute=self.per_minute, perHour=self.per_hour, perDay=self.per_day)


@dataclass(frozen=True)
class ServiceDefinition:
    """One service of the catalog (see the module docstring)."""

    id: str
    summary: str
    runtime: Runtime
    cost_credits: int
    input_model: type[BaseModel]
    output_model: type[BaseModel]
    timeout_seconds: float = 300.0
    rate_limit: RateLimit | None = None
    course_id: str | None = None
    idempotent: bool = False
    """May the loop run the handler again after its worker died? (Never for a proxy.)"""
    max_attempts: int = 1
    """Runs at most, counting re-runs after a lost worker (only an idempotent handler gets > 1)."""
    beta: bool = False
    access: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not SERVICE_ID_PATTERN.fullmatch(self.id):
            raise ValueError(f"service id {self.id!r} must be group.kebab-method in lowercase")
        if self.cost_credits < 0:
            raise ValueError(f"{self.id}: cost_credits must not be negative")
        if self.timeout_seconds <= 0:
            raise ValueError(f"{self.id}: timeout_seconds must be positive")
        if self.max_attempts < 1 or (self.max_attempts > 1 and not self.idempotent):
            raise ValueError(f"{self.id}: max_attempts > 1 needs an idempotent handler")
        if self.runtime is Runtime.PROXY and self.idempotent:
            raise ValueError(f"{self.id}: a proxy call is never re-sent, so it cannot be idempotent")
        if self.course_id is not None and not COURSE_ID_PATTERN.fullmatch(self.course_id):
            raise ValueError(f"{self.id}: course id {self.course_id!r} is malformed")

    @property
    def group(self) -> str:
        return self.id.split(".", 1)[0]

    @property
    def path_method(self) -> str:
        """The method as it appears in the URL: ``delay-echo``."""
        return self.id.split(".", 1)[1]

    @property
    def method(self) -> str:
        """The method in camelCase, the SDK's ``cv.<group>.<method>``: ``delayEcho``."""
        head, *rest = self.path_method.split("-")
        return head + "".join(part.capitalize() for part in rest)

    def validate_input(self, data: Any) -> dict[str, Any]:
        """The input as stored on the job row (validated, defaults filled); :class:`InputError` otherwise.

        JSON types are strict (``"5"`` is not a number), since every input arrives as JSON.
        """
        if not isinstance(data, dict):
            raise InputError(["body: must be a JSON object"])
        try:
            # Validated as the JSON it arrived as: strict JSON types, and enums from their strings.
            model = self.input_model.model_validate_json(json.dumps(data), strict=True)
        except ValidationError as exc:
            raise InputError(_problems(exc)) from None
        dumped = model.model_dump(mode="json", by_alias=True)
        assert isinstance(dumped, dict)
        return dumped

    def validate_output(self, data: Any) -> dict[str, Any]:
        """A handler's result, checked against the output model before it is stored."""
        try:
            model = self.output_model.model_validate(data)
        except ValidationError as exc:
            raise InputError(_problems(exc)) from None
        dumped = model.model_dump(mode="json", by_alias=True)
        assert isinstance(dumped, dict)
        return dumped

    def access_document(self) -> dict[str, Any]:
        document: dict[str, Any] = dict(self.access)
        if self.beta:
            document["beta"] = True
        if self.course_id is not None:
            document["requiresCoursePurchase"] = self.course_id
        return document


def _problems(exc: ValidationError) -> list[str]:
    return [
        "body" + line.removeprefix("(item)") if line.startswith("(item)") else line
        for line in describe_validation_error(exc)
    ]


class CatalogItem(BaseModel):
    """One entry of ``GET /api/services/catalog``."""

    id: str
    group: str
    method: str
    summary: str
    runtime: Runtime
    costCredits: int
    rateLimit: RateLimitModel | None
    access: dict[str, Any]
    inputSchema: dict[str, Any]
    outputSchema: dict[str, Any]


class UnknownService(LookupError):
    pass


class ServiceRegistry:
    """The services this program offers, by id; refuses a second definition under one id."""

    def __init__(self, definitions: Iterable[ServiceDefinition] = ()) -> None:
        self._by_id: dict[str, ServiceDefinition] = {}
        for definition in definitions:
            self.register(definition)

    def register(self, definition: ServiceDefinition) -> ServiceDefinition:
        if definition.id in self._by_id:
            raise ValueError(f"service {definition.id} is defined twice")
        self._by_id[definition.id] = definition
        return definition

    def get(self, service_id: str) -> ServiceDefinition:
        try:
            return self._by_id[service_id]
        except KeyError:
            raise UnknownService(service_id) from None

    def find(self, group: str, method: str) -> ServiceDefinition | None:
        """The service of an invoke URL; the method may be kebab-case or the catalog's camelCase."""
        definition = self._by_id.get(f"{group}.{method}")
        if definition is not None:
            return definition
        for candidate in self._by_id.values():
            if candidate.group == group and candidate.method == method:
                return candidate
        return None

    def __contains__(self, service_id: object) -> bool:
        return service_id in self._by_id

    def __iter__(self) -> Iterator[ServiceDefinition]:
        return iter(sorted(self._by_id.values(), key=lambda d: d.id))

    def __len__(self) -> int:
        return len(self._by_id)

    def catalog(self) -> list[CatalogItem]:
        return [catalog_item(definition) for definition in self]


def catalog_item(definition: ServiceDefinition) -> CatalogItem:
    return CatalogItem(
        id=definition.id,
        group=definition.group,
        method=definition.method,
        summary=definition.summary,
        runtime=definition.runtime,
        costCredits=definition.cost_credits,
        rateLimit=definition.rate_limit.wire() if definition.rate_limit else None,
        access=definition.access_document(),
        inputSchema=definition.input_model.model_json_schema(by_alias=True),
        outputSchema=definition.output_model.model_json_schema(by_alias=True),
    )
