"""The wire models: every request body and every answer, so ``/openapi.json`` is derived from them.

Requests are validated strictly from the JSON text ("20" is not a number, 1.0 is not an
integer). A create body is the one model every path shares (:class:`InstanceSpec`, the CLI's and
the store's rules) with the JSON-only strictness added; the other bodies are API-only. Rules the
models check in validators are published as JSON Schema keywords too (:func:`publish_rules`), so
a client generated from the document refuses what the API would refuse. Not every rule can be
said in a schema (a cursor must be one this API issued; ``config.limit`` applies to OpenRouter
only): those answer 400 with the field named.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import Path
from pydantic import BaseModel, ConfigDict, Field, field_validator

from desired_state.models import (
    ENV_NAME_PATTERN,
    IMAGE_PATTERN,
    INSTANCE_ID_PATTERN,
    MAX_ENV_VALUE_BYTES,
    MAX_ENV_VARS,
    InstanceSpec,
)
from desired_state.vocabulary import Tool

NO_NUL_REGEX = "^[^\\u0000]*$"
MAX_STATUS_IDS = 100_000


def _strings_without_nul(schema: Any) -> None:
    """Every request string refuses NUL (Postgres text cannot hold it): say so in the schema."""
    if isinstance(schema, dict):
        if schema.get("type") == "string" and "pattern" not in schema and "enum" not in schema:
            schema["pattern"] = NO_NUL_REGEX
        for value in schema.values():
            _strings_without_nul(value)
    elif isinstance(schema, list):
        for item in schema:
            _strings_without_nul(item)


ENV_RULES: dict[str, Any] = {
    "propertyNames": {"pattern": ENV_NAME_PATTERN.pattern},
    "maxProperties": MAX_ENV_VARS,
    "additionalProperties": {
        "type": "string",
        # The rule counts UTF-8 bytes; a schema counts characters, so this bound is looser for
        # non-ASCII text (the API then answers 400 naming the variable).
        "maxLength": MAX_ENV_VALUE_BYTES,
        "description": f"At most {MAX_ENV_VALUE_BYTES} bytes in UTF-8.",
    },
}


def publish_rules(schema: dict[str, Any]) -> None:
    """``json_schema_extra`` of every request model: the validators' rules as schema keywords."""
    properties = schema.get("properties", {})
    if "instanceId" in properties:
        properties["instanceId"].setdefault("pattern", INSTANCE_ID_PATTERN.pattern)
    if "tools" in properties:
        properties["tools"]["uniqueItems"] = True
    for branch in properties.get("image", {}).get("anyOf", []):
        if branch.get("type") == "string":
            branch.setdefault("pattern", IMAGE_PATTERN.pattern)
    for name in ("env", "variables"):
        if name in properties:
            properties[name].update(ENV_RULES)
    _strings_without_nul(schema)


class CreateInstanceRequest(InstanceSpec):
    """A create body: :class:`InstanceSpec` (the CLI's rules), with JSON's types held strictly.

    ``InstanceSpec`` converts loosely (``"20"`` to 20.0, ``true`` to 1), as a YAML file needs; over
    JSON a wrong type is a mistake, so the two numeric fields refuse anything but a number.
    """

    model_config = ConfigDict(json_schema_extra=publish_rules)

    @field_validator("openrouter_limit", mode="before")
    @classmethod
    def _limit_is_a_number(cls, value: Any) -> Any:
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise ValueError("must be a number")
        return value

    @field_validator("redeploy", mode="before")
    @classmethod
    def _redeploy_is_an_integer(cls, value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError("must be an integer")
        return value

    def spec(self) -> InstanceSpec:
        """The plain spec the store takes."""
        return InstanceSpec.model_validate(self.model_dump(by_alias=True))


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, json_schema_extra=publish_rules)


class StatusBatchRequest(_Request):
    instanceIds: list[str] | None = Field(
        default=None, max_length=MAX_STATUS_IDS, description="Only these instances (default: all)."
    )


class ConfigureRequest(_Request):
    variables: dict[str, str] = Field(
        min_length=1, description="Variables merged into the instance's env (others are kept)."
    )
    redeploy: bool = Field(default=False, description="Also bump the redeploy generation.")


class RedeployRequest(_Request):
    pass


class ProvisionConfig(_Request):
    limit: float | None = Field(
        default=None, gt=0, lt=1_000_000, description="OpenRouter only: the key's USD spend limit."
    )


class ProvisionRequest(_Request):
    config: ProvisionConfig | None = None


# -- answers --------------------------------------------------------------------------------------


class HealthResponse(BaseModel):
    ok: bool


class DatabaseReadiness(BaseModel):
    ok: bool
    latencyMs: float | None = Field(description="Round trip of `SELECT 1` (null: it failed).")
    error: str | None = Field(description="Why it failed (the error class only).")


class LoopReadiness(BaseModel):
    ok: bool
    running: bool = Field(description="Whether a reconcile loop runs in this process at all.")
    lastProgressAgeSeconds: float | None = Field(
        description="Since it last finished a tick or a pass (null: not yet)."
    )


class ReadinessResponse(BaseModel):
    ready: bool
    database: DatabaseReadiness
    loop: LoopReadiness


class RegistryTool(BaseModel):
    id: str
    name: str
    mode: str
    envKeys: list[str]
    available: bool = Field(description="Whether the tool's provider key is configured.")


class RegistryResponse(BaseModel):
    tools: list[RegistryTool]


class ResourceRef(BaseModel):
    resourceId: str


class CreateInstanceResponse(BaseModel):
    instanceId: str
    serviceId: str | None
    url: str | None
    services: dict[str, ResourceRef]


class AcceptedResponse(BaseModel):
    instanceId: str
    phase: str
    generation: int | None = Field(description="The generation being converged (None: being deleted).")
    statusUrl: str = Field(description="Poll this for progress: GET /instances/{instanceId}.")


class DestroyedFlags(BaseModel):
    openrouter: bool
    agentmail: bool
    telnyx: bool
    volumes: bool
    service: bool


class DestroyResponse(BaseModel):
    instanceId: str
    destroyed: DestroyedFlags


class BatchService(BaseModel):
    instanceId: str
    serviceId: str
    name: str
    deployStatus: str | None
    domain: str | None
    image: str | None
    environmentIds: list[str]


class StatusBatchResponse(BaseModel):
    projectId: str | None
    services: list[BatchService]


class OkResponse(BaseModel):
    instanceId: str
    ok: bool


class ProvisionResponse(BaseModel):
    toolId: str
    resourceId: str
    envKey: str
    status: str


class DestroyToolResponse(BaseModel):
    toolId: str
    resourceId: str
    deleted: bool


# -- path parameters -------------------------------------------------------------------------------

InstanceIdPath = Annotated[
    str,
    Path(alias="instanceId", pattern=INSTANCE_ID_PATTERN.pattern, description="Instance id (1-32 of A-Za-z0-9_-)."),
]
ToolPath = Annotated[Tool, Path(alias="toolId", description="openrouter, agentmail or telnyx.")]
ResourcePath = Annotated[
    str, Path(alias="resourceId", min_length=1, max_length=500, description="The tool's resource id.")
]


class InstanceSummary(BaseModel):
    instanceId: str
    name: str
    present: bool
    tools: list[str]
    generation: int
    observedGeneration: int | None
    phase: str
    lastError: str | None
    updatedAt: datetime


class InstanceList(BaseModel):
    items: list[InstanceSummary]
    nextCursor: str | None = Field(description="Pass as ?cursor= for the next page; null on the last.")
