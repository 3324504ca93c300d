"""The ``reconciler simulate`` fault flags: a small grammar that writes a :class:`FaultPlan`.

``--rate-limit railway:volumeCreate=1/30s --error-rate 503=0.2`` and friends: every flag may be
repeated, and a value may start with a target, ``PROVIDER[:OPERATION]=``. The grammar is
documented in docs/simulator.md; :func:`parse_fault_flags` turns the flags into a plan or
raises :class:`FaultFlagError` with one line naming the flag. Operation names are checked
against :func:`providers.simulated.catalog.known_operations`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

from pydantic import ValidationError

from providers.simulated.catalog import known_operations
from providers.simulated.fault_plan import ANY, PROVIDERS, FaultPlan, FaultRule, Latency, RateLimit, one_line


class FaultFlagError(ValueError):
    """A fault flag that does not parse; the message is one line naming the flag."""


_TARGET = re.compile(r"^(?P<provider>[a-z]+|\*)(?::(?P<operation>[A-Za-z_*][A-Za-z0-9_.]*))?=(?P<value>.*)$")
_DURATION = re.compile(r"^(?P<number>\d+(?:\.\d+)?|\.\d+)?\s*(?P<unit>ms|s|m|h)?$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_fault_flags(
    *,
    provider: str = ANY,
    latency_ms: Sequence[str] = (),
    error_rate: Sequence[str] = (),
    graphql_error_rate: Sequence[str] = (),
    throttle_rate: Sequence[str] = (),
    retry_after: Sequence[str] = (),
    rate_limit: Sequence[str] = (),
    timeout_rate: Sequence[str] = (),
    timeout_seconds: Sequence[str] = (),
    timeout_mode: Sequence[str] = (),
    list_lag: Sequence[str] = (),
    check_operations: bool = True,
) -> FaultPlan:
    """The plan the ``reconciler simulate`` fault flags describe (grammar: docs/simulator.md).

    Every value may start with a target, ``PROVIDER[:OPERATION]=`` (``railway:volumeCreate=``,
    ``openrouter=``, ``*:create_key=``); without one it applies to every operation of
    ``provider`` (``--provider``, default every provider). Raises :class:`FaultFlagError`.
    """
    if provider != ANY and provider not in PROVIDERS:
        raise FaultFlagError(f"--provider {provider!r}: unknown provider (use {_provider_list()})")
    parsers: list[tuple[str, Sequence[str], Callable[[str], tuple[str, Any]]]] = [
        ("--latency-ms", latency_ms, lambda v: ("latency", _latency(v))),
        ("--error-rate", error_rate, lambda v: ("error_rates", _error_rates(v))),
        ("--graphql-error-rate", graphql_error_rate, lambda v: ("graphql_error_rate", _rate(v))),
        ("--throttle-rate", throttle_rate, lambda v: ("throttle_rate", _rate(v))),
        ("--retry-after", retry_after, lambda v: ("retry_after", _duration(v))),
        ("--rate-limit", rate_limit, lambda v: ("rate_limit", _rate_limit(v))),
        ("--timeout-rate", timeout_rate, lambda v: ("timeout_rate", _rate(v))),
        ("--timeout-seconds", timeout_seconds, lambda v: ("timeout_seconds", _positive(_duration(v)))),
        ("--timeout-mode", timeout_mode, lambda v: ("timeout_mode", _timeout_mode(v))),
        ("--list-lag", list_lag, lambda v: ("list_lag", _duration(v))),
    ]
    known = known_operations() if check_operations else None
    targets: dict[tuple[str, str], dict[str, Any]] = {}
    given_by: dict[tuple[str, str], list[str]] = {}
    for flag, values, parse in parsers:
        for raw in values:
            target, text = _split_target(flag, raw, provider, known)
            try:
                knob, value = parse(text.strip())
            except ValueError as exc:
                raise FaultFlagError(f"{flag} {raw!r}: {exc}") from None
            knobs = targets.setdefault(target, {})
            given_by.setdefault(target, []).append(flag)
            if knob == "error_rates":
                clash = set(value) & set(knobs.get(knob, {}))
                if clash:
                    message = f"status {min(clash)} given twice for {_show(target)}"
                    raise FaultFlagError(f"{flag} {raw!r}: {message}")
                knobs[knob] = {**knobs.get(knob, {}), **value}
            elif knob in knobs:
                raise FaultFlagError(f"{flag} {raw!r}: given twice for {_show(target)}")
            else:
                knobs[knob] = value
    rules = []
    for (rule_provider, operation), knobs in targets.items():
        try:
            rules.append(FaultRule(provider=rule_provider, operation=operation, **knobs))
        except ValidationError as exc:
            flags = "/".join(dict.fromkeys(given_by[(rule_provider, operation)]))
            where = _show((rule_provider, operation))
            raise FaultFlagError(f"{flags} for {where}: {one_line(exc)}") from None
    return FaultPlan(rules=rules)


def _split_target(
    flag: str, raw: str, default_provider: str, known: Mapping[str, Collection[str]] | None
) -> tuple[tuple[str, str], str]:
    match = _TARGET.match(raw.strip())
    if match is None:
        return (default_provider, ANY), raw
    provider, operation = match["provider"], match["operation"] or ANY
    if provider != ANY and provider not in PROVIDERS:
        raise FaultFlagError(f"{flag} {raw!r}: unknown provider {provider!r} (use {_provider_list()})")
    if known is not None and operation != ANY:
        providers = PROVIDERS if provider == ANY else (provider,)
        if not any(operation in known[p] for p in providers):
            where = "any provider" if provider == ANY else provider
            raise FaultFlagError(f"{flag} {raw!r}: no operation {operation!r} at {where} (docs/simulator.md)")
    return (provider, operation), match["value"]


def _show(target: tuple[str, str]) -> str:
    return f"{target[0]}:{target[1]}"


def _provider_list() -> str:
    return ", ".join(PROVIDERS) + " or *"


def _number(text: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a number ({what})") from None
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{text!r} must be a non-negative number ({what})")
    return value


def _rate(text: str) -> float:
    percent = text.endswith("%")
    try:
        value = float(text.removesuffix("%"))
    except ValueError:
        value = math.nan
    value = value / 100 if percent else value
    if not 0 <= value <= 1:  # NaN fails too
        raise ValueError("not a rate: use a fraction from 0 to 1 (0.2) or a percentage (20%)")
    return value


def _duration(text: str) -> float:
    match = _DURATION.match(text)
    if not text or match is None or (match["number"] is None and match["unit"] is None):
        raise ValueError(f"{text!r} is not a duration (seconds, or a number with ms, s, m or h)")
    number = float(match["number"]) if match["number"] is not None else 1.0
    return number * _UNITS[match["unit"]]


def _positive(value: float) -> float:
    if value <= 0:
        raise ValueError("must be more than 0")
    return value


def _latency(text: str) -> Latency:
    """``MS``, ``MS+JITTER`` or ``lognormal:MEDIAN:P99`` (milliseconds)."""
    if text.startswith("lognormal:"):
        parts = text.split(":")
        if len(parts) != 3:
            raise ValueError("expected lognormal:MEDIAN:P99 (milliseconds), such as lognormal:40:400")
        median, p99 = (_number(part, "milliseconds") for part in parts[1:])
        if median <= 0 or p99 < median:
            raise ValueError("lognormal needs 0 < MEDIAN <= P99")
        return Latency(median_ms=median, p99_ms=p99)
    fixed, plus, jitter = text.partition("+")
    if plus and not jitter:
        raise ValueError("expected MS, MS+JITTER or lognormal:MEDIAN:P99 (milliseconds)")
    if plus:
        return Latency(fixed_ms=_number(fixed, "milliseconds"), jitter_ms=_number(jitter, "milliseconds"))
    return Latency(fixed_ms=_number(fixed, "milliseconds"))


def _error_rates(text: str) -> dict[int, float]:
    """``STATUS=RATE[,STATUS=RATE...]``."""
    rates: dict[int, float] = {}
    for item in text.split(","):
        status_text, equals, rate_text = item.strip().partition("=")
        if not equals or not status_text.strip().isdigit():
            raise ValueError("expected STATUS=RATE, such as 503=0.2")
        status = int(status_text)
        if not 400 <= status <= 599:
            raise ValueError(f"status {status} is not an HTTP error status (400-599)")
        if status in rates:
            raise ValueError(f"status {status} given twice")
        rates[status] = _rate(rate_text.strip())
    return rates


def _rate_limit(text: str) -> RateLimit:
    """``CALLS/WINDOW``: ``1/30s``, ``10/m``, ``5/1.5``."""
    calls_text, slash, window_text = text.partition("/")
    if not slash or not calls_text.strip().isdigit() or int(calls_text) < 1:
        raise ValueError("expected CALLS/WINDOW, such as 1/30s or 100/m")
    window = _duration(window_text.strip())
    if window <= 0:
        raise ValueError("the window must be longer than 0")
    return RateLimit(calls=int(calls_text), per_seconds=window)


def _timeout_mode(text: str) -> str:
    if text not in ("504", "drop"):
        raise ValueError("expected 504 (answer Gateway Timeout) or drop (close the connection)")
    return text
