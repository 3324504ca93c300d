"""The webhook sender's settings, read from the environment once at start-up.

A malformed value stops the program with one line naming the variable (never echoing a secret).

* ``SERVICE_WEBHOOK_SECRET``: one or more ``whsec_`` secrets separated by spaces; every delivery is
  signed with each (rotation: add the new secret, let receivers switch, remove the old one).
  Unset, jobs still run and are pollable and their deliveries are recorded ``disabled``.
* ``WEBHOOK_ALLOW_PRIVATE``: ``1`` lets deliveries reach loopback, private, link-local and
  metadata addresses (tests, a private network you trust); default ``0``.
* ``WEBHOOK_TIMEOUT_SECONDS``: how long one attempt may take, default 15.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from reconciler.settings import SettingsError
from reconciler.webhooks.signing import InvalidSecret, SigningKey, parse_secrets

SECRET_VARIABLE: Final = "SERVICE_WEBHOOK_SECRET"  # noqa: S105 (a variable name)
ALLOW_PRIVATE_VARIABLE: Final = "WEBHOOK_ALLOW_PRIVATE"
TIMEOUT_VARIABLE: Final = "WEBHOOK_TIMEOUT_SECONDS"
DEFAULT_TIMEOUT_SECONDS: Final = 15.0

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("", "0", "false", "no", "off")


@dataclass(frozen=True)
class WebhookSettings:
    keys: tuple[SigningKey, ...] = ()
    """The signing secrets; empty means deliveries are recorded ``disabled``."""
    allow_private: bool = False
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS

    @property
    def enabled(self) -> bool:
        return bool(self.keys)


def load_webhook_settings(env: Mapping[str, str] | None = None) -> WebhookSettings:
    env = os.environ if env is None else env
    try:
        keys = parse_secrets(env.get(SECRET_VARIABLE, ""))
    except InvalidSecret as exc:
        raise SettingsError(f"{SECRET_VARIABLE}: {exc} (`reconciler webhooks secret` prints one)") from None

    raw_private = env.get(ALLOW_PRIVATE_VARIABLE, "").strip().lower()
    if raw_private not in _TRUE + _FALSE:
        raise SettingsError(f"{ALLOW_PRIVATE_VARIABLE} must be 1 or 0")

    raw_timeout = env.get(TIMEOUT_VARIABLE, "").strip()
    try:
        timeout = float(raw_timeout) if raw_timeout else DEFAULT_TIMEOUT_SECONDS
    except ValueError:
        raise SettingsError(f"{TIMEOUT_VARIABLE} must be a number of seconds, like 15") from None
    if not 0 < timeout <= 60:
        raise SettingsError(f"{TIMEOUT_VARIABLE} must be more than 0 and at most 60 seconds")

    return WebhookSettings(keys=keys, allow_private=raw_private in _TRUE, timeout_seconds=timeout)
