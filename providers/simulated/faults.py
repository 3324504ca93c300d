"""Fault knobs for the simulated providers: one mechanism shared by every fake.

This module is the public front of three modules of one concern each, so existing imports
(``from providers.simulated.faults import FaultPlan, parse_fault_flags``) keep working:

* :mod:`providers.simulated.fault_plan` - the plan model: :class:`FaultRule` (a provider, an
  operation and some knobs), :class:`FaultPlan` (the rules, and how they combine into the
  :class:`Knobs` for one call), :class:`Latency`, :class:`RateLimit`;
* :mod:`providers.simulated.fault_layer` - the ASGI middleware each fake sits behind
  (:class:`Faults`: latency, queued failures, rate limits, random timeouts, throttles, errors,
  list lag and the request log), with :func:`early_calls` to check clients waited;
* :mod:`providers.simulated.fault_flags` - the ``reconciler simulate`` flag grammar
  (:func:`parse_fault_flags`, :class:`FaultFlagError`);

and :func:`known_operations` (:mod:`providers.simulated.catalog`), the operation names each
fake gives its requests. The imports run one way: plan <- layer <- the fakes <- catalog <-
flags <- this module, so nothing imports in a cycle (``tests/test_simulator_modules.py`` checks).
The fakes import the plan and the layer directly, never this module. docs/simulator.md is the
user's guide to the knobs.
"""

from __future__ import annotations

from providers.simulated.catalog import known_operations
from providers.simulated.fault_flags import FaultFlagError, parse_fault_flags
from providers.simulated.fault_layer import (
    HISTORY,
    Failure,
    Faults,
    OperationNamer,
    RateLimitAnswer,
    early_calls,
    route_operations,
)
from providers.simulated.fault_plan import (
    ANY,
    DEFAULT_RETRY_AFTER,
    DEFAULT_TIMEOUT_SECONDS,
    KNOBS,
    PROVIDERS,
    UNKNOWN,
    FaultPlan,
    FaultRule,
    Knobs,
    Latency,
    RateLimit,
)

__all__ = [
    "ANY",
    "DEFAULT_RETRY_AFTER",
    "DEFAULT_TIMEOUT_SECONDS",
    "HISTORY",
    "KNOBS",
    "PROVIDERS",
    "UNKNOWN",
    "Failure",
    "FaultFlagError",
    "FaultPlan",
    "FaultRule",
    "Faults",
    "Knobs",
    "Latency",
    "OperationNamer",
    "RateLimit",
    "RateLimitAnswer",
    "early_calls",
    "known_operations",
    "parse_fault_flags",
    "route_operations",
]
