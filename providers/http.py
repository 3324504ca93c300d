"""One HTTP call, one error vocabulary: the transport seam every provider client goes through.

Each client builds its requests and hands them to :class:`ProviderHTTP`, which sends them through
the injected ``httpx.AsyncClient`` and turns every way a call can fail into the hierarchy of
:mod:`providers.base`:

=====================================  =============================================
what happened                          raised
=====================================  =============================================
timeout, connection refused or reset   ``Transient``
HTTP 5xx                               ``Transient``
HTTP 429                               ``Throttled(retry_after)`` (``Retry-After`` in
                                       seconds or as an HTTP date; default below)
HTTP 401 / 403                         ``ConfigError`` (credentials; no hot retry)
HTTP 400                               ``ConfigError`` (we sent something invalid)
HTTP 404                               ``NotFound``
HTTP 409 / 422                         ``Conflict``
a 2xx whose body is not the JSON       ``Transient`` naming provider and operation
the contract promises
=====================================  =============================================

Nothing here retries: throttling and outages go back to the reconciler, which records them in
the row and defers (ARCHITECTURE.md section 3.5). Error texts pass through :func:`redact`, so a
credential echoed by a provider (or present in a URL) never reaches a log line or an exception.

:func:`counting_sent` tells a caller whether any request left inside a block: a create whose
first request the admission refused (``Throttled`` before sending) cannot have landed, so the
reconciler need not look for it later (a lookup costs provider calls under the very rate limit
that refused it).
"""

from __future__ import annotations

import contextlib
import email.utils
import logging
import math
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC
from typing import Any, Protocol, cast

import httpx

from providers.base import ConfigError, Conflict, NotFound, ProviderError, Throttled, Transient

DEFAULT_RETRY_AFTER_SECONDS = 5.0
MAX_RETRY_AFTER_SECONDS = 86_400.0
"""The longest ``Retry-After`` honoured (a day); a longer one is read as this."""
MAX_ERROR_TEXT = 300

# Shapes of credentials we know of; anything matching is masked in error texts.
_SECRET_PATTERNS = (
    re.compile(r"sk-or-v1-[A-Za-z0-9]+"),
    re.compile(r"\bam_[A-Za-z0-9_]{8,}"),
    re.compile(r"\bKEY[0-9A-Za-z_]{16,}"),
    re.compile(r"(?i)bearer\s+[A-Za-z0-9._~+/=-]+"),
)

CallObserver = Callable[[str, str, ProviderError | None, float], None]
"""``(provider, operation, error, seconds)``: told about every call (``error`` None on success),
for metrics. The provider's raw answer is passed on; the caller decides what label it is."""

AnswerCheck = Callable[[httpx.Response, Any], None]
"""``(response, decoded body)``: a provider's own check of a 2xx answer, which may raise a
``ProviderError``: Railway reports errors, throttling included, as HTTP 200 with ``errors[]``."""

CodedError = type[Conflict] | type[ConfigError] | type[NotFound] | type[Transient]
ErrorCodes = Mapping[str, CodedError]
"""Provider error codes (the ``code`` of an error body) mapped to the class to raise, overriding
the status mapping: AgentMail says "username taken" with a 403 ``resource_taken``, a Conflict."""


MIN_REDACTABLE_SECRET = 8
"""A credential shorter than this is too short to redact safely: its value may well occur in a
text by chance (as a word or a number), so masking it hides that text and unmasked it may be
guessed. :class:`ProviderHTTP` warns about such a credential when it is built (at start-up)."""

log = logging.getLogger(__name__)


def redact(text: str, secrets: Sequence[str] = ()) -> str:
    """Mask known secrets and anything shaped like a credential; cut to a loggable length.

    A secret shorter than :data:`MIN_REDACTABLE_SECRET` is masked only where it stands as a whole
    value (not inside a longer word or token), so a value such as ``t`` masks ``t`` and leaves
    every other letter t alone. A longer one cannot occur by chance and is masked wherever it
    appears (inside a URL-encoded query string, say).
    """
    for secret in secrets:
        if len(secret) >= MIN_REDACTABLE_SECRET:
            text = text.replace(secret, "***")
        elif secret:
            text = re.sub(rf"(?<![\w-]){re.escape(secret)}(?![\w-])", "***", text)
    for pattern in _SECRET_PATTERNS:
        text = pattern.sub("***", text)
    if len(text) > MAX_ERROR_TEXT:
        text = text[:MAX_ERROR_TEXT] + "…"
    return text


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delta-seconds or an HTTP date; None if absent
    or unreadable (never raises: the header is the other side's). Capped at
    :data:`MAX_RETRY_AFTER_SECONDS`, so a hostile or broken answer cannot defer work for years."""
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
            if when.tzinfo is None:
                when = when.replace(tzinfo=UTC)
            seconds = when.timestamp() - (now if now is not None else time.time())
        except (TypeError, ValueError, IndexError, OverflowError, OSError):
            return None
    if not math.isfinite(seconds):
        return None
    return min(MAX_RETRY_AFTER_SECONDS, max(0.0, seconds))


@dataclass
class SentRequests:
    """Requests that left for a provider inside one :func:`counting_sent` block."""

    count: int = 0


_sent_requests: ContextVar[SentRequests | None] = ContextVar("providers_sent_requests", default=None)


@contextlib.contextmanager
def counting_sent() -> Iterator[SentRequests]:
    """Count the requests every :class:`ProviderHTTP` sends inside the block (in this task and the
    tasks it starts). A request counts once admitted, before it is sent: one that failed on the
    way may still have landed."""
    sent = SentRequests()
    token = _sent_requests.set(sent)
    try:
        yield sent
    finally:
        _sent_requests.reset(token)


class Admission(Protocol):
    """Decides whether a provider call may go out now; told how each call went.

    The reconciler's implementation is shared by every replica through Postgres (a token bucket,
    ``Retry-After`` and a circuit breaker per provider). ``admit`` waits briefly or raises
    ``Throttled`` with the time to wait; ``settle`` sees every call's error (None on success).
    """

    async def admit(self, provider: str, operation: str) -> None: ...

    async def settle(self, provider: str, operation: str, error: ProviderError | None) -> None: ...


class ProviderHTTP:
    """Sends one provider's requests and maps failures; shared by all of that provider's drivers.

    ``auth_headers`` are added to every request and their values are redacted from every error.
    ``observer`` (optional) is told the outcome and latency of every call. ``timeout`` (seconds)
    bounds each call; None leaves it to the injected client's own timeout, which is how a
    process sets one for every provider at once.
    """

    def __init__(
        self,
        provider: str,
        client: httpx.AsyncClient,
        base_url: str,
        auth_headers: Mapping[str, str],
        *,
        timeout: float | None = None,
        observer: CallObserver | None = None,
        admission: Admission | None = None,
    ) -> None:
        self.provider = provider
        self._admission = admission
        self._client = client
        self._base_url = base_url.rstrip("/")
        self._headers = dict(auth_headers)
        self._secrets = tuple(v.split(" ", 1)[-1] for v in auth_headers.values())
        for name, secret in zip(auth_headers, self._secrets, strict=True):
            if len(secret) < MIN_REDACTABLE_SECRET:
                log.warning(
                    "the %s credential (%s header) is shorter than %d characters: too short to redact "
                    "safely from error texts",
                    provider,
                    name,
                    MIN_REDACTABLE_SECRET,
                )
        self._timeout = timeout
        self._observer = observer

    def redact(self, text: str) -> str:
        return redact(text, self._secrets)

    async def request(
        self,
        operation: str,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, Any] | Sequence[tuple[str, Any]] | None = None,
        expect_json: bool = True,
        error_codes: ErrorCodes | None = None,
        check: AnswerCheck | None = None,
    ) -> Any:
        """Send one request; return the decoded JSON body (or None when ``expect_json`` is False).

        ``check`` sees the response and its decoded body before they are returned; what it raises
        is counted by the observer like any other failure.
        """
        if self._admission is not None:
            await self._admission.admit(self.provider, operation)
        counter = _sent_requests.get()
        if counter is not None:
            counter.count += 1
        started = time.monotonic()
        error: ProviderError | None = None
        answered = False  # the provider answered (well or badly); not a cancellation or our bug
        try:
            response = await self._send(operation, method, path, json=json, params=params)
            self.raise_for_status(operation, response, error_codes)
            body = self.decode(operation, response) if expect_json else None
            if expect_json and check is not None:
                check(response, body)
            answered = True
            return body
        except ProviderError as exc:
            error, answered = exc, True
            raise
        finally:
            if self._observer is not None:
                self._observer(self.provider, operation, error, time.monotonic() - started)
            # Only an answer says anything about the provider's health: a cancelled call must
            # not close an open circuit as if it had succeeded.
            if self._admission is not None and answered:
                await self._admission.settle(self.provider, operation, error)

    async def _send(
        self,
        operation: str,
        method: str,
        path: str,
        *,
        json: Any,
        params: Mapping[str, Any] | Sequence[tuple[str, Any]] | None,
    ) -> httpx.Response:
        url = self._base_url + path
        try:
            response = await self._client.request(
                method,
                url,
                json=json,
                params=cast(Any, params),
                headers=self._headers,
                timeout=httpx.USE_CLIENT_DEFAULT if self._timeout is None else self._timeout,
            )
        except httpx.TimeoutException:
            raise Transient(self.provider, operation, "timed out") from None
        except httpx.TransportError as exc:
            raise Transient(self.provider, operation, f"connection failed: {type(exc).__name__}") from None
        # The client binds the (already read and closed) stream to the response and the response
        # to the stream: a cycle, so every body would wait for the cyclic garbage collector, which
        # on a large heap runs rarely; an observation cycle's pages would pile up (tens of MB at
        # 10,000 instances). httpx breaks the same cycle for requests this way once read.
        response.stream = httpx.ByteStream(response.content)
        return response

    def raise_for_status(
        self, operation: str, response: httpx.Response, error_codes: ErrorCodes | None = None
    ) -> None:
        status = response.status_code
        if status < 400:
            return
        detail = self.redact(_error_text(response))
        message = f"HTTP {status}" + (f": {detail}" if detail else "")
        coded = error_codes.get(_error_code(response)) if error_codes and status != 429 else None
        if coded is not None:
            raise coded(self.provider, operation, message)
        if status == 429:
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
            raise Throttled(
                self.provider,
                operation,
                message,
                DEFAULT_RETRY_AFTER_SECONDS if retry_after is None else retry_after,
            )
        if status in (401, 403):
            raise ConfigError(self.provider, operation, message + " (check the API credentials)")
        if status == 404:
            raise NotFound(self.provider, operation, message)
        if status in (409, 422):
            raise Conflict(self.provider, operation, message)
        if status >= 500 or status in (408, 425):
            raise Transient(self.provider, operation, message)
        raise ConfigError(self.provider, operation, message)

    def decode(self, operation: str, response: httpx.Response) -> Any:
        try:
            return response.json()
        except ValueError:
            kind = response.headers.get("content-type", "unknown content type")
            raise Transient(
                self.provider, operation, f"answer is not JSON (HTTP {response.status_code}, {kind})"
            ) from None


def _error_text(response: httpx.Response) -> str:
    """The most useful short text of an error body, whatever the provider's envelope."""
    try:
        body = response.json()
    except ValueError:
        text = response.text.strip()
        return "" if text.startswith("<") else text[:200]
    return _message_from(body)


def _error_code(response: httpx.Response) -> str:
    """The machine-readable ``code`` of an error body (top level, ``error`` or ``errors[0]``); '' if none."""
    try:
        body = response.json()
    except ValueError:
        return ""
    if isinstance(body, dict):
        errors = body.get("errors")
        if isinstance(errors, list) and errors:
            body = errors[0]
        elif isinstance(body.get("error"), dict):
            body = body["error"]
    code = body.get("code") if isinstance(body, dict) else None
    return "" if code is None else str(code)


def _message_from(body: Any) -> str:
    if isinstance(body, dict):
        for key in ("message", "detail", "title", "name"):
            if isinstance(body.get(key), str):
                return str(body[key])
        for key in ("error", "errors"):
            if key in body:
                return _message_from(body[key])
    if isinstance(body, list) and body:
        return "; ".join(_message_from(item) for item in body[:3])
    if isinstance(body, str):
        return body
    return ""


def require(provider: str, operation: str, body: Any, *path: str | int) -> Any:
    """Walk ``body`` along ``path``; a missing or mistyped step is a ``Transient`` naming it.

    Used on every field a client relies on, so a provider answer that breaks its contract is a
    clear error instead of a ``KeyError`` deep in the reconciler.
    """
    node = body
    walked: list[str] = []
    for step in path:
        walked.append(str(step))
        try:
            node = node[step]
        except (KeyError, IndexError, TypeError):
            raise Transient(
                provider, operation, f"answer lacks {'.'.join(walked)} (contract mismatch)"
            ) from None
    if node is None:
        raise Transient(provider, operation, f"answer has null {'.'.join(walked)} (contract mismatch)")
    return node
