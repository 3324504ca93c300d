"""Prometheus metrics, all under the ``reconciler_`` prefix.

Every labelled series is created at zero when the process starts (:func:`preinitialise`), so a
dashboard or an alert on ``rate(...)`` sees a flat line rather than "no data" until the first
event. Label values are drawn from closed sets (provider, operation, outcome, result); never an
instance id, never anything a caller wrote, never a secret.
"""

from __future__ import annotations

from collections.abc import Iterable
from wsgiref.simple_server import WSGIServer

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from desired_state.services.ledger import INVARIANT_NAMES
from desired_state.services.vocabulary import LIVE_STATUSES, AdmitOutcome, ErrorCode, JobStatus, TransferKind
from desired_state.vocabulary import PHASES, CallOutcome, NotConvergedReason, ReconcileResult
from desired_state.webhooks import WebhookState
from providers import agentmail, openrouter, railway, telnyx
from providers.base import ConfigError, Conflict, NotFound, ProviderError, ResourceKind, Throttled, Transient
from reconciler.webhooks.vocabulary import AttemptLabel

PROVIDER_OPERATIONS: dict[str, tuple[str, ...]] = {
    client.PROVIDER: client.OPERATIONS for client in (railway, openrouter, agentmail, telnyx)
}
"""Every operation name each provider's client reports (its ``operation`` labels)."""
PROVIDERS: tuple[str, ...] = tuple(PROVIDER_OPERATIONS)
RECONCILE_KINDS = ("converge", "teardown")
DRIFT_FIELDS = ("gone", "config")
MUTATION_ACTIONS = ("create", "adopt", "update", "delete", "drift")
NOT_CONVERGED_REASONS: tuple[str, ...] = tuple(NotConvergedReason)
"""The ``reason`` label values (:class:`NotConvergedReason`), for the loop's gauge refresh."""

ERROR_OUTCOMES: dict[type[ProviderError], CallOutcome] = {
    Transient: CallOutcome.TRANSIENT,
    Throttled: CallOutcome.THROTTLED,
    NotFound: CallOutcome.NOT_FOUND,
    Conflict: CallOutcome.CONFLICT,
    ConfigError: CallOutcome.CONFIG_ERROR,
    ProviderError: CallOutcome.TRANSIENT,  # an unclassified failure is retried like a transient one
}
"""The one mapping of a provider's error (its class) to the outcome label; subclasses a provider
keeps for itself (AgentMail's "username taken" is a Conflict) map as their base does."""


def call_outcome(error: ProviderError | None) -> CallOutcome:
    """How a provider call ended, as the ``outcome`` and ``error`` labels say it (None: it succeeded)."""
    if error is None:
        return CallOutcome.OK
    for cls in type(error).__mro__:
        if cls in ERROR_OUTCOMES:
            return ERROR_OUTCOMES[cls]
    raise TypeError(f"not a provider error: {type(error).__name__}")  # unreachable: ProviderError is mapped

WEBHOOK_OUTCOMES = tuple(state.value for state in WebhookState if state is not WebhookState.PENDING)
WEBHOOK_ATTEMPT_RESULTS = tuple(label.value for label in AttemptLabel)
LIVE_JOB_STATUSES = tuple(s.value for s in JobStatus if s in LIVE_STATUSES)
TERMINAL_JOB_STATUSES = tuple(s.value for s in JobStatus if s.terminal)
ADMISSION_OUTCOMES = (AdmitOutcome.ADMITTED.value, AdmitOutcome.REPLAYED.value, *(code.value for code in ErrorCode))
"""Labels of ``reconciler_job_admissions_total``: admitted, replayed, or the refusal's wire code."""


class Metrics:
    """The metric objects, registered in one registry (the global one by default)."""

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.reconcile_total = Counter(
            "reconciler_reconcile_total",
            "Reconcile passes by kind (converge or teardown) and result.",
            ["kind", "result"],
            registry=registry,
        )
        self.reconcile_seconds = Histogram(
            "reconciler_reconcile_duration_seconds",
            "Wall time of one reconcile pass of one instance.",
            ["kind"],
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=registry,
        )
        self.provider_calls = Counter(
            "reconciler_provider_calls_total",
            "Provider API calls by provider, operation and outcome.",
            ["provider", "operation", "outcome"],
            registry=registry,
        )
        self.provider_seconds = Histogram(
            "reconciler_provider_call_duration_seconds",
            "Provider API call latency.",
            ["provider"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 15),
            registry=registry,
        )
        self.throttled = Counter(
            "reconciler_provider_throttled_total",
            "Provider calls answered with a rate limit (deferred, not failed).",
            ["provider"],
            registry=registry,
        )
        self.resource_mutations = Counter(
            "reconciler_resource_mutations_total",
            "Provider-side mutations applied, by resource kind and action.",
            ["resource", "action"],
            registry=registry,
        )
        self.lease_lost = Counter(
            "reconciler_fencing_rejections_total",
            "Writes refused because another worker claimed the row since (stale worker stopped).",
            registry=registry,
        )
        self.queue_due = Gauge("reconciler_queue_due", "Desired rows due for a reconcile now.", registry=registry)
        self.queue_oldest_due_seconds = Gauge(
            "reconciler_queue_oldest_due_seconds",
            "How long the oldest due row has been waiting.",
            registry=registry,
        )
        self.instances = Gauge("reconciler_instances", "Desired instances by phase.", ["phase"], registry=registry)
        self.claim_to_start_seconds = Histogram(
            "reconciler_claim_latency_seconds",
            "From a row becoming due to its claim by a worker.",
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60),
            registry=registry,
        )
        self.time_to_ready_seconds = Histogram(
            "reconciler_time_to_ready_seconds",
            "From a desired instance's creation to its first Ready.",
            buckets=(1, 2, 5, 10, 20, 30, 60, 120, 300, 600),
            registry=registry,
        )
        self.retried = Counter(
            "reconciler_retries_total",
            "Reconcile passes that ended in a retry, by provider and error class.",
            ["provider", "error"],
            registry=registry,
        )
        self.drift_detected = Counter(
            "reconciler_drift_detected_total",
            "Differences between what we applied and what the provider holds, found by observation.",
            ["resource", "field"],
            registry=registry,
        )
        self.orphans_collected = Counter(
            "reconciler_orphans_collected_total",
            "Provider resources with no live desired row, deleted by garbage collection.",
            ["resource"],
            registry=registry,
        )
        self.orphans_seen = Gauge(
            "reconciler_orphans",
            "Provider resources with no live desired row at the last GC pass (including those in grace).",
            ["resource"],
            registry=registry,
        )
        self.not_converged = Gauge(
            "reconciler_not_converged",
            "Instances not converged, by reason (provisioning, retrying, throttled, failed, deleting).",
            ["reason"],
            registry=registry,
        )
        self.circuit_open = Gauge(
            "reconciler_circuit_open",
            "1 while a provider's circuit breaker is open (calls are being shed).",
            ["provider"],
            registry=registry,
        )
        self.observation_seconds = Histogram(
            "reconciler_observation_cycle_seconds",
            "Wall time of one batched observation cycle (every provider listed once).",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
            registry=registry,
        )
        self.webhook_deliveries = Counter(
            "reconciler_webhook_deliveries",
            "Webhook deliveries that reached a final state: delivered, failed (retries exhausted, 410, "
            "refused address) or disabled (no SERVICE_WEBHOOK_SECRET).",
            ["outcome"],
            registry=registry,
        )
        self.webhook_attempts = Counter(
            "reconciler_webhook_attempts",
            "Webhook delivery attempts by result (HTTP status class, transport error, refused address).",
            ["result"],
            registry=registry,
        )
        self.webhook_pending = Gauge(
            "reconciler_webhook_pending", "Webhook deliveries not yet delivered nor given up.", registry=registry
        )
        self.webhook_oldest_undelivered_seconds = Gauge(
            "reconciler_webhook_oldest_undelivered_seconds",
            "Age of the oldest pending webhook delivery (since its job ended).",
            registry=registry,
        )
        self.webhook_oldest_due_seconds = Gauge(
            "reconciler_webhook_oldest_due_seconds",
            "How long the oldest due, unclaimed webhook delivery has waited for the sender.",
            registry=registry,
        )
        # -- paid service jobs --------------------------------------------------------------------
        self.jobs = Gauge(
            "reconciler_jobs",
            "Live jobs (pending, running) by service, from the jobs table.",
            ["service", "status"],
            registry=registry,
        )
        self.jobs_finished = Counter(
            "reconciler_jobs_finished_total",
            "Jobs this process's loop ended, by service and terminal status.",
            ["service", "status"],
            registry=registry,
        )
        self.job_seconds = Histogram(
            "reconciler_job_duration_seconds",
            "From a job's claim to its end, for runs this process ended.",
            ["service"],
            buckets=(0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600),
            registry=registry,
        )
        self.job_admissions = Counter(
            "reconciler_job_admissions_total",
            "Admission decisions by outcome (admitted, replayed, or the refusal's code).",
            ["outcome"],
            registry=registry,
        )
        self.oldest_running_job_seconds = Gauge(
            "reconciler_job_oldest_running_seconds",
            "How long the longest-running job has been running (0 when none is).",
            registry=registry,
        )
        self.ledger_transfers = Gauge(
            "reconciler_ledger_transfers",
            "Ledger transfers ever written, by kind (capture and refund are the settlements).",
            ["kind"],
            registry=registry,
        )
        self.escrow_credits = Gauge(
            "reconciler_escrow_credits",
            "Credits held in escrow for pending and running jobs (from the ledger audit).",
            registry=registry,
        )
        self.ledger_violations = Gauge(
            "reconciler_ledger_violations",
            "Ledger invariants violated at the last audit, by invariant; must stay 0.",
            ["invariant"],
            registry=registry,
        )
        self.preinitialise()

    def preinitialise_jobs(self, services: Iterable[str]) -> None:
        """Every (service, status) series at zero, for the services of the registry in use."""
        for service in services:
            self.job_seconds.labels(service)
            for status in LIVE_JOB_STATUSES:
                self.jobs.labels(service, status)
            for status in TERMINAL_JOB_STATUSES:
                self.jobs_finished.labels(service, status)

    def count_admission(self, outcome: str) -> None:
        """The paid routes' ``on_admission`` hook: ``admitted``, ``replayed`` or the refusal's code."""
        if outcome not in ADMISSION_OUTCOMES:
            raise ValueError(f"unknown admission outcome {outcome!r}")
        self.job_admissions.labels(outcome).inc()

    def preinitialise(self) -> None:
        for kind in RECONCILE_KINDS:
            self.reconcile_seconds.labels(kind)
            for result in ReconcileResult:
                self.reconcile_total.labels(kind, result.value)
        for provider in PROVIDERS:
            self.provider_seconds.labels(provider)
            self.throttled.labels(provider)
            for operation in PROVIDER_OPERATIONS[provider]:
                for outcome in CallOutcome:
                    self.provider_calls.labels(provider, operation, outcome.value)
        for resource in ResourceKind:
            for action in MUTATION_ACTIONS:
                self.resource_mutations.labels(resource.value, action)
        for phase in PHASES:
            self.instances.labels(phase.value)
        for reason in NotConvergedReason:
            self.not_converged.labels(reason.value)
        for provider in PROVIDERS:
            self.circuit_open.labels(provider)
            for error in CallOutcome:
                if error is not CallOutcome.OK:
                    self.retried.labels(provider, error.value)
        for resource in ResourceKind:
            self.orphans_collected.labels(resource.value)
            self.orphans_seen.labels(resource.value)
            for drift in DRIFT_FIELDS:
                self.drift_detected.labels(resource.value, drift)
        for delivery_outcome in WEBHOOK_OUTCOMES:
            self.webhook_deliveries.labels(delivery_outcome)
        for attempt_result in WEBHOOK_ATTEMPT_RESULTS:
            self.webhook_attempts.labels(attempt_result)
        for admission_outcome in ADMISSION_OUTCOMES:
            self.job_admissions.labels(admission_outcome)
        for kind in TransferKind:
            self.ledger_transfers.labels(kind.value)
        for invariant in INVARIANT_NAMES:
            self.ledger_violations.labels(invariant)

    def observe_call(self, provider: str, operation: str, error: ProviderError | None, seconds: float) -> None:
        """The :data:`providers.http.CallObserver` hook."""
        outcome = call_outcome(error)
        self.provider_calls.labels(provider, operation, outcome.value).inc()
        self.provider_seconds.labels(provider).observe(seconds)
        if outcome is CallOutcome.THROTTLED:
            self.throttled.labels(provider).inc()


def serve_metrics(port: int, host: str, registry: CollectorRegistry = REGISTRY) -> WSGIServer:
    """Serve ``/metrics`` of ``registry`` on ``host:port`` from a daemon thread; the server.

    The address is the one the operator configured for the process (``--host``), never a
    wildcard of our own choosing: a process bound to 127.0.0.1 keeps its metrics private too.
    Raises ``OSError`` when the address cannot be bound.
    """
    server, _ = start_http_server(port, addr=host, registry=registry)
    return server


_default: Metrics | None = None


def default_metrics() -> Metrics:
    """The process-wide metrics in the global registry (created once)."""
    global _default
    if _default is None:
        _default = Metrics()
    return _default
