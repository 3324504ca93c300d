"""Metric labels come from the vocabulary; the metrics server binds the address it is given."""

from __future__ import annotations

import socket
import urllib.request

import pytest
from prometheus_client import CollectorRegistry

from desired_state.vocabulary import PHASES, CallOutcome, NotConvergedReason, ReconcileResult
from providers.agentmail import _UsernameTaken
from providers.base import ConfigError, Conflict, NameTaken, NotFound, ProviderError, Throttled, Transient
from reconciler.metrics import Metrics, call_outcome, serve_metrics


@pytest.mark.parametrize(
    ("error", "outcome"),
    [
        (None, CallOutcome.OK),
        (Transient("p", "op", "m"), CallOutcome.TRANSIENT),
        (Throttled("p", "op", "m", 1.0), CallOutcome.THROTTLED),
        (NotFound("p", "op", "m"), CallOutcome.NOT_FOUND),
        (Conflict("p", "op", "m"), CallOutcome.CONFLICT),
        (NameTaken("p", "op", "m"), CallOutcome.CONFLICT),
        (_UsernameTaken("p", "op", "m"), CallOutcome.CONFLICT),  # a provider's own subclass
        (ConfigError("p", "op", "m"), CallOutcome.CONFIG_ERROR),
        (ProviderError("p", "op", "m"), CallOutcome.TRANSIENT),
    ],
)
def test_every_provider_error_has_one_outcome_label(error: ProviderError | None, outcome: CallOutcome) -> None:
    assert call_outcome(error) is outcome


def test_labelled_series_start_at_zero_for_every_vocabulary_value() -> None:
    registry = CollectorRegistry()
    Metrics(registry)

    def sample(name: str, labels: dict[str, str]) -> float | None:
        return registry.get_sample_value(name, labels)

    for result in ReconcileResult:
        assert sample("reconciler_reconcile_total", {"kind": "converge", "result": result.value}) == 0
    for phase in PHASES:
        assert sample("reconciler_instances", {"phase": phase.value}) == 0
    for reason in NotConvergedReason:
        assert sample("reconciler_not_converged", {"reason": reason.value}) == 0
    for outcome in CallOutcome:
        labels = {"provider": "agentmail", "operation": "create_inbox", "outcome": outcome.value}
        assert sample("reconciler_provider_calls_total", labels) == 0


def test_the_metrics_server_binds_the_configured_host_only() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.2", 0))
        port = probe.getsockname()[1]
    server = serve_metrics(port, "127.0.0.2", CollectorRegistry())
    try:
        assert server.server_address[:2] == ("127.0.0.2", port)
        with urllib.request.urlopen(f"http://127.0.0.2:{port}/metrics", timeout=5) as answer:
            assert answer.status == 200
        # Not a wildcard: the same port is still free on another local address.
        with socket.socket() as elsewhere:
            elsewhere.bind(("127.0.0.1", port))
    finally:
        server.shutdown()
        server.server_close()
