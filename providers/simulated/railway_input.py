"""Checking what a Railway mutation is given: environment patches, variable maps, mount paths.

``environmentPatchCommit`` takes an opaque JSON ``EnvironmentConfig``; :func:`service_patch`
checks one ``services.<id>`` entry of it into a :class:`ServiceChange` before anything changes
(a commit applies whole or not at all) and :func:`apply` writes it to a service instance. Every
failure is a :func:`~providers.simulated.railway_schema.bad_input` error whose message never
echoes a variable's value.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from providers.simulated.railway_schema import bad_input
from providers.simulated.railway_state import Instance

_VARIABLE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_SERVICE_KEYS = frozenset({"source", "deploy", "build", "variables", "networking", "volumeMounts", "isDeleted"})
_DEPLOY_KEYS = frozenset(
    {
        "startCommand",
        "limitOverride",
        "numReplicas",
        "healthcheckPath",
        "healthcheckTimeout",
        "restartPolicyType",
        "restartPolicyMaxRetries",
        "region",
        "multiRegionConfig",
        "sleepApplication",
        "cronSchedule",
        "drainingSeconds",
        "overlapSeconds",
        "preDeployCommand",
    }
)


def mount_path(value: Any) -> str:
    """An absolute mount path other than ``/``."""
    if not isinstance(value, str) or not value.startswith("/") or value == "/" or " " in value:
        raise bad_input("Invalid mount path: use an absolute path other than /")
    return value


def string_map(value: Any, where: str) -> dict[str, str]:
    """A map of variable names to string values (``serviceCreate``'s ``variables``)."""
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise bad_input(f"Invalid {where}: expected a map of names to string values")
    for name in value:
        if not _VARIABLE_NAME.match(name):
            raise bad_input(f"Invalid variable name {name!r}")
    return dict(value)


@dataclass
class ServiceChange:
    """What one service entry of an environment patch sets (None: left alone)."""

    image: str | None = None
    start_command: str | None = None
    cpu: float | None = None
    memory_bytes: int | None = None
    variables: dict[str, str | None] = field(default_factory=dict)


def service_patch(service_id: str, config: Any) -> ServiceChange:
    """Check one ``services.<id>`` entry of a patch; messages never echo a variable's value."""
    where = f"services.{service_id}"
    if not isinstance(config, dict):
        raise bad_input(f"Invalid environment config: {where} must be an object")
    unknown = set(config) - _SERVICE_KEYS
    if unknown:
        raise bad_input(f"Invalid environment config: unknown field(s) {sorted(unknown)} in {where}")
    change = ServiceChange()
    source = _object(config.get("source"), f"{where}.source")
    if source.get("repo"):
        raise bad_input("repository sources are not supported by the simulator")
    change.image = _optional(source.get("image"), str, f"{where}.source.image")
    deploy = _object(config.get("deploy"), f"{where}.deploy")
    unknown = set(deploy) - _DEPLOY_KEYS
    if unknown:
        raise bad_input(f"Invalid environment config: unknown field(s) {sorted(unknown)} in {where}.deploy")
    change.start_command = _optional(deploy.get("startCommand"), str, f"{where}.deploy.startCommand")
    override = _object(deploy.get("limitOverride"), f"{where}.deploy.limitOverride")
    containers = f"{where}.deploy.limitOverride.containers"
    limits = _object(override.get("containers"), containers)
    change.cpu = _optional(limits.get("cpu"), (int, float), f"{containers}.cpu")
    change.memory_bytes = _optional(limits.get("memoryBytes"), int, f"{containers}.memoryBytes")
    variables = _object(config.get("variables"), f"{where}.variables")
    for name, entry in variables.items():
        if not _VARIABLE_NAME.match(name):
            raise bad_input(f"Invalid variable name {name!r} in {where}.variables")
        if entry is None:
            change.variables[name] = None  # null deletes the variable
            continue
        value = entry.get("value") if isinstance(entry, dict) else None
        if not isinstance(value, str):
            raise bad_input(f"Invalid environment config: {where}.variables.{name} needs a string 'value'")
        change.variables[name] = value
    return change


def apply(instance: Instance, change: ServiceChange) -> None:
    """Write a checked change to a service instance (a null variable is removed)."""
    if change.image is not None:
        instance.image = change.image
    if change.start_command is not None:
        instance.start_command = change.start_command
    if change.cpu is not None:
        instance.cpu = float(change.cpu)
    if change.memory_bytes is not None:
        instance.memory_bytes = change.memory_bytes
    for name, value in change.variables.items():
        if value is None:
            instance.variables.pop(name, None)
        else:
            instance.variables[name] = value


def _object(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise bad_input(f"Invalid environment config: {where} must be an object")
    return value


def _optional(value: Any, kind: type | tuple[type, ...], where: str) -> Any:
    """``value`` if it is None or of ``kind`` (a bool is not a number here)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, kind):
        raise bad_input(f"Invalid environment config: {where} has the wrong type")
    return value
