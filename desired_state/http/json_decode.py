"""Strict, bounded JSON decoding of request bodies; standard library only, so it also runs alone.

What a body must be, beyond "valid JSON" (``json.loads`` alone is more lenient):

* **UTF-8 without a byte-order mark.** RFC 8259 section 8.1: JSON exchanged between systems is
  UTF-8 and a BOM must not be sent. ``json.loads`` of bytes silently accepts a BOM and detects
  UTF-16 and UTF-32; here each is refused with a message that says which it was.
* **No duplicate keys.** ``json.loads`` keeps the last of two equal keys, so ``{"tools": [],
  "tools": ["telnyx"]}`` would mean whatever the last parser in a chain decides. Refused.
* **No ``NaN``/``Infinity``** (not JSON), no NUL character and no lone surrogate in any string
  (Postgres text can hold neither), each refused naming the field.
* **At most ``max_values`` JSON values** (every string, number, array, object... counts one), so
  what the models validate next is bounded by the route (a create body needs a few hundred), not
  by the 8 MiB the transport allows.

The checks run on the decoded value in one iterative walk that stops at the first breach, so a
hostile body costs at most ``max_values`` steps after ``json.loads``. ``json.loads`` itself holds
the GIL for its whole run (0.5 s for 8 MiB of ``[[],[],...]`` on the reference machine), so
:mod:`desired_state.http.body` runs bodies that may be expensive in this module as a separate
process (``python -I json_decode.py``, see :func:`serve`), and cheap ones inline.
"""

from __future__ import annotations

import json
import marshal
import struct
import sys
from typing import Any, BinaryIO

HEADER = struct.Struct("!QQ")
"""A request to the worker: body length, max_values; then the body."""
ANSWER = struct.Struct("!Q")
"""An answer: its length; then ``marshal`` of ``(0, value)`` or ``(status, problems)``."""


class DecodeError(ValueError):
    """The body is refused; ``problems`` name the field and the rule, ``status`` is the HTTP status."""

    def __init__(self, problems: list[str], status: int = 400) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems
        self.status = status


class _DuplicateKey(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _text(raw: bytes) -> str:
    if raw.startswith(b"\xef\xbb\xbf"):
        raise DecodeError(["body: starts with a byte-order mark; send UTF-8 without one"])
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")) or b"\x00" in raw[:4]:
        raise DecodeError(["body: is UTF-16 or UTF-32; send UTF-8"])
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise DecodeError(["body: is not valid UTF-8"]) from None


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _DuplicateKey(key)
            seen.add(key)
    return result


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _where(path: tuple[str, ...]) -> str:
    return ".".join(path) if path else "body"


def _short(text: str) -> str:
    return repr(text) if len(text) <= 40 else repr(text[:37] + "...")


def _too_many(path: tuple[str, ...], items: int, max_values: int) -> str:
    return f"{_where(path)}: has {items} items; a body may hold at most {max_values} JSON values"


def _check(value: Any, max_values: int, root: tuple[str, ...] = ()) -> None:
    """One walk: count values, refuse NUL and lone surrogates; stops at the first breach."""
    stack: list[tuple[Any, tuple[str, ...]]] = [(value, root)]
    seen = 0
    while stack:
        item, path = stack.pop()
        seen += 1
        if seen > max_values:
            raise DecodeError([f"body: holds more than {max_values} JSON values"])
        if isinstance(item, str):
            if "\x00" in item:
                raise DecodeError([f"{_where(path)}: must not contain NUL characters"])
            if not item.isascii():
                try:
                    item.encode()
                except UnicodeEncodeError:
                    raise DecodeError([f"{_where(path)}: is not valid Unicode text"]) from None
        elif isinstance(item, dict):
            if len(item) > max_values:
                raise DecodeError([_too_many(path, len(item), max_values)])
            for key, member in item.items():
                stack.append((key, path or ("body",)))
                stack.append((member, (*path, key)))
        elif isinstance(item, list):
            if len(item) > max_values:
                raise DecodeError([_too_many(path, len(item), max_values)])
            stack.extend((member, (*path, str(index))) for index, member in enumerate(item))


def decode(raw: bytes, max_values: int) -> Any:
    """The body's JSON value; :class:`DecodeError` naming the field when it breaks a rule above."""
    text = _text(raw)
    try:
        value = json.loads(text, object_pairs_hook=_unique, parse_constant=_no_constants)
    except _DuplicateKey as exc:
        raise DecodeError([f"body: the key {_short(exc.key)} appears twice in one object"]) from None
    except (ValueError, RecursionError):
        raise DecodeError(["body: is not valid JSON"]) from None
    _check(value, max_values)
    return value


def estimated_values(raw: bytes) -> int:
    """How much work ``json.loads`` would do, counted at C speed: one per comma or opening
    bracket (those inside strings count too). The objects it builds, keys included, are at most
    about twice this."""
    return raw.count(b",") + raw.count(b"[") + raw.count(b"{") + 1


def _read_exactly(stream: BinaryIO, size: int) -> bytes | None:
    data = stream.read(size)
    return data if len(data) == size else None


def serve(requests: BinaryIO, answers: BinaryIO) -> None:
    """The worker: decode each framed body from ``requests``, answer on ``answers``, until EOF."""
    while True:
        header = _read_exactly(requests, HEADER.size)
        if header is None:
            return
        size, max_values = HEADER.unpack(header)
        raw = _read_exactly(requests, size)
        if raw is None:
            return
        try:
            answer = marshal.dumps((0, decode(raw, max_values)))
        except DecodeError as exc:
            answer = marshal.dumps((exc.status, exc.problems))
        answers.write(ANSWER.pack(len(answer)))
        answers.write(answer)
        answers.flush()


if __name__ == "__main__":
    serve(sys.stdin.buffer, sys.stdout.buffer)
