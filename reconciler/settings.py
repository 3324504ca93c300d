"""Settings from the environment, with the seed Services API's variable names.

Everything the program needs from outside arrives here, once, at start-up, and is checked
then: a missing or malformed value stops the program with one line naming the variable
(:class:`SettingsError`), never a traceback and never a half-started loop. Credentials are held
as :class:`Secret`, whose ``repr`` and ``str`` never show the value.

Which settings are required depends on the command: ``reconciler run`` needs Railway; a tool's
key is needed only once an instance asks for that tool (a missing key then shows up on that
instance as a configuration error, not as a refusal to start).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

import psycopg
from psycopg.conninfo import conninfo_to_dict

from desired_state.services.builtin import UTIL_ECHO_BASE_URL, BuiltinSettings
from reconciler.admission import parse_limits

DEFAULT_RUNTIME_IMAGE: Final = "ghcr.io/xmtplabs/convos-runtime:latest"
DEFAULT_PREFIX: Final = "convos-agent"

# Variables passed through to every instance's runtime (seed "Instance env vars" table).
PASS_THROUGH_VARIABLES: Final = (
    "OPENCLAW_PRIMARY_MODEL",
    "XMTP_ENV",
    "POOL_API_KEY",
    "BANKR_API_KEY",
    "TELNYX_PHONE_NUMBER",
    "TELNYX_MESSAGING_PROFILE_ID",
)

DEFAULT_URLS: Final = {
    "RAILWAY_API_URL": "https://backboard.railway.com/graphql/v2",
    "OPENROUTER_API_URL": "https://openrouter.ai/api/v1",
    "AGENTMAIL_API_URL": "https://api.agentmail.to/v0",
    "TELNYX_API_URL": "https://api.telnyx.com/v2",
}

LIMIT_RESETS: Final = ("daily", "weekly", "monthly")


class SettingsError(Exception):
    """A setting is missing or malformed; the message is one line naming the variable."""


class Secret:
    """A credential: compares and hashes by value, never prints it."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __bool__(self) -> bool:
        return bool(self._value)


@dataclass(frozen=True)
class Settings:
    """Everything read from the environment. Field docs name the variable each comes from."""

    database_url: str | None
    """``SERVICE_DATABASE_URL``; None means an embedded Postgres under ``.reconciler/``."""
    services_api_key: Secret | None
    """``SERVICES_API_KEY``: bearer token of the HTTP API."""
    pool_database_url: str | None
    """``POOL_DATABASE_URL``: the pool manager's database, read only by ``reconciler migrate`` for
    the backfill and ``--drop`` of an upgraded system (``reconciler.legacy``)."""
    port: int
    """``PORT``: HTTP API port (default 3002)."""

    railway_token: Secret | None
    """``RAILWAY_API_TOKEN``."""
    railway_token_kind: str
    """``RAILWAY_TOKEN_KIND``: ``bearer`` (account/workspace token, default) or ``project``."""
    railway_project_id: str | None
    """``RAILWAY_PROJECT_ID``."""
    railway_environment_id: str | None
    """``RAILWAY_ENVIRONMENT_ID`` (or the name below, resolved at start-up)."""
    railway_environment_name: str | None
    """``RAILWAY_ENVIRONMENT_NAME``."""
    runtime_image: str
    """``RAILWAY_RUNTIME_IMAGE`` (default ``ghcr.io/xmtplabs/convos-runtime:latest``)."""

    openrouter_key: Secret | None
    """``OPENROUTER_MANAGEMENT_KEY``."""
    openrouter_limit: float
    """``OPENROUTER_KEY_LIMIT``: USD spend limit per key (default 20)."""
    openrouter_limit_reset: str | None
    """``OPENROUTER_KEY_LIMIT_RESET``: daily, weekly or monthly; unset means never (the product intent)."""

    agentmail_key: Secret | None
    """``AGENTMAIL_API_KEY``."""
    agentmail_domain: str | None
    """``AGENTMAIL_DOMAIN``: custom inbox domain."""

    telnyx_key: Secret | None
    """``TELNYX_API_KEY``."""
    telnyx_messaging_profile_id: str | None
    """``TELNYX_MESSAGING_PROFILE_ID``: use this profile instead of get-or-create."""

    urls: Mapping[str, str]
    """``RAILWAY_API_URL``, ``OPENROUTER_API_URL``, ``AGENTMAIL_API_URL``, ``TELNYX_API_URL``."""
    pass_through: Mapping[str, str] = field(default_factory=dict)
    """Instance variables of the seed's table, as set (secrets among them: never logged)."""
    name_prefix: str = DEFAULT_PREFIX
    """``RECONCILER_NAME_PREFIX``: derived names are ``<prefix>-<instance id>``."""
    rate_limits: str | None = None
    """``RECONCILER_RATE_LIMITS``: per-provider calls per second shared by all replicas, such as
    ``railway=10,telnyx=5/10`` (rate, optional /burst); unset means the built-in defaults."""
    util_echo_base_url: str | None = None
    """``UTIL_ECHO_BASE_URL``: the upstream of the ``util.echo`` proxy service (unset: it answers
    ``upstream_not_configured`` and refunds)."""
    builtin_services: BuiltinSettings = field(default_factory=BuiltinSettings)
    """``AGENTS_PROVISION_COST_CREDITS`` and ``AGENTS_PROVISION_TIMEOUT_SECONDS``."""

    def require_railway(self) -> None:
        """Refuse to run the loop without the Railway settings every instance needs."""
        if not self.railway_token:
            raise SettingsError("RAILWAY_API_TOKEN is not set (the Railway token the reconciler acts with)")
        if not self.railway_project_id:
            raise SettingsError("RAILWAY_PROJECT_ID is not set (the Railway project instances live in)")
        if not (self.railway_environment_id or self.railway_environment_name):
            raise SettingsError("RAILWAY_ENVIRONMENT_ID or RAILWAY_ENVIRONMENT_NAME must be set")

    def require_api_key(self) -> Secret:
        if self.services_api_key is None or not self.services_api_key.reveal().strip():
            raise SettingsError("SERVICES_API_KEY is not set: refusing to serve an unauthenticated API")
        return self.services_api_key


def _text(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(name)
    if value is None:
        return None
    value = value.strip()
    return value or None


def _secret(env: Mapping[str, str], name: str) -> Secret | None:
    value = _text(env, name)
    return Secret(value) if value else None


def _url(env: Mapping[str, str], name: str) -> str:
    value = _text(env, name) or DEFAULT_URLS[name]
    if not value.startswith(("http://", "https://")):
        raise SettingsError(f"{name} must be an http:// or https:// URL")
    return value.rstrip("/")


def _database_url(env: Mapping[str, str], name: str) -> str | None:
    value = _text(env, name)
    if value is not None:
        try:
            conninfo_to_dict(value)  # a postgresql:// URL or a "host=... dbname=..." string
        except psycopg.ProgrammingError:
            raise SettingsError(f"{name} must be a postgresql:// URL or a libpq connection string") from None
    return value


def _port(env: Mapping[str, str], name: str, default: int) -> int:
    raw = _text(env, name)
    if raw is None:
        return default
    if not raw.isdigit() or not 0 < int(raw) < 65536:
        raise SettingsError(f"{name} must be a port number from 1 to 65535")
    return int(raw)


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Read and check every setting; raises :class:`SettingsError` naming the first bad variable."""
    env = os.environ if env is None else env

    database_url = _database_url(env, "SERVICE_DATABASE_URL")
    pool_database_url = _database_url(env, "POOL_DATABASE_URL")

    raw_limit = _text(env, "OPENROUTER_KEY_LIMIT")
    try:
        limit = 20.0 if raw_limit is None else float(raw_limit)
    except ValueError:
        raise SettingsError("OPENROUTER_KEY_LIMIT must be a number of US dollars, like 20") from None
    if not 0 < limit < 1_000_000:
        raise SettingsError("OPENROUTER_KEY_LIMIT must be a positive number of US dollars")

    limit_reset = _text(env, "OPENROUTER_KEY_LIMIT_RESET")
    if limit_reset is not None:
        limit_reset = limit_reset.lower()
        if limit_reset in ("none", "never"):
            limit_reset = None
        elif limit_reset not in LIMIT_RESETS:
            raise SettingsError("OPENROUTER_KEY_LIMIT_RESET must be daily, weekly, monthly or never")

    token_kind = (_text(env, "RAILWAY_TOKEN_KIND") or "bearer").lower()
    if token_kind not in ("bearer", "project"):
        raise SettingsError("RAILWAY_TOKEN_KIND must be 'bearer' or 'project'")

    prefix = _text(env, "RECONCILER_NAME_PREFIX") or DEFAULT_PREFIX
    if not prefix.replace("-", "").isalnum() or len(prefix) > 20:
        raise SettingsError("RECONCILER_NAME_PREFIX must be up to 20 letters, digits or dashes")

    rate_limits = _text(env, "RECONCILER_RATE_LIMITS")
    try:
        parse_limits(rate_limits)
    except ValueError as exc:
        raise SettingsError(str(exc)) from None

    echo_url = _text(env, UTIL_ECHO_BASE_URL)
    if echo_url is not None and not echo_url.startswith(("http://", "https://")):
        raise SettingsError(f"{UTIL_ECHO_BASE_URL} must be an http:// or https:// URL")
    try:
        builtin_services = BuiltinSettings.from_env(env)
    except ValueError as exc:
        raise SettingsError(str(exc)) from None

    return Settings(
        database_url=database_url,
        services_api_key=_secret(env, "SERVICES_API_KEY"),
        pool_database_url=pool_database_url,
        port=_port(env, "PORT", 3002),
        railway_token=_secret(env, "RAILWAY_API_TOKEN"),
        railway_token_kind=token_kind,
        railway_project_id=_text(env, "RAILWAY_PROJECT_ID"),
        railway_environment_id=_text(env, "RAILWAY_ENVIRONMENT_ID"),
        railway_environment_name=_text(env, "RAILWAY_ENVIRONMENT_NAME"),
        runtime_image=_text(env, "RAILWAY_RUNTIME_IMAGE") or DEFAULT_RUNTIME_IMAGE,
        openrouter_key=_secret(env, "OPENROUTER_MANAGEMENT_KEY"),
        openrouter_limit=limit,
        openrouter_limit_reset=limit_reset,
        agentmail_key=_secret(env, "AGENTMAIL_API_KEY"),
        agentmail_domain=_text(env, "AGENTMAIL_DOMAIN"),
        telnyx_key=_secret(env, "TELNYX_API_KEY"),
        telnyx_messaging_profile_id=_text(env, "TELNYX_MESSAGING_PROFILE_ID"),
        urls={name: _url(env, name) for name in DEFAULT_URLS},
        pass_through={name: env[name] for name in PASS_THROUGH_VARIABLES if name in env},
        name_prefix=prefix,
        rate_limits=rate_limits,
        util_echo_base_url=echo_url.rstrip("/") if echo_url else None,
        builtin_services=builtin_services,
    )
