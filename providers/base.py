"""The provider seam: one error vocabulary and one small driver protocol.

Every provider client (Railway, OpenRouter, AgentMail, Telnyx) speaks HTTP through an injected
``httpx.AsyncClient``, so the same code talks to the real API or to ``providers.simulated``.
The reconciler never sees HTTP: it sees *drivers*, one per resource kind, and the errors below.

Error hierarchy (what the reconciler does with each)::

    ProviderError                 base; carries provider and operation, never a secret
    ├── Transient                 5xx, timeouts, connection errors, malformed answers: retry with backoff
    ├── Throttled(retry_after)    429 or a provider-specific "too quickly": defer exactly, not an error
    ├── NotFound                  the resource is not there: on delete it means "already gone"
    ├── Conflict                  409/422 style clashes (a number already sold): retry
    │   └── NameTaken             our derived name is held by someone else: terminal, for a human
    └── ConfigError               401/403, bad input, missing setting: needs a human, slow retry only

A driver manages exactly one kind of resource for one instance. Its contract, which every
implementation must honour for the crash-safety promise of ARCHITECTURE.md section 3:

* ``lookup(want)`` finds the resource by its *derived name* (or, for resources that have no
  name, by the dependency they hang off). It is what adoption after a crash relies on, so it must
  page through the provider's whole listing.
* ``create(want)`` creates it and returns what was observed. It is only called after the
  reconciler has committed its intent and checked ``lookup``.
* ``observe(external_id, want)`` reads it; raises ``NotFound`` if it is gone.
* ``update(external_id, want)`` brings the fields we own to ``want``.
* ``delete(external_id, want)`` removes it; raises ``NotFound`` if it was already gone.
* ``list_managed(prefix)`` lists every resource of its kind whose name starts with ``prefix``,
  all pages, in a number of calls that does not grow with the fleet (a page at a time): the
  observer's batched read and the garbage collector's inventory. A kind that has no name of ours
  and hangs off another resource (a Railway volume or domain) is not listed on its own and
  answers None; so does a provider that is not configured (nothing of ours can exist there).

Drivers never retry in long internal loops: throttling is surfaced to the reconciler, which
records it durably and defers.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable


class ProviderError(Exception):
    """A provider call failed. ``str()`` is safe to log: it never contains a credential."""

    def __init__(self, provider: str, operation: str, message: str) -> None:
        self.provider = provider
        self.operation = operation
        self.message = message
        super().__init__(f"{provider} {operation}: {message}")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.provider!r}, {self.operation!r}, {self.message!r})"


class Transient(ProviderError):
    """A failure that may go away by itself (5xx, timeout, connection reset, garbled answer)."""


class Throttled(ProviderError):
    """The provider asked us to slow down; ``retry_after`` is in seconds (may be 0 if unknown)."""

    def __init__(self, provider: str, operation: str, message: str, retry_after: float) -> None:
        super().__init__(provider, operation, message)
        self.retry_after = max(0.0, retry_after)


class NotFound(ProviderError):
    """The resource does not exist at the provider."""


class Conflict(ProviderError):
    """The request clashes with existing provider state."""


class NameTaken(Conflict):
    """The resource's derived name is held at the provider by something we do not own.

    Unlike other conflicts, waiting cannot resolve it: a human must free the name (or the caller
    choose another id). Nothing was created, so the reconciler records no create in doubt.
    """


class ConfigError(ProviderError):
    """Credentials or configuration are wrong; retrying soon will not help."""


class ResourceKind(enum.StrEnum):
    """Every kind of provider resource the reconciler manages, in creation order.

    Tools come first (Telnyx first: it is the scarcest and fails fastest), then the Railway
    service, its volume and domain, and last the deployment config, which carries every tool's
    value in one ``environmentPatchCommit`` so the first deploy sees all variables.
    """

    TELNYX_NUMBER = "telnyx_number"
    OPENROUTER_KEY = "openrouter_key"
    AGENTMAIL_INBOX = "agentmail_inbox"
    RAILWAY_SERVICE = "railway_service"
    RAILWAY_VOLUME = "railway_volume"
    RAILWAY_DOMAIN = "railway_domain"
    RAILWAY_DEPLOYMENT = "railway_deployment"

    @property
    def provider(self) -> str:
        return self.value.split("_", 1)[0]


CREATE_ORDER: tuple[ResourceKind, ...] = tuple(ResourceKind)
DELETE_ORDER: tuple[ResourceKind, ...] = tuple(reversed(CREATE_ORDER))


@dataclass(frozen=True)
class DesiredResource:
    """What one resource of one instance should look like.

    ``params`` holds only fields we own. ``depends`` maps a kind to the external id of a resource
    this one hangs off (the Railway service id for a volume, say). ``secrets`` holds values that
    must reach the provider but never a log (tool keys inside Railway variables).
    """

    kind: ResourceKind
    instance_id: str
    name: str
    params: Mapping[str, Any] = field(default_factory=dict)
    depends: Mapping[str, str] = field(default_factory=dict)
    secrets: Mapping[str, str] = field(default_factory=dict, repr=False)


@dataclass(frozen=True)
class Observed:
    """What a provider holds for one resource.

    ``attributes`` are non-secret and safe to store and show. ``secret`` is a value the provider
    returns only once (an OpenRouter key); it is kept out of ``repr``. ``ready`` is False while
    the provider is still converging on its side (a Telnyx number whose purchase is pending).
    ``status`` is the provider's own word for the resource's state, passed on raw: where that
    word is all there is (a Railway ``DeploymentStatus``), the reconciler decides what it means
    (``desired_state.vocabulary.DEPLOYMENT_STATES``) and the driver leaves ``ready`` alone.
    """

    external_id: str
    name: str
    attributes: Mapping[str, Any] = field(default_factory=dict)
    secret: str | None = field(default=None, repr=False)
    ready: bool = True
    status: str = "ready"
    secrets: Mapping[str, str] = field(default_factory=dict, repr=False)
    """Live values we compare but never store or show (a Railway service's variables, as listed)."""


@runtime_checkable
class ResourceDriver(Protocol):
    """Manages one kind of resource. See the module docstring for the contract."""

    kind: ResourceKind

    async def lookup(self, want: DesiredResource) -> Observed | None: ...

    async def observe(self, external_id: str, want: DesiredResource) -> Observed: ...

    async def create(self, want: DesiredResource) -> Observed: ...

    async def update(self, external_id: str, want: DesiredResource) -> Observed: ...

    async def delete(self, external_id: str, want: DesiredResource) -> None: ...

    async def list_managed(self, prefix: str) -> list[Observed] | None: ...
