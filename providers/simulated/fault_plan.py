"""The fault plan: which knobs are in force for which provider and operation (a pydantic model).

The knobs are a :class:`FaultPlan`: a list of :class:`FaultRule`, each naming a provider and an
operation (``"*"`` for all) and setting some knobs. For one call, every matching rule applies,
knob by knob, the most specific one winning (an exact operation beats ``"*"``, then an exact
provider beats ``"*"``, then the later rule wins); a knob a rule sets to ``null`` is switched off
for what it matches. :meth:`FaultPlan.knobs` folds the rules into the :class:`Knobs` for one call.

A plan is JSON (``GET``/``PUT /_admin/faults``), Python (``FaultPlan(rules=[FaultRule(...)])``)
or command-line flags (:mod:`providers.simulated.fault_flags`). This module is data only: it
knows no fake, no ASGI and no flag; :mod:`providers.simulated.fault_layer` applies a plan to
requests.
"""

from __future__ import annotations

import json
import math
import random
import re
import statistics
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    PositiveFloat,
    ValidationError,
    field_validator,
    model_validator,
)

PROVIDERS = ("railway", "openrouter", "agentmail", "telnyx", "upstream")
"""Every fake the knobs can name (besides ``"*"``): the four providers, and ``upstream``, the
upstream of the ``util.echo`` proxy service."""
ANY = "*"
UNKNOWN = "unknown"
"""The operation of a request that names none (no such route, a GraphQL document that does not
parse or whose root field is not in the schema)."""

DEFAULT_RETRY_AFTER = 1.0
DEFAULT_TIMEOUT_SECONDS = 30.0
"""Longer than a client's usual timeout (``ProviderHTTP`` waits 15 s)."""

_Z99 = statistics.NormalDist().inv_cdf(0.99)
_OPERATION = re.compile(r"^(\*|[A-Za-z_][A-Za-z0-9_.]*)$")

Rate = Annotated[float, Field(ge=0.0, le=1.0)]

# --- the knobs --------------------------------------------------------------------------------


class Latency(BaseModel):
    """Delay before a call is answered: ``fixed_ms`` + uniform(0, ``jitter_ms``) + a lognormal
    draw with median ``median_ms`` and 99th percentile ``p99_ms`` (all optional, in ms)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    fixed_ms: NonNegativeFloat = 0.0
    jitter_ms: NonNegativeFloat = 0.0
    median_ms: PositiveFloat | None = None
    p99_ms: PositiveFloat | None = None

    @model_validator(mode="after")
    def _lognormal_needs_both(self) -> Latency:
        if (self.median_ms is None) != (self.p99_ms is None):
            raise ValueError("median_ms and p99_ms go together")
        if self.median_ms is not None and self.p99_ms is not None and self.p99_ms < self.median_ms:
            raise ValueError("p99_ms must be at least median_ms")
        return self

    def sample(self, rng: random.Random) -> float:
        """One delay, in seconds."""
        ms = self.fixed_ms
        if self.jitter_ms:
            ms += rng.uniform(0.0, self.jitter_ms)
        if self.median_ms is not None and self.p99_ms is not None:
            sigma = math.log(self.p99_ms / self.median_ms) / _Z99
            ms += rng.lognormvariate(math.log(self.median_ms), sigma)
        return ms / 1000.0


class RateLimit(BaseModel):
    """A token bucket: ``calls`` at once, refilled at ``calls`` per ``per_seconds``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    calls: int = Field(ge=1)
    per_seconds: PositiveFloat


KNOBS = (
    "latency",
    "error_rates",
    "graphql_error_rate",
    "throttle_rate",
    "retry_after",
    "rate_limit",
    "timeout_rate",
    "timeout_seconds",
    "timeout_mode",
    "list_lag",
)
_RATES = ("timeout_rate", "throttle_rate", "graphql_error_rate")


class FaultRule(BaseModel):
    """The knobs for the calls of ``provider`` (or ``"*"``) to ``operation`` (or ``"*"``).

    Knobs left out are inherited from less specific rules; a knob set to ``null`` is off.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    provider: str = ANY
    operation: str = ANY
    latency: Latency | None = None
    error_rates: dict[int, Rate] | None = None
    """Share of calls answered with each HTTP status (``{503: 0.2}``), in the provider's envelope."""
    graphql_error_rate: Rate | None = None
    """Railway only: share of calls answered HTTP 200 with ``errors[]`` ("Problem processing request")."""
    throttle_rate: Rate | None = None
    """Share of calls answered 429 with ``Retry-After: retry_after``."""
    retry_after: NonNegativeFloat | None = None
    rate_limit: RateLimit | None = None
    timeout_rate: Rate | None = None
    """Share of calls that hang ``timeout_seconds``, then answer 504 or drop the connection."""
    timeout_seconds: PositiveFloat | None = None
    timeout_mode: Literal["504", "drop"] | None = None
    list_lag: NonNegativeFloat | None = None
    """Seconds a resource made by this operation stays out of LIST answers."""

    @field_validator("provider")
    @classmethod
    def _known_provider(cls, value: str) -> str:
        if value != ANY and value not in PROVIDERS:
            raise ValueError(f"unknown provider {value!r} (expected {', '.join(PROVIDERS)} or *)")
        return value

    @field_validator("operation")
    @classmethod
    def _operation_name(cls, value: str) -> str:
        if not _OPERATION.match(value):
            raise ValueError(f"{value!r} is not an operation name")
        return value

    @field_validator("error_rates")
    @classmethod
    def _error_statuses(cls, value: dict[int, float] | None) -> dict[int, float] | None:
        for status in value or {}:
            if not 400 <= status <= 599:
                raise ValueError(f"status {status} is not an HTTP error status (400-599)")
        return value

    @field_validator("timeout_mode", mode="before")
    @classmethod
    def _mode_as_text(cls, value: Any) -> Any:
        return str(value) if value == 504 and not isinstance(value, bool) else value

    @model_validator(mode="after")
    def _consistent(self) -> FaultRule:
        total = sum(getattr(self, name) or 0.0 for name in _RATES) + sum((self.error_rates or {}).values())
        if total > 1.0 + 1e-9:
            raise ValueError(f"the rates add up to {total:g}, more than 1")
        if self.graphql_error_rate and self.provider not in (ANY, "railway"):
            raise ValueError("graphql_error_rate applies to railway only")
        return self

    @property
    def target(self) -> str:
        return f"{self.provider}:{self.operation}"

    def specificity(self) -> int:
        return 2 * (self.operation != ANY) + (self.provider != ANY)

    def to_json(self) -> dict[str, Any]:
        knobs = self.model_dump(mode="json", exclude_unset=True, exclude={"provider", "operation"})
        return {"provider": self.provider, "operation": self.operation, **knobs}


@dataclass(frozen=True)
class Knobs:
    """The knobs in force for one provider and operation, every rule applied."""

    latency: Latency | None = None
    error_rates: Mapping[int, float] = field(default_factory=dict)
    graphql_error_rate: float = 0.0
    throttle_rate: float = 0.0
    retry_after: float = DEFAULT_RETRY_AFTER
    rate_limit: RateLimit | None = None
    rate_limit_scope: str = ANY
    """The operation of the rule that set ``rate_limit``: ``"*"`` means one bucket shared by
    every operation of the provider that the rule covers."""
    timeout_rate: float = 0.0
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS
    timeout_mode: str = "504"
    list_lag: float = 0.0


_DEFAULTS = Knobs()


class FaultPlan(BaseModel):
    """Every fault knob of the simulator, as rules; see the module docstring for how they combine."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rules: list[FaultRule] = Field(default_factory=list)

    def knobs(self, provider: str, operation: str) -> Knobs:
        matching = sorted(
            (
                (rule.specificity(), index, rule)
                for index, rule in enumerate(self.rules)
                if rule.provider in (ANY, provider) and rule.operation in (ANY, operation)
            ),
            key=lambda item: (item[0], item[1]),
        )
        values: dict[str, Any] = {}
        for _, _, rule in matching:
            for name in rule.model_fields_set & set(KNOBS):
                values[name] = getattr(rule, name)
                if name == "rate_limit":
                    values["rate_limit_scope"] = rule.operation
        settled = {name: value for name, value in values.items() if value is not None}
        if values.get("rate_limit") is None:
            settled.pop("rate_limit_scope", None)
        for name in ("retry_after", "timeout_seconds", "timeout_mode"):
            settled.setdefault(name, getattr(_DEFAULTS, name))
        return Knobs(**settled)

    def to_json(self) -> dict[str, Any]:
        return {"rules": [rule.to_json() for rule in self.rules]}

    @classmethod
    def from_json(cls, data: Any) -> FaultPlan:
        """A plan from its JSON form; ``ValueError`` with one line naming the first problem."""
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise ValueError(one_line(exc)) from None

    def check_operations(self, known: Mapping[str, Collection[str]]) -> None:
        """``ValueError`` if a rule names an operation its provider does not have."""
        for index, rule in enumerate(self.rules):
            if rule.operation == ANY:
                continue
            providers = PROVIDERS if rule.provider == ANY else (rule.provider,)
            if not any(rule.operation in known.get(p, ()) for p in providers):
                where = "any provider" if rule.provider == ANY else rule.provider
                raise ValueError(
                    f"rules.{index}: unknown operation {rule.operation!r} for {where} "
                    "(see docs/simulator.md for the names)"
                )

    def describe(self) -> list[str]:
        """One line per rule, for a start-up banner."""
        lines = []
        for rule in self.rules:
            knobs = rule.to_json()
            del knobs["provider"], knobs["operation"]
            lines.append(f"{rule.target} {json.dumps(knobs, separators=(',', ':'))}")
        return lines


def one_line(exc: ValidationError) -> str:
    """The first problem of a validation error, in one line naming its field."""
    first = exc.errors()[0]
    where = ".".join(str(part) for part in first["loc"])
    message = str(first["msg"]).removeprefix("Value error, ")
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"{where}: {message}{more}" if where else message + more
