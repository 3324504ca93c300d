"""The four built-in services: their definitions and input/output models (issue 12, part 1).

* ``util.delay-echo`` (job, 1 credit): sleeps ``seconds`` (0-300), reporting progress each second,
  and echoes ``payload``; ``fail: true`` makes it raise (to try the refund path).
* ``util.echo`` (proxy, 1 credit): forwards any JSON object to ``UTIL_ECHO_BASE_URL`` and returns
  the answer.
* ``agents.provision`` (job, ``AGENTS_PROVISION_COST_CREDITS``, default 100): writes a desired
  instance owned by the caller and completes when it is Ready; times out after
  ``AGENTS_PROVISION_TIMEOUT_SECONDS`` (default 600). Idempotent: a re-run finds the same instance.
* ``agents.destroy`` (job, free): tears down an instance the caller owns.

The provision input reuses the instance rules of :mod:`desired_state.models` (tool ids, variable
names and sizes), so a paid provision refuses exactly what ``reconciler apply`` refuses.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from pydantic import BaseModel, ConfigDict, Field, JsonValue, model_validator

from desired_state.models import INSTANCE_ID_PATTERN, SpecError, Tool, parse_instance
from desired_state.services.definitions import AnyObject, ServiceDefinition, ServiceRegistry
from desired_state.services.vocabulary import Runtime

DELAY_ECHO: Final = "util.delay-echo"
ECHO: Final = "util.echo"
PROVISION: Final = "agents.provision"
DESTROY: Final = "agents.destroy"

MAX_DELAY_SECONDS: Final = 300
UTIL_ECHO_BASE_URL: Final = "UTIL_ECHO_BASE_URL"
"""The variable naming util.echo's upstream (read by the handler, on the reconciler's side)."""
PROVISION_COST_VARIABLE: Final = "AGENTS_PROVISION_COST_CREDITS"
PROVISION_TIMEOUT_VARIABLE: Final = "AGENTS_PROVISION_TIMEOUT_SECONDS"


class _Input(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DelayEchoInput(_Input):
    seconds: float = Field(default=0, ge=0, le=MAX_DELAY_SECONDS, description="How long to sleep (0-300 s).")
    payload: JsonValue = Field(default=None, description="Any JSON value, echoed in the result.")
    fail: bool = Field(default=False, description="Raise at the end instead of succeeding (tries the refund path).")


class DelayEchoOutput(BaseModel):
    payload: JsonValue = None
    seconds: float


class ProvisionInput(_Input):
    """An agent instance to provision: the fields of an instance spec a caller may choose."""

    name: str = Field(min_length=1, max_length=200, description="Human name of the instance.")
    tools: list[Tool] = Field(default_factory=list, description="Tools to provision: openrouter, agentmail, telnyx.")
    env: dict[str, str] = Field(default_factory=dict, description="Extra variables for the runtime.")

    @model_validator(mode="after")
    def _instance_rules(self) -> ProvisionInput:
        # The instance model's rules, applied to these fields; the id is a placeholder (the
        # handler derives the real one from the job id).
        try:
            parse_instance({"instanceId": "placeholder", "name": self.name, "tools": self.tools, "env": self.env})
        except SpecError as exc:
            raise ValueError("; ".join(exc.problems)) from None
        return self


class ResourceRefOut(BaseModel):
    resourceId: str


class ProvisionOutput(BaseModel):
    instanceId: str
    url: str | None
    services: dict[str, ResourceRefOut]


class DestroyInput(_Input):
    instanceId: str = Field(pattern=INSTANCE_ID_PATTERN.pattern, description="An instance you own.")


class DestroyOutput(BaseModel):
    instanceId: str
    destroyed: bool


@dataclass(frozen=True)
class BuiltinSettings:
    """The settings the built-in definitions depend on."""

    provision_cost_credits: int = 100
    provision_timeout_seconds: float = 600.0

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> BuiltinSettings:
        """Read ``AGENTS_PROVISION_COST_CREDITS`` and ``AGENTS_PROVISION_TIMEOUT_SECONDS``.

        Raises ``ValueError`` with one line naming the variable.
        """
        cost = cls.provision_cost_credits
        raw = env.get(PROVISION_COST_VARIABLE, "").strip()
        if raw:
            if not raw.isdigit() or int(raw) > 10**12:
                raise ValueError(f"{PROVISION_COST_VARIABLE} must be a whole number of credits, like 100")
            cost = int(raw)
        timeout = cls.provision_timeout_seconds
        raw = env.get(PROVISION_TIMEOUT_VARIABLE, "").strip()
        if raw:
            try:
                timeout = float(raw)
            except ValueError:
                raise ValueError(f"{PROVISION_TIMEOUT_VARIABLE} must be a number of seconds, like 600") from None
            if not 0 < timeout <= 86_400:
                raise ValueError(f"{PROVISION_TIMEOUT_VARIABLE} must be between 0 and 86400 seconds")
        return cls(provision_cost_credits=cost, provision_timeout_seconds=timeout)


def builtin_definitions(settings: BuiltinSettings | None = None) -> list[ServiceDefinition]:
    settings = settings or BuiltinSettings()
    return [
        ServiceDefinition(
            id=DELAY_ECHO,
            summary="Sleep `seconds` (0-300), reporting progress each second, then echo `payload`.",
            runtime=Runtime.JOB,
            cost_credits=1,
            input_model=DelayEchoInput,
            output_model=DelayEchoOutput,
            timeout_seconds=MAX_DELAY_SECONDS + 60,
        ),
        ServiceDefinition(
            id=ECHO,
            summary="Forward a JSON object to the echo upstream and return its answer.",
            runtime=Runtime.PROXY,
            cost_credits=1,
            input_model=AnyObject,
            output_model=AnyObject,
            timeout_seconds=30,
        ),
        ServiceDefinition(
            id=PROVISION,
            summary="Provision an agent instance you own (Railway service and the tools asked for); "
            "completes when it is Ready.",
            runtime=Runtime.JOB,
            cost_credits=settings.provision_cost_credits,
            input_model=ProvisionInput,
            output_model=ProvisionOutput,
            timeout_seconds=settings.provision_timeout_seconds,
            idempotent=True,
            max_attempts=3,
        ),
        ServiceDefinition(
            id=DESTROY,
            summary="Tear down an agent instance you own; completes when every resource is gone.",
            runtime=Runtime.JOB,
            cost_credits=0,
            input_model=DestroyInput,
            output_model=DestroyOutput,
            timeout_seconds=600,
            idempotent=True,
            max_attempts=3,
        ),
    ]


def builtin_registry(settings: BuiltinSettings | None = None) -> ServiceRegistry:
    return ServiceRegistry(builtin_definitions(settings))


def provision_instance_id(job_id: Any) -> str:
    """The instance ``agents.provision`` writes for a job: derived from the job id (so a re-run
    finds the same instance), within the instance id alphabet and length."""
    return "j" + str(job_id).replace("-", "")[:31]
