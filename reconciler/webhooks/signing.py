"""Standard Webhooks signatures: ``v1,<base64 HMAC-SHA256(secret, "id.timestamp.body")>``.

The receiver's idempotency key is ``webhook-id`` (stable across retries), the replay guard is
``webhook-timestamp`` (unix seconds of *this* attempt, checked against a tolerance), and the MAC
covers both plus the exact body bytes sent, so neither can be swapped without the signature
failing. HMAC (not a hash of a secret-prefixed string) is what makes the construction safe from
length extension.

Secrets are written ``whsec_<base64 of 24-64 random bytes>``; the key is the decoded bytes.
Several secrets (rotation) produce several space-separated signatures; a receiver accepts the
message when any one verifies. :func:`verify` is our receiving side, used by the tests next to an
independent implementation (the ``standardwebhooks`` package).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

SECRET_PREFIX: Final = "whsec_"  # noqa: S105 (the format prefix)
SECRET_MIN_BYTES: Final = 24
SECRET_MAX_BYTES: Final = 64
NEW_SECRET_BYTES: Final = 32
SIGNATURE_VERSION: Final = "v1"
DEFAULT_TOLERANCE_SECONDS: Final = 300
"""How far a receiver lets ``webhook-timestamp`` be from its clock (the reference library's 5 min)."""


class InvalidSecret(ValueError):
    """A secret that is not ``whsec_`` + base64 of 24-64 bytes. The message never holds the secret."""


class VerificationError(Exception):
    """A delivery whose headers or signature do not check out."""


@dataclass(frozen=True)
class SigningKey:
    """One decoded secret; ``repr`` never shows it."""

    key: bytes

    def __repr__(self) -> str:
        return "SigningKey('***')"


def new_secret() -> str:
    """A fresh ``whsec_`` secret (32 random bytes)."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(NEW_SECRET_BYTES)).decode()


def parse_secret(text: str) -> SigningKey:
    if not text.startswith(SECRET_PREFIX):
        raise InvalidSecret(f"a webhook secret must start with {SECRET_PREFIX!r}")
    try:
        key = base64.b64decode(text[len(SECRET_PREFIX) :], validate=True)
    except (binascii.Error, ValueError):
        raise InvalidSecret(f"a webhook secret must be {SECRET_PREFIX!r} followed by base64") from None
    if not SECRET_MIN_BYTES <= len(key) <= SECRET_MAX_BYTES:
        raise InvalidSecret(f"a webhook secret must decode to {SECRET_MIN_BYTES}-{SECRET_MAX_BYTES} bytes")
    return SigningKey(key)


def parse_secrets(text: str) -> tuple[SigningKey, ...]:
    """Space-separated secrets, each signing every message (rotation)."""
    return tuple(parse_secret(part) for part in text.split())


def _mac(key: SigningKey, webhook_id: str, timestamp: int, body: bytes) -> bytes:
    signed = webhook_id.encode() + b"." + str(timestamp).encode() + b"." + body
    return hmac.new(key.key, signed, hashlib.sha256).digest()


def sign(keys: Sequence[SigningKey], webhook_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header value: one ``v1,<base64>`` per key, space-separated."""
    if not keys:
        raise ValueError("signing needs at least one secret")
    if "." in webhook_id:
        raise ValueError("a webhook id must not contain '.'")
    return " ".join(
        f"{SIGNATURE_VERSION},{base64.b64encode(_mac(key, webhook_id, timestamp, body)).decode()}" for key in keys
    )


def signed_headers(keys: Sequence[SigningKey], webhook_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    return {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(keys, webhook_id, timestamp, body),
    }


def verify(
    keys: Sequence[SigningKey],
    headers: Mapping[str, str],
    body: bytes,
    *,
    now: float,
    tolerance: float = DEFAULT_TOLERANCE_SECONDS,
) -> str:
    """Check a delivery as a receiver would; returns its ``webhook-id`` or raises VerificationError."""
    lowered = {name.lower(): value for name, value in headers.items()}
    webhook_id = lowered.get("webhook-id")
    raw_timestamp = lowered.get("webhook-timestamp")
    signatures = lowered.get("webhook-signature")
    if not (webhook_id and raw_timestamp and signatures):
        raise VerificationError("missing webhook-id, webhook-timestamp or webhook-signature")
    if not raw_timestamp.isdigit():
        raise VerificationError("webhook-timestamp is not unix seconds")
    timestamp = int(raw_timestamp)
    if abs(now - timestamp) > tolerance:
        raise VerificationError("webhook-timestamp is outside the tolerance")
    for key in keys:
        expected = _mac(key, webhook_id, timestamp, body)
        for candidate in signatures.split():
            version, _, encoded = candidate.partition(",")
            if version != SIGNATURE_VERSION:
                continue
            try:
                given = base64.b64decode(encoded, validate=True)
            except (binascii.Error, ValueError):
                continue
            if hmac.compare_digest(expected, given):
                return webhook_id
    raise VerificationError("no signature matches")
