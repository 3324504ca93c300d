"""The sender's words for what an attempt came to, shared by the sender and the metrics."""

from __future__ import annotations

import enum


class AttemptLabel(enum.StrEnum):
    """What one attempt came to, as ``reconciler_webhook_attempts_total`` labels it."""

    SUCCESS = "success"
    REDIRECT = "redirect"  # 3xx: not followed, a failure
    CLIENT_ERROR = "client_error"
    GONE = "gone"  # 410: no more retries
    THROTTLED = "throttled"  # 429
    SERVER_ERROR = "server_error"
    TRANSPORT_ERROR = "transport_error"  # timeout, connection, name lookup
    REFUSED = "refused"  # a private, loopback or metadata address: not sent, not retried
