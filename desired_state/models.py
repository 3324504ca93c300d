"""What callers want: the desired-instance model and its validation rules.

A desired instance is the caller's whole wish for one agent: a Railway service (always), plus
the tools it asks for. Field names on the wire are the seed Services API's ``create-instance``
names (``instanceId``, ``name``, ``tools``) plus ``env`` and ``image``; Python code uses
snake_case. Validation happens here, once, so the CLI, the store and the HTTP API refuse the same
bad input with the same message, before anything is written.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from desired_state.vocabulary import Tool as Tool  # re-exported: its home is the vocabulary

# The pool generates ids with nanoid (alphabet A-Za-z0-9_-), 12 characters by default. We accept
# 1..32 of that alphabet: derived names ("convos-agent-" + id) must stay within Railway's limits.
INSTANCE_ID_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
ENV_NAME_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
IMAGE_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._/:@-]{0,254}$")
MAX_ENV_VARS = 200
MAX_ENV_VALUE_BYTES = 32 * 1024


class InstanceSpec(BaseModel):
    """One desired instance, as written by the pool manager."""

    model_config = ConfigDict(populate_by_name=True, extra="forbid", frozen=True)

    instance_id: str = Field(
        alias="instanceId", description="Pool instance id (nanoid alphabet, 1-32 chars)."
    )
    name: str = Field(default="", max_length=200, description="Human name; defaults to the instance id.")
    tools: tuple[Tool, ...] = Field(
        default=(), description="Tools to provision: openrouter, agentmail, telnyx."
    )
    env: dict[str, str] = Field(default_factory=dict, description="Extra variables for the runtime.")
    image: str | None = Field(default=None, description="Runtime image override.")
    openrouter_limit: float | None = Field(
        default=None,
        alias="openrouterLimit",
        gt=0,
        lt=1_000_000,
        description="USD spend limit of this instance's OpenRouter key (default: OPENROUTER_KEY_LIMIT).",
    )
    redeploy: int = Field(
        default=0,
        ge=0,
        le=2**31,
        description="Bump to force a fresh deploy with the same spec (the redeploy generation).",
    )

    @field_validator("instance_id")
    @classmethod
    def _instance_id_format(cls, value: str) -> str:
        if not INSTANCE_ID_PATTERN.fullmatch(value):
            raise ValueError("must be 1-32 characters of A-Z, a-z, 0-9, '_' or '-'")
        return value

    @field_validator("tools", mode="before")
    @classmethod
    def _tools_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            raise ValueError("must be a list of tool ids, not a string")
        return value

    @field_validator("tools")
    @classmethod
    def _tools_unique_sorted(cls, value: tuple[Tool, ...]) -> tuple[Tool, ...]:
        if len(set(value)) != len(value):
            raise ValueError("lists a tool more than once")
        order = list(Tool)
        return tuple(sorted(value, key=order.index))

    @field_validator("env")
    @classmethod
    def _env_rules(cls, value: dict[str, str]) -> dict[str, str]:
        if len(value) > MAX_ENV_VARS:
            raise ValueError(f"has more than {MAX_ENV_VARS} variables")
        for key, val in value.items():
            if not ENV_NAME_PATTERN.fullmatch(key):
                raise ValueError(f"variable name {key!r} must match [A-Za-z_][A-Za-z0-9_]*")
            if len(val.encode()) > MAX_ENV_VALUE_BYTES:
                raise ValueError(f"value of {key} is longer than {MAX_ENV_VALUE_BYTES} bytes")
        return value

    @field_validator("image")
    @classmethod
    def _image_format(cls, value: str | None) -> str | None:
        if value is not None and not IMAGE_PATTERN.fullmatch(value):
            raise ValueError("must be a lowercase image reference like ghcr.io/org/repo:tag")
        return value

    def display_name(self) -> str:
        return self.name or self.instance_id

    def spec_document(self) -> dict[str, Any]:
        """The JSON stored in ``desired_instances.spec`` (everything but the key and name)."""
        document: dict[str, Any] = {
            "tools": [t.value for t in self.tools],
            "env": dict(sorted(self.env.items())),
            "image": self.image,
        }
        if self.redeploy:
            document["redeploy"] = self.redeploy
        if self.openrouter_limit is not None:
            document["openrouterLimit"] = self.openrouter_limit
        return document

    @classmethod
    def from_row(cls, instance_id: str, name: str, spec: Mapping[str, Any]) -> InstanceSpec:
        return cls(
            instance_id=instance_id,
            name=name,
            tools=tuple(spec.get("tools", ())),
            env=dict(spec.get("env", {})),
            image=spec.get("image"),
            redeploy=int(spec.get("redeploy", 0)),
            openrouter_limit=spec.get("openrouterLimit"),
        )


class SpecError(ValueError):
    """Bad desired-state input. ``str()`` names the field and the rule, one line per problem."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problems))


def describe_validation_error(error: ValidationError, where: str = "") -> list[str]:
    """Turn pydantic's error into ``field: rule`` lines, without echoing the input values."""
    lines = []
    for item in error.errors():
        loc = ".".join(str(part) for part in item["loc"]) or "(item)"
        msg = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            msg = "is not a known field"
        lines.append(f"{where}{loc}: {msg}")
    return lines


def parse_instance(data: Any, where: str = "") -> InstanceSpec:
    """Validate one caller-supplied instance; raises ``SpecError`` naming each bad field."""
    if not isinstance(data, Mapping):
        raise SpecError([f"{where or 'item'}: must be an object with instanceId, name, tools, env"])
    try:
        return InstanceSpec.model_validate(dict(data))
    except ValidationError as exc:
        raise SpecError(describe_validation_error(exc, where)) from None


def parse_instances(items: Any) -> list[InstanceSpec]:
    """Validate a whole list; all-or-nothing, and duplicate ids are refused."""
    if isinstance(items, Mapping) and "instances" in items:
        items = items["instances"]
    if isinstance(items, Mapping):
        items = [items]
    if not isinstance(items, list):
        raise SpecError(["file: must hold a list of instances (or an object with an 'instances' list)"])
    problems: list[str] = []
    specs: list[InstanceSpec] = []
    seen: set[str] = set()
    for index, item in enumerate(items):
        try:
            spec = parse_instance(item, where=f"[{index}].")
        except SpecError as exc:
            problems.extend(exc.problems)
            continue
        if spec.instance_id in seen:
            problems.append(f"[{index}].instanceId: {spec.instance_id} appears more than once")
        seen.add(spec.instance_id)
        specs.append(spec)
    if problems:
        raise SpecError(problems)
    return specs
