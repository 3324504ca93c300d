"""JSON Schema (as pydantic writes it for our service models) to pydantic v2 source code.

The SDK's models are generated from the JSON Schema of each definition's input and output model,
the same schema the catalog publishes, so the SDK depends on nothing of ours. The subset handled
is what pydantic emits for plain models: objects (closed or open), ``$ref`` into ``$defs``,
``anyOf`` unions, enums and consts (as ``Literal``), arrays, maps (``additionalProperties``), the
scalar types, ``{}`` (any JSON value), and the constraints and defaults of each field. Anything
else is refused with the schema path, so a new kind of field fails the generator, not a caller.

Field names become snake_case with the JSON name as alias (``instanceId`` -> ``instance_id``).
"""

from __future__ import annotations

import json
import keyword
import re
from dataclasses import dataclass, field
from typing import Any, Final

CONSTRAINTS: Final = {
    "minimum": "ge",
    "maximum": "le",
    "exclusiveMinimum": "gt",
    "exclusiveMaximum": "lt",
    "minLength": "min_length",
    "maxLength": "max_length",
    "pattern": "pattern",
    "minItems": "min_length",
    "maxItems": "max_length",
}
SCALARS: Final = {"string": "str", "integer": "int", "number": "float", "boolean": "bool", "null": "None"}
IGNORED_KEYS: Final = frozenset({"title", "description", "default", "format", "examples", "deprecated"})


class UnsupportedSchema(ValueError):
    """A schema construct the generator does not handle; the message names where."""


def snake(name: str) -> str:
    text = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).replace("-", "_").lower()
    return f"{text}_" if keyword.iskeyword(text) or text in ("self", "body") else text


def camel(text: str) -> str:
    return "".join(part[:1].upper() + part[1:] for part in re.split(r"[-_.]", text) if part)


@dataclass(frozen=True)
class Param:
    """One keyword argument of a generated method, from one field of an input model."""

    name: str
    alias: str
    annotation: str
    required: bool
    default: str | None
    """Python source of the default; None with ``required`` False: omitted unless given."""


@dataclass
class ModelSource:
    """The generated classes and aliases, in dependency order."""

    blocks: list[str] = field(default_factory=list)
    names: list[str] = field(default_factory=list)

    def add(self, name: str, block: str) -> None:
        if name in self.names:
            raise UnsupportedSchema(f"two generated models would be named {name}")
        self.names.append(name)
        self.blocks.append(block)


class Emitter:
    """Emits the model of one schema (and its ``$defs``) under a name prefix."""

    def __init__(self, out: ModelSource, prefix: str) -> None:
        self.out = out
        self.prefix = prefix
        self._refs: dict[str, str] = {}
        self._defs: dict[str, Any] = {}
        self._closed = True

    def model(self, name: str, schema: dict[str, Any], *, closed: bool) -> tuple[str, list[Param], bool]:
        """The class name, its fields as parameters, and whether it is an open object with no fields."""
        self._defs = dict(schema.get("$defs", {}))
        self._closed = closed
        params = self._object(name, schema, closed=closed, where=name)
        open_map = not schema.get("properties") and schema.get("additionalProperties", True) is not False
        return name, params, open_map

    def _object(self, name: str, schema: dict[str, Any], *, closed: bool, where: str) -> list[Param]:
        if schema.get("type") != "object":
            raise UnsupportedSchema(f"{where}: a model must be a JSON object")
        properties: dict[str, Any] = schema.get("properties", {})
        required = set(schema.get("required", []))
        extra = "forbid" if schema.get("additionalProperties") is False else "allow"
        if not closed and extra == "forbid":
            extra = "ignore"  # an answer may gain fields: do not break older clients
        lines = [f"class {name}(BaseModel):"]
        doc = schema.get("description")
        if doc:
            lines.append(f"    {_docstring(doc)}")
            lines.append("")
        elif not schema.get("properties"):
            lines.append(f'    """``{name}``: any JSON object."""')
            lines.append("")
        lines.append(f'    model_config = ConfigDict(extra="{extra}", populate_by_name=True)')
        params: list[Param] = []
        body: list[str] = []
        for alias, prop in properties.items():
            annotation = self.annotation(prop, f"{where}.{alias}")
            python_name = snake(alias)
            arguments: list[str] = []
            has_default = "default" in prop
            is_required = alias in required
            if not is_required:
                if has_default:
                    arguments.append(f"default={literal(prop['default'])}")
                else:
                    annotation = optional(annotation)
                    arguments.append("default=None")
            if python_name != alias:
                arguments.append(f"alias={literal(alias)}")
            for key, keyword_name in CONSTRAINTS.items():
                if key in prop:
                    arguments.append(f"{keyword_name}={literal(prop[key])}")
            if prop.get("description"):
                arguments.append(f"description={literal(prop['description'])}")
            line = f"    {python_name}: {annotation} = Field({', '.join(arguments)})"
            if len(line) > 120:
                exploded = "".join(f"        {argument},\n" for argument in arguments)
                line = f"    {python_name}: {annotation} = Field(\n{exploded}    )"
            body.append(line)
            default = None
            if not is_required:
                default = literal(prop["default"]) if has_default and _immutable(prop["default"]) else None
            params.append(Param(python_name, alias, annotation, is_required, default))
        if body:
            lines.append("")
            lines.extend(body)
        self.out.add(name, "\n".join(lines))
        return params

    def annotation(self, schema: dict[str, Any], where: str) -> str:
        unknown = set(schema) - IGNORED_KEYS - set(CONSTRAINTS) - {
            "$ref", "type", "items", "properties", "required", "additionalProperties", "anyOf", "oneOf",
            "allOf", "enum", "const", "$defs",
        }  # fmt: skip
        if unknown:
            raise UnsupportedSchema(f"{where}: unsupported keywords {sorted(unknown)}")
        if "$ref" in schema:
            return self._ref(schema["$ref"], where)
        if "enum" in schema:
            return _literal(schema["enum"])
        if "const" in schema:
            return _literal([schema["const"]])
        for union in ("anyOf", "oneOf"):
            if union in schema:
                members = [self.annotation(member, f"{where}|{i}") for i, member in enumerate(schema[union])]
                return " | ".join(dict.fromkeys(members))
        if "allOf" in schema:
            if len(schema["allOf"]) != 1:
                raise UnsupportedSchema(f"{where}: allOf of several schemas")
            return self.annotation(schema["allOf"][0], where)
        kind = schema.get("type")
        if kind is None:
            return "JsonValue"
        if isinstance(kind, list):
            return " | ".join(self.annotation({**schema, "type": one}, where) for one in kind)
        if kind in SCALARS:
            return SCALARS[kind]
        if kind == "array":
            items = schema.get("items")
            return f"list[{self.annotation(items, f'{where}[]') if items else 'JsonValue'}]"
        if kind == "object":
            if schema.get("properties"):
                raise UnsupportedSchema(f"{where}: an inline object with properties (give it a model)")
            values = schema.get("additionalProperties", True)
            inner = self.annotation(values, f"{where}{{}}") if isinstance(values, dict) else "JsonValue"
            return f"dict[str, {inner}]"
        raise UnsupportedSchema(f"{where}: unsupported type {kind!r}")

    def _ref(self, ref: str, where: str) -> str:
        if not ref.startswith("#/$defs/"):
            raise UnsupportedSchema(f"{where}: only local $defs references are supported, not {ref}")
        key = ref.removeprefix("#/$defs/")
        if key in self._refs:
            return self._refs[key]
        target = self._defs.get(key)
        if target is None:
            raise UnsupportedSchema(f"{where}: $ref to a missing definition {key}")
        if not (set(target) - IGNORED_KEYS):
            self._refs[key] = "JsonValue"  # pydantic's JsonValue: {}
            return "JsonValue"
        name = self.prefix + camel(key)
        self._refs[key] = name
        if "enum" in target:
            self.out.add(name, f"{name} = {_literal(target['enum'])}")
        else:
            self._object(name, target, closed=self._closed, where=key)
        return name


def _literal(values: list[Any]) -> str:
    return f"Literal[{', '.join(literal(value) for value in values)}]"


def literal(value: Any) -> str:
    """Python source of a JSON value, strings in double quotes (JSON's escapes are Python's too)."""
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(literal(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{literal(str(k))}: {literal(v)}" for k, v in value.items()) + "}"
    return repr(value)


def optional(annotation: str) -> str:
    return annotation if annotation == "JsonValue" or "None" in annotation.split(" | ") else f"{annotation} | None"


def _immutable(value: Any) -> bool:
    return not isinstance(value, list | dict)


def _docstring(text: str) -> str:
    return '"""' + text.replace("\\", "\\\\").replace('"""', "'''").strip() + '"""'
