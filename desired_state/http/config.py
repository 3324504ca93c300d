"""What the HTTP API is built from: :class:`ApiConfig`, and the errors building or serving it raises.

``cli.py`` builds the config from the settings; tests build it directly. Everything the app needs
from the rest of the process comes in here, including the one thing it may know about the
reconcile loop: ``loop_probe``, a callable the reconciler side supplies (this package may not
import ``reconciler/``, ARCHITECTURE.md section 2).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from desired_state.vocabulary import DEFAULT_PREFIX, Tool

API_VERSION = "1.0.0"

LoopProbe = Callable[[], float | None]
"""Seconds since the reconcile loop last finished a tick or a pass (``None``: not yet)."""


class ApiConfigError(ValueError):
    """The API cannot be built with this configuration (for example an empty API key)."""


class ApiStartError(RuntimeError):
    """The API could not start serving (database unreachable, port taken)."""


@dataclass(frozen=True)
class ApiConfig:
    """What the API needs; ``cli.py`` builds it from the settings."""

    api_key: str = field(repr=False)
    """``SERVICES_API_KEY``: the bearer token every route but the probes requires."""
    database_url: str = field(repr=False)
    project_id: str | None = None
    """``RAILWAY_PROJECT_ID``, echoed as ``projectId`` by ``status/batch``."""
    environment_id: str | None = None
    """``RAILWAY_ENVIRONMENT_ID``, used when a seed row's environment is ``unknown``."""
    name_prefix: str = DEFAULT_PREFIX
    """Derived names are ``<prefix>-<instanceId>`` (the ``name`` of ``status/batch``)."""
    wait_timeout: float = 120.0
    """Longest a write waits for convergence before answering 202."""
    tools_enabled: frozenset[str] = frozenset(tool.value for tool in Tool)
    """Tools whose provider key is configured; asking for another one is a 400."""
    poll_interval: float = 0.25
    """Longest pause between two reads of a row a request is waiting on."""
    pool_size: int = 10
    """Postgres connections the API may hold (a waiting request holds none between reads)."""
    events_limit: int = 20
    """Recent events shown by ``GET /instances/{id}``."""
    database_timeout: float = 1.5
    """Longest a request waits for a database connection before answering 503 (a lost database
    must fail fast, not after the pool's default 30 s)."""
    loop_probe: LoopProbe | None = field(default=None, repr=False, compare=False)
    """The reconcile loop's liveness, for ``/readyz``; ``None`` when no loop runs in this process."""
    loop_stale_after: float = 60.0
    """``/readyz`` reports the loop stalled when it has finished no tick or pass for this long."""

    def check(self) -> None:
        """Raise :class:`ApiConfigError` for a configuration the API must not run with."""
        if not self.api_key or not self.api_key.strip():
            raise ApiConfigError("SERVICES_API_KEY is empty: refusing to serve an unauthenticated API")
        if self.wait_timeout < 0:
            raise ApiConfigError("wait_timeout must not be negative")
        if self.poll_interval <= 0 or self.pool_size < 1 or self.events_limit < 0:
            raise ApiConfigError("poll_interval must be positive and pool_size at least 1")
        if self.database_timeout <= 0 or self.loop_stale_after <= 0:
            raise ApiConfigError("database_timeout and loop_stale_after must be positive")
        unknown = set(self.tools_enabled) - {tool.value for tool in Tool}
        if unknown:
            raise ApiConfigError(f"tools_enabled names unknown tools: {', '.join(sorted(unknown))}")
