"""Structured logs: one JSON object a line when stderr is not a terminal, plain text when it is.

Fields passed with ``extra={...}`` become JSON keys. Messages are built by our own code from
closed vocabularies and provider error texts that already went through ``providers.http.redact``;
no log call in this code base is handed a credential.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from datetime import UTC, datetime
from typing import Any

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        document: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                document[key] = value
        if record.exc_info:
            document["exc"] = self.formatException(record.exc_info)
        return json.dumps(document, default=str)


def configure_logging(level: str | None = None) -> None:
    """Log to stderr at ``RECONCILER_LOG_LEVEL`` (default INFO)."""
    handler = logging.StreamHandler(sys.stderr)
    if sys.stderr.isatty():
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    else:
        handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel((level or os.environ.get("RECONCILER_LOG_LEVEL", "INFO")).upper())
    # Per-request logs of the HTTP client and the scheduler's chatter are not useful at INFO.
    for noisy in ("httpx", "httpcore", "pgserver"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # A tick still running when the next is due is skipped by design (it drains the queue anyway).
    logging.getLogger("apscheduler").setLevel(logging.ERROR)


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (a driver's rest is context and hints), else its type."""
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
