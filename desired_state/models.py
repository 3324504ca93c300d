"""What callers want: the desired-instance model and its validation rules.

A desired instance is the caller's whole wish for one agent: a Railway service (always), plus
the tools it asks for. Field names on the wire are the seed Services API's ``create-instance``
names (``instanceId``, ``name``, ``tools``) plus ``env`` and ``image``; Python code uses
snake_case. Validation happens here, once, so the CLI, the store and the HTTP API refuse the same
bad input with the same message, before anything is written.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Annotated, Any, Final

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from desired_state.vocabulary import RESERVED_ENV_KEYS, TOOLS
from desired_state.vocabulary import Tool as Tool  # re-exported: its home is the vocabulary

# -- the documented maxima (the field descriptions carry them to /openapi.json; docs/sql-contract.md) --
# The pool generates ids with nanoid (alphabet A-Za-z0-9_-), 12 characters by default. We accept
# 1..32 of that alphabet: derived names ("convos-agent-" + id) must stay within Railway's limits.
MAX_INSTANCE_ID_CHARS: Final = 32
MAX_NAME_CHARS: Final = 200
MAX_TOOLS: Final = len(TOOLS)
MAX_ENV_VARS: Final = 200
MAX_ENV_NAME_CHARS: Final = 128
MAX_ENV_VALUE_BYTES: Final = 32 * 1024
MAX_IMAGE_CHARS: Final = 255
INSTANCE_ID_PATTERN = re.compile(rf"^[A-Za-z0-9_-]{{1,{MAX_INSTANCE_ID_CHARS}}}$")
ENV_NAME_PATTERN = re.compile(rf"^[A-Za-z_][A-Za-z0-9_]{{0,{MAX_ENV_NAME_CHARS - 1}}}$")
IMAGE_PATTERN = re.compile(rf"^[a-z0-9][a-z0-9._/:@-]{{0,{MAX_IMAGE_CHARS - 1}}}$")

# -- what Railway would interpret in a service variable (docs.railway.com/variables/reference) -----
RAILWAY_REFERENCE_MARKER: Final = "${{"
"""Railway resolves ``${{NAMESPACE.VAR}}`` in a value when it deploys: a caller's value holding it
could read another service's variables (another instance's OpenRouter key), so it is refused."""
RAILWAY_RESERVED_PREFIX: Final = "RAILWAY_"
"""Railway sets ``RAILWAY_*`` variables itself (and some configure the platform)."""
RAILWAY_RESERVED_NAMES: Final = frozenset({"PORT"})
"""Railway sets ``PORT`` for the service; the runtime listens on it."""

# -- error bounds: a hostile input must not make a huge answer ------------------------------------
MAX_PROBLEMS: Final = 20
"""At most this many problems are listed; the rest are counted in one more line."""
MAX_ECHO_CHARS: Final = 40
"""A field name or key echoed in a problem is cut to this many characters."""
NUL_PROBLEM: Final = "must not contain NUL characters"
NOT_UNICODE_PROBLEM: Final = "is not valid Unicode text"


def shown(text: object) -> str:
    """``text`` as it may appear in an error: printable, and cut to :data:`MAX_ECHO_CHARS`."""
    value = str(text)
    if len(value) > MAX_ECHO_CHARS:
        value = value[:MAX_ECHO_CHARS] + "..."
    return value if value.isprintable() else repr(value)[1:-1]


def text_problem(value: str) -> str | None:
    """Why Postgres could not store ``value`` as text (NUL, or a lone surrogate), or None."""
    if "\x00" in value:
        return NUL_PROBLEM
    try:
        value.encode()
    except UnicodeEncodeError:
        return NOT_UNICODE_PROBLEM
    return None


def reserved_env_name(name: str) -> str | None:
    """Who sets variable ``name`` if not the caller (Railway, or the reconciler), or None.

    Names are compared in upper case, so ``railway_x`` or ``Port`` cannot slip past either.
    """
    upper = name.upper()
    if upper.startswith(RAILWAY_RESERVED_PREFIX) or upper in RAILWAY_RESERVED_NAMES:
        return "Railway"
    if upper in RESERVED_ENV_KEYS:
        return "the reconciler"
    return None


def at_most(limit: int, what: str, container: str) -> BeforeValidator:
    """Refuse a container longer than ``limit`` before a single item is validated.

    Pydantic checks ``max_length`` only after validating every item (and collects an error for
    each bad one), so a 1.6-million-entry list would cost seconds and a 300 MB error; this check
    costs one ``len``.
    """

    def check(value: Any) -> Any:
        if isinstance(value, str | bytes):
            raise ValueError(f"must be {container} of {what}, not a string")
        if isinstance(value, Mapping | list | tuple | set | frozenset) and len(value) > limit:
            raise ValueError(f"has {len(value)} {what}; at most {limit} are allowed")
        return value

    return BeforeValidator(check)


def _env_problem(name: str, value: str) -> str | None:
    if not ENV_NAME_PATTERN.fullmatch(name):
        return (
            f"variable name {shown(repr(name))} must match [A-Za-z_][A-Za-z0-9_]* "
            f"(at most {MAX_ENV_NAME_CHARS} characters)"
        )
    owner = reserved_env_name(name)
    if owner is not None:
        return f"{name} is set by {owner} and cannot be set in env"
    problem = text_problem(value)
    if problem is not None:
        return f"value of {name} {problem}"
    if len(value.encode()) > MAX_ENV_VALUE_BYTES:
        return f"value of {name} is longer than {MAX_ENV_VALUE_BYTES} bytes"
    if RAILWAY_REFERENCE_MARKER in value:
        return (
            f"value of {name} holds a Railway variable reference ('{RAILWAY_REFERENCE_MARKER}...}}}}'), "
            "which Railway would resolve to another variable's value"
        )
    return None


def _env_rules(value: dict[str, str]) -> dict[str, str]:
    for name, item in value.items():
        problem = _env_problem(name, item)
        if problem is not None:
            raise ValueError(problem)
    return value


def _any_case(text: str) -> str:
    return "".join(f"[{c.upper()}{c.lower()}]" if c.isalpha() else re.escape(c) for c in text)


RESERVED_ENV_NAME_REGEX: Final = (
    f"^(?:{_any_case(RAILWAY_RESERVED_PREFIX)}|(?:"
    + "|".join(_any_case(name) for name in sorted(RAILWAY_RESERVED_NAMES | RESERVED_ENV_KEYS))
    + ")$)"
)
""":func:`reserved_env_name` as a JSON Schema (ECMA 262) pattern, for the published schema."""
ENV_VALUE_REGEX: Final = r"^(?:[^\u0000$]|\$(?!\{\{))*$"
"""An env value without NUL or a Railway reference, as a JSON Schema pattern."""


EnvVariables = Annotated[
    dict[str, str],
    at_most(MAX_ENV_VARS, "variables", "an object"),
    AfterValidator(_env_rules),
    Field(
        json_schema_extra={
            "maxProperties": MAX_ENV_VARS,
            "propertyNames": {"pattern": ENV_NAME_PATTERN.pattern, "not": {"pattern": RESERVED_ENV_NAME_REGEX}},
            # The rule counts UTF-8 bytes, a schema characters: looser for non-ASCII text.
            "additionalProperties": {"type": "string", "maxLength": MAX_ENV_VALUE_BYTES, "pattern": ENV_VALUE_REGEX},
        },
        description=(
            f"At most {MAX_ENV_VARS} variables. Names: [A-Za-z_][A-Za-z0-9_]*, at most "
            f"{MAX_ENV_NAME_CHARS} characters, none of Railway's (RAILWAY_*, PORT) or the reconciler's "
            f"({', '.join(sorted(RESERVED_ENV_KEYS))}), in any case. Values: at most "
            f"{MAX_ENV_VALUE_BYTES} bytes of UTF-8, no NUL characters and no Railway reference "
            f"('{RAILWAY_REFERENCE_MARKER}...}}}}')."
        ),
    ),
]
"""A caller's runtime variables with every rule: use it for any field that writes env."""


class InstanceSpec(BaseModel):
    """One desired instance, as written by the pool manager."""

    model_config = ConfigDict(populate_by_name=True, extra="forbid", frozen=True)

    instance_id: str = Field(
        alias="instanceId",
        description=f"Pool instance id: 1-{MAX_INSTANCE_ID_CHARS} characters of A-Za-z0-9_-.",
        json_schema_extra={"maxLength": MAX_INSTANCE_ID_CHARS},
    )
    name: str = Field(
        default="",
        max_length=MAX_NAME_CHARS,
        description=f"Human name, at most {MAX_NAME_CHARS} characters; defaults to the instance id.",
    )
    tools: Annotated[tuple[Tool, ...], at_most(MAX_TOOLS, "tool ids", "a list")] = Field(
        default=(),
        max_length=MAX_TOOLS,
        description=f"Tools to provision, each at most once: {', '.join(TOOLS)}.",
    )
    env: EnvVariables = Field(default_factory=dict)
    image: str | None = Field(
        default=None,
        max_length=MAX_IMAGE_CHARS,
        description=f"Runtime image override, at most {MAX_IMAGE_CHARS} characters.",
    )
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

    @model_validator(mode="before")
    @classmethod
    def _few_fields(cls, data: Any) -> Any:
        """Bounded work for unknown fields too: one error, not one per key of a huge object."""
        if isinstance(data, Mapping) and len(data) > 2 * len(cls.model_fields):
            raise ValueError(f"has {len(data)} fields; an instance has at most {len(cls.model_fields)}")
        return data

    @field_validator("instance_id")
    @classmethod
    def _instance_id_format(cls, value: str) -> str:
        problem = text_problem(value)
        if problem is not None:
            raise ValueError(problem)
        if not INSTANCE_ID_PATTERN.fullmatch(value):
            raise ValueError(f"must be 1-{MAX_INSTANCE_ID_CHARS} characters of A-Z, a-z, 0-9, '_' or '-'")
        return value

    @field_validator("name")
    @classmethod
    def _name_text(cls, value: str) -> str:
        problem = text_problem(value)
        if problem is not None:
            raise ValueError(problem)
        return value

    @field_validator("tools")
    @classmethod
    def _tools_unique_sorted(cls, value: tuple[Tool, ...]) -> tuple[Tool, ...]:
        if len(set(value)) != len(value):
            raise ValueError("lists a tool more than once")
        order = list(Tool)
        return tuple(sorted(value, key=order.index))

    @field_validator("image")
    @classmethod
    def _image_format(cls, value: str | None) -> str | None:
        if value is None:
            return value
        problem = text_problem(value)
        if problem is not None:
            raise ValueError(problem)
        if not IMAGE_PATTERN.fullmatch(value):
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
        """A stored row, through every rule above (a row written over SQL may break any of them).

        Raises only :class:`ValidationError`, whatever the JSON holds; keys of ``spec`` that are
        not fields are ignored, as they always were.
        """
        fields = {"instanceId": instance_id, "name": name}
        fields.update((key, spec[key]) for key in SPEC_FIELDS if spec.get(key) is not None)
        return cls.model_validate(fields)


SPEC_FIELDS: Final = ("tools", "env", "image", "redeploy", "openrouterLimit")
"""The keys of ``desired_instances.spec`` (:meth:`InstanceSpec.spec_document`)."""


class SpecError(ValueError):
    """Bad desired-state input. ``str()`` names the field and the rule, one line per problem."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = bounded(problems)
        super().__init__("; ".join(self.problems))


def bounded(problems: list[str]) -> list[str]:
    """The first :data:`MAX_PROBLEMS` problems, and a count of the rest."""
    if len(problems) <= MAX_PROBLEMS:
        return problems
    return [*problems[:MAX_PROBLEMS], f"... and {len(problems) - MAX_PROBLEMS} more problems"]


def describe_validation_error(error: ValidationError, where: str = "") -> list[str]:
    """Turn pydantic's error into ``field: rule`` lines, without echoing the input values.

    Keys in a location (an unknown field, an ``env`` name) are cut short; at most
    :data:`MAX_PROBLEMS` lines, then a count of the rest.
    """
    return bounded(list(_problem_lines(error.errors(include_input=False, include_url=False), where)))


def _problem_lines(errors: Iterable[Any], where: str) -> Iterable[str]:
    for item in errors:
        loc = ".".join(shown(part) for part in item["loc"]) or "(item)"
        msg = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            msg = "is not a known field"
        yield f"{where}{loc}: {msg}"


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
