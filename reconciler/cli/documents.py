"""Reading the instance files of ``reconciler apply``: JSON or YAML in, validated specs out.

Whatever is wrong with a file ends as one :class:`~reconciler.cli.common.CommandError` with exit
code 2 and the file named: unreadable bytes, a syntax error, nesting too deep for the decoder, a
number too long to convert, and every rule of :func:`desired_state.models.parse_instances` (with
the field named). Messages never echo a value from the file, which may hold a secret.

A decoded string may not hold a NUL character: JSON (``"\\u0000"``) and YAML (``"\\0"``) can
both express one, and Postgres text cannot store it, so without this check the file passed
validation and failed at the first write with a driver traceback. The check walks the decoded
document once and names the first field that holds one.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from desired_state.models import InstanceSpec, SpecError, parse_instances
from reconciler.cli.common import EXIT_BAD_INPUT, fail

NUL = "\x00"


def read_instances(file: Path) -> list[InstanceSpec]:
    """The validated instances of ``file``, or a one-line exit-2 failure naming what is wrong."""
    kind = "JSON" if file.suffix == ".json" else "YAML"
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        fail(f"{file}: cannot read ({exc.strerror})", EXIT_BAD_INPUT)
    except UnicodeDecodeError as exc:
        fail(f"{file}: not UTF-8 text (byte {exc.start})", EXIT_BAD_INPUT)
    try:
        data = json.loads(text) if kind == "JSON" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        fail(f"{file}: not valid {kind}: {str(exc).splitlines()[0]}", EXIT_BAD_INPUT)
    except RecursionError:
        fail(f"{file}: not valid {kind}: nested too deeply", EXIT_BAD_INPUT)
    except ValueError as exc:  # e.g. an integer literal longer than Python converts
        fail(f"{file}: not valid {kind}: {type(exc).__name__}", EXIT_BAD_INPUT)
    where = nul_location(data)
    if where is not None:
        fail(f"{file}: {where}: must not contain NUL characters", EXIT_BAD_INPUT)
    try:
        return parse_instances(data)
    except SpecError as exc:
        fail(f"{file}: " + "; ".join(exc.problems), EXIT_BAD_INPUT)
    except (ValueError, TypeError, RecursionError) as exc:  # a shape the rules did not foresee
        fail(f"{file}: not a list of instances ({type(exc).__name__})", EXIT_BAD_INPUT)


def nul_location(data: Any, where: str = "") -> str | None:
    """The path (``[0].env``, ``[2].name``) of the first string in ``data`` holding NUL, if any."""
    stack: list[tuple[Any, str]] = [(data, where)]
    while stack:
        value, path = stack.pop()
        if isinstance(value, str):
            if NUL in value:
                return path or "(document)"
        elif isinstance(value, Mapping):
            for key, item in reversed(list(value.items())):
                if isinstance(key, str) and NUL in key:
                    return path or "(document)"
                child = f"{path}.{key}" if path else str(key)
                stack.append((item, child))
        elif isinstance(value, list):
            stack.extend((item, f"{path}[{index}]") for index, item in reversed(list(enumerate(value))))
    return None
