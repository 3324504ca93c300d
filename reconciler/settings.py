"""Settings from the environment, with the seed Services API's variable names.

Everything the program needs from outside arrives here, once, at start-up, and is checked then.
:class:`Settings` is a ``pydantic-settings`` model: each field names its variable
(``validation_alias``) and its rule, the library reads the process environment (no ``.env``
file, no secrets directory), and :func:`load_settings` turns the first problem into a
:class:`SettingsError` of one line naming the variable, never a traceback and never a
half-started loop. Credentials are :class:`~pydantic.SecretStr` (``repr`` and ``str`` show
asterisks); the database URLs, which may hold a password, are left out of ``repr`` as well.
A value is never echoed in an error.

A blank variable (empty or only spaces) counts as unset: the field keeps its default. The
pass-through instance variables are the exception: they are handed to instances exactly as set.

Which settings are required depends on the command: ``reconciler run`` needs Railway; a tool's
key is needed only once an instance asks for that tool (a missing key then shows up on that
instance as a configuration error, not as a refusal to start).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from contextvars import ContextVar
from typing import Annotated, Any, Final

import psycopg
from psycopg.conninfo import conninfo_to_dict
from pydantic import AfterValidator, BeforeValidator, Field, PrivateAttr, SecretStr, ValidationError
from pydantic_core import PydanticCustomError, PydanticUseDefault
from pydantic_settings import BaseSettings, EnvSettingsSource, PydanticBaseSettingsSource, SettingsConfigDict

from desired_state.services.builtin import UTIL_ECHO_BASE_URL, BuiltinSettings
from desired_state.vocabulary import DEFAULT_PREFIX
from providers.openrouter import LIMIT_RESETS
from providers.railway import BEARER_KIND, PROJECT_KIND
from reconciler.admission import parse_limits

DEFAULT_RUNTIME_IMAGE: Final = "ghcr.io/xmtplabs/convos-runtime:latest"

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

MAX_PREFIX_LENGTH: Final = 20


class SettingsError(Exception):
    """A setting is missing or malformed; the message is one line naming the variable."""


def _rule(message: str) -> PydanticCustomError:
    """A broken rule; :func:`load_settings` prefixes the variable's name to ``message``."""
    return PydanticCustomError("setting", message)


def _stripped(value: Any) -> Any:
    """Surrounding spaces dropped; a blank value leaves the field at its default."""
    if isinstance(value, str):
        value = value.strip()
        if not value:
            raise PydanticUseDefault()
    return value


def _conninfo(value: str | None) -> str | None:
    if value is not None:
        try:
            conninfo_to_dict(value)  # a postgresql:// URL or a "host=... dbname=..." string
        except psycopg.ProgrammingError:
            raise _rule("must be a postgresql:// URL or a libpq connection string") from None
    return value


def _http_url(value: str | None) -> str | None:
    if value is None:
        return None
    if not value.startswith(("http://", "https://")):
        raise _rule("must be an http:// or https:// URL")
    return value.rstrip("/")


def _port(value: Any) -> Any:
    if isinstance(value, str) and not (value.isdigit() and 0 < int(value) < 65536):
        raise _rule("must be a port number from 1 to 65535")
    return value


def _dollars(value: Any) -> Any:
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise _rule("must be a number of US dollars, like 20") from None
    if not 0 < value < 1_000_000:
        raise _rule("must be a positive number of US dollars")
    return value


def _limit_reset(value: Any) -> Any:
    if isinstance(value, str):
        value = value.lower()
        if value in ("none", "never"):
            return None
        if value not in LIMIT_RESETS:
            raise _rule("must be daily, weekly, monthly or never")
    return value


def _token_kind(value: Any) -> Any:
    if isinstance(value, str):
        value = value.lower()
        if value not in (BEARER_KIND, PROJECT_KIND):
            raise _rule(f"must be {BEARER_KIND!r} or {PROJECT_KIND!r}")
    return value


def _prefix(value: str) -> str:
    if not value.replace("-", "").isalnum() or len(value) > MAX_PREFIX_LENGTH:
        raise _rule(f"must be up to {MAX_PREFIX_LENGTH} letters, digits or dashes")
    return value


def _rate_limits(value: str | None) -> str | None:
    try:
        parse_limits(value)
    except ValueError as exc:
        raise _rule("item " + str(exc).removeprefix("RECONCILER_RATE_LIMITS: ")) from None
    return value


Text = Annotated[str | None, BeforeValidator(_stripped)]
Credential = Annotated[SecretStr | None, BeforeValidator(_stripped)]
DatabaseUrl = Annotated[str | None, AfterValidator(_conninfo), BeforeValidator(_stripped)]
HttpUrl = Annotated[str | None, AfterValidator(_http_url), BeforeValidator(_stripped)]


def _variable(name: str, default: Any = None, *, secret: bool = False) -> Any:
    """A field read from variable ``name``; ``secret`` keeps it out of ``repr``."""
    return Field(default, validation_alias=name, repr=not secret)


class Settings(BaseSettings):
    """Everything read from the environment. Each field's alias is the variable it comes from."""

    model_config = SettingsConfigDict(case_sensitive=True, frozen=True, extra="ignore")

    database_url: DatabaseUrl = _variable("SERVICE_DATABASE_URL", secret=True)
    """None means an embedded Postgres under ``.reconciler/``."""
    services_api_key: Credential = _variable("SERVICES_API_KEY")
    """Bearer token of the HTTP API."""
    pool_database_url: DatabaseUrl = _variable("POOL_DATABASE_URL", secret=True)
    """The pool manager's database, read only by ``reconciler migrate`` for the backfill and
    ``--drop`` of an upgraded system (``reconciler.legacy``)."""
    port: Annotated[int, BeforeValidator(_port), BeforeValidator(_stripped)] = _variable("PORT", 3002)
    """HTTP API port."""

    railway_token: Credential = _variable("RAILWAY_API_TOKEN")
    railway_token_kind: Annotated[str, BeforeValidator(_token_kind), BeforeValidator(_stripped)] = _variable(
        "RAILWAY_TOKEN_KIND", BEARER_KIND
    )
    """``bearer`` (account/workspace token) or ``project``."""
    railway_project_id: Text = _variable("RAILWAY_PROJECT_ID")
    railway_environment_id: Text = _variable("RAILWAY_ENVIRONMENT_ID")
    """Or the name below, resolved at start-up."""
    railway_environment_name: Text = _variable("RAILWAY_ENVIRONMENT_NAME")
    runtime_image: Annotated[str, BeforeValidator(_stripped)] = _variable(
        "RAILWAY_RUNTIME_IMAGE", DEFAULT_RUNTIME_IMAGE
    )

    openrouter_key: Credential = _variable("OPENROUTER_MANAGEMENT_KEY")
    openrouter_limit: Annotated[float, BeforeValidator(_dollars), BeforeValidator(_stripped)] = _variable(
        "OPENROUTER_KEY_LIMIT", 20.0
    )
    """USD spend limit per key."""
    openrouter_limit_reset: Annotated[
        str | None, BeforeValidator(_limit_reset), BeforeValidator(_stripped)
    ] = _variable("OPENROUTER_KEY_LIMIT_RESET")
    """daily, weekly or monthly; unset means never (the product intent)."""

    agentmail_key: Credential = _variable("AGENTMAIL_API_KEY")
    agentmail_domain: Text = _variable("AGENTMAIL_DOMAIN")
    """Custom inbox domain."""

    telnyx_key: Credential = _variable("TELNYX_API_KEY")
    telnyx_messaging_profile_id: Text = _variable("TELNYX_MESSAGING_PROFILE_ID")
    """Use this profile instead of get-or-create."""

    railway_api_url: HttpUrl = _variable("RAILWAY_API_URL")
    openrouter_api_url: HttpUrl = _variable("OPENROUTER_API_URL")
    agentmail_api_url: HttpUrl = _variable("AGENTMAIL_API_URL")
    telnyx_api_url: HttpUrl = _variable("TELNYX_API_URL")

    name_prefix: Annotated[str, AfterValidator(_prefix), BeforeValidator(_stripped)] = _variable(
        "RECONCILER_NAME_PREFIX", DEFAULT_PREFIX
    )
    """Derived names are ``<prefix>-<instance id>``."""
    rate_limits: Annotated[str | None, AfterValidator(_rate_limits), BeforeValidator(_stripped)] = _variable(
        "RECONCILER_RATE_LIMITS"
    )
    """Per-provider calls per second shared by all replicas, such as ``railway=10,telnyx=5/10``
    (rate, optional /burst); unset means the built-in defaults."""
    secret_key: Credential = _variable("RECONCILER_SECRET_KEY")
    """Seals the provider secrets we store (``reconciler.secrets_box``)."""
    util_echo_base_url: HttpUrl = _variable(UTIL_ECHO_BASE_URL)
    """The upstream of the ``util.echo`` proxy service (unset: it answers ``upstream_not_configured``
    and refunds)."""
    _builtin_services: BuiltinSettings = PrivateAttr(default_factory=BuiltinSettings)

    # The seed's instance variables, handed to every instance as set (some are secrets).
    openclaw_primary_model: SecretStr | None = _variable("OPENCLAW_PRIMARY_MODEL")
    xmtp_env: SecretStr | None = _variable("XMTP_ENV")
    pool_api_key: SecretStr | None = _variable("POOL_API_KEY")
    bankr_api_key: SecretStr | None = _variable("BANKR_API_KEY")
    telnyx_phone_number: SecretStr | None = _variable("TELNYX_PHONE_NUMBER")
    telnyx_messaging_profile: SecretStr | None = _variable("TELNYX_MESSAGING_PROFILE_ID")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """The environment only (no ``.env`` file, no secrets directory), or the mapping given
        to :func:`load_settings` instead of it."""
        given = _GIVEN_ENVIRONMENT.get()
        return (init_settings, env_settings if given is None else _MappingSource(settings_cls, given))

    @property
    def urls(self) -> Mapping[str, str]:
        """``RAILWAY_API_URL``, ``OPENROUTER_API_URL``, ``AGENTMAIL_API_URL``, ``TELNYX_API_URL``."""
        configured = {
            "RAILWAY_API_URL": self.railway_api_url,
            "OPENROUTER_API_URL": self.openrouter_api_url,
            "AGENTMAIL_API_URL": self.agentmail_api_url,
            "TELNYX_API_URL": self.telnyx_api_url,
        }
        return {name: configured[name] or default for name, default in DEFAULT_URLS.items()}

    @property
    def pass_through(self) -> Mapping[str, str]:
        """The seed's instance variables that are set, with their values (never log this)."""
        values = {
            "OPENCLAW_PRIMARY_MODEL": self.openclaw_primary_model,
            "XMTP_ENV": self.xmtp_env,
            "POOL_API_KEY": self.pool_api_key,
            "BANKR_API_KEY": self.bankr_api_key,
            "TELNYX_PHONE_NUMBER": self.telnyx_phone_number,
            "TELNYX_MESSAGING_PROFILE_ID": self.telnyx_messaging_profile,
        }
        return {name: value.get_secret_value() for name, value in values.items() if value is not None}

    @property
    def builtin_services(self) -> BuiltinSettings:
        """``AGENTS_PROVISION_COST_CREDITS`` and ``AGENTS_PROVISION_TIMEOUT_SECONDS``, read by
        :meth:`BuiltinSettings.from_env` (the paid services' own settings, one parser)."""
        return self._builtin_services

    def require_railway(self) -> None:
        """Refuse to run the loop without the Railway settings every instance needs."""
        if not self.railway_token:
            raise SettingsError("RAILWAY_API_TOKEN is not set (the Railway token the reconciler acts with)")
        if not self.railway_project_id:
            raise SettingsError("RAILWAY_PROJECT_ID is not set (the Railway project instances live in)")
        if not (self.railway_environment_id or self.railway_environment_name):
            raise SettingsError("RAILWAY_ENVIRONMENT_ID or RAILWAY_ENVIRONMENT_NAME must be set")

    def require_api_key(self) -> SecretStr:
        if self.services_api_key is None:
            raise SettingsError("SERVICES_API_KEY is not set: refusing to serve an unauthenticated API")
        return self.services_api_key


_GIVEN_ENVIRONMENT: ContextVar[Mapping[str, str] | None] = ContextVar("given_environment", default=None)


class _MappingSource(EnvSettingsSource):
    """The library's environment source, reading a given mapping instead of ``os.environ``."""

    def __init__(self, settings_cls: type[BaseSettings], environment: Mapping[str, str]) -> None:
        self._environment = environment
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return dict(self._environment)


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Read and check every setting from ``env`` (default: the process environment).

    Raises :class:`SettingsError` naming the first bad variable and its rule, never its value.
    """
    token = _GIVEN_ENVIRONMENT.set(env)
    try:
        settings = Settings()
    except ValidationError as exc:
        first = exc.errors(include_input=False, include_url=False)[0]
        variable = ".".join(str(part) for part in first["loc"]) or "a setting"
        raise SettingsError(f"{variable} {first['msg']}") from None
    finally:
        _GIVEN_ENVIRONMENT.reset(token)
    try:
        settings._builtin_services = BuiltinSettings.from_env(os.environ if env is None else env)
    except ValueError as exc:
        raise SettingsError(str(exc)) from None
    return settings
