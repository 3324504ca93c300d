"""Callers and their ``sk-`` API keys (issue 12, part 2).

A key is ``sk-`` followed by 32 random bytes in base64url (from :mod:`secrets`). It is shown once,
when made, and only its SHA-256 is stored: the key has 256 bits of entropy, so a plain hash is
as strong as a slow one and lets a request find its caller with one index lookup on the hash.
The lookup compares hashes, so its timing could only tell a caller about the SHA-256 of a wrong
key, which says nothing about a right one. Revoking marks a key, it never deletes it.

A job's admission does not look the key up first: it hands the :class:`PresentedKey` to the
admission statement, which finds the caller by the same index lookup inside ``paid_admit``'s own
transaction (one round trip per admission instead of two; issue 14). An unknown or revoked key
admits nothing and answers 401 as here.

Every caller has a ledger account (``caller:<uuid>``), created in the same transaction.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row

from desired_state.services import queries
from desired_state.services.definitions import COURSE_ID_PATTERN
from desired_state.services.vocabulary import API_KEY_PREFIX, Clock, system_clock

EMAIL_PATTERN = re.compile(r"^[^@\s]{1,64}@[^@\s]{1,255}$")
KEY_BYTES = 32
KEY_PATTERN = re.compile(r"^sk-[A-Za-z0-9_-]{43}$")
SHOWN_PREFIX_CHARS = 8


class CallerError(ValueError):
    """Bad caller input (an email, a key); the message names the field."""


class CallerExists(CallerError):
    pass


class CallerNotFound(LookupError):
    pass


@dataclass(frozen=True)
class Caller:
    caller_id: uuid.UUID
    email: str


@dataclass(frozen=True)
class PresentedKey:
    """A well-formed key as a request presented it, not yet looked up: only its SHA-256 is kept."""

    digest: bytes = field(repr=False)


def presented_key(presented: str) -> PresentedKey | None:
    """The key's digest, or None when it cannot be a key at all (no lookup needed to refuse it)."""
    if not KEY_PATTERN.fullmatch(presented):
        return None
    return PresentedKey(hash_key(presented))


@dataclass(frozen=True)
class IssuedKey:
    """A new key: ``secret`` is shown once and never stored."""

    caller: Caller
    secret: str = field(repr=False)
    prefix: str


def normalise_email(email: str) -> str:
    value = email.strip().lower()
    if not EMAIL_PATTERN.fullmatch(value):
        raise CallerError("email: must look like name@example.com")
    return value


def hash_key(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def _new_key() -> tuple[str, str]:
    secret = API_KEY_PREFIX + secrets.token_urlsafe(KEY_BYTES)
    return secret, secret[: len(API_KEY_PREFIX) + SHOWN_PREFIX_CHARS]


async def create_caller(
    conn: psycopg.AsyncConnection[Any], email: str, clock: Clock = system_clock
) -> IssuedKey:
    """A new caller with its ledger account and a first key; :class:`CallerExists` if the email is taken."""
    address = normalise_email(email)
    now = clock()
    async with conn.transaction(), conn.cursor() as cur:
        await cur.execute(queries.INSERT_CALLER, {"email": address, "now": now})
        row = await cur.fetchone()
        if row is None:
            raise CallerExists(f"email: a caller {address} already exists (issue another key with `callers key`)")
        caller = Caller(row[0], address)
        await cur.execute(queries.INSERT_CALLER_ACCOUNT, {"caller_id": caller.caller_id})
        return await _issue(cur, caller, now)


async def issue_key(conn: psycopg.AsyncConnection[Any], email: str, clock: Clock = system_clock) -> IssuedKey:
    """Another key for an existing caller (the old ones stay valid until revoked)."""
    caller = await find_caller(conn, email)
    async with conn.transaction(), conn.cursor() as cur:
        return await _issue(cur, caller, clock())


async def _issue(cur: psycopg.AsyncCursor[Any], caller: Caller, now: datetime) -> IssuedKey:
    secret, prefix = _new_key()
    await cur.execute(
        queries.INSERT_KEY,
        {"caller_id": caller.caller_id, "key_hash": hash_key(secret), "key_prefix": prefix, "now": now},
    )
    return IssuedKey(caller, secret, prefix)


async def find_caller(conn: psycopg.AsyncConnection[Any], email: str) -> Caller:
    address = normalise_email(email)
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(queries.SELECT_CALLER_BY_EMAIL, {"email": address})
        row = await cur.fetchone()
    if row is None:
        raise CallerNotFound(f"no caller {address} (create one with `reconciler callers create {address}`)")
    return Caller(row["caller_id"], row["email"])


async def revoke_keys(
    conn: psycopg.AsyncConnection[Any], email: str, prefix: str | None = None, clock: Clock = system_clock
) -> list[str]:
    """Revoke every live key of a caller (or only the one shown as ``prefix``); returns their prefixes."""
    caller = await find_caller(conn, email)
    if prefix is not None and not re.fullmatch(r"sk-[A-Za-z0-9_-]{1,43}", prefix):
        raise CallerError("key: must be a key prefix as `callers create` printed it, like sk-AbCdEfGh")
    async with conn.transaction(), conn.cursor() as cur:
        await cur.execute(
            queries.REVOKE_KEYS,
            {"caller_id": caller.caller_id, "key_prefix": prefix[:11] if prefix else None, "now": clock()},
        )
        return [row[0] for row in await cur.fetchall()]


async def verify_key(conn: psycopg.AsyncConnection[Any], presented: str) -> Caller | None:
    """The caller a presented key belongs to, or None (unknown, malformed or revoked)."""
    key = presented_key(presented)
    if key is None:
        return None
    async with conn.cursor() as cur:
        await cur.execute(queries.SELECT_KEY, {"key_hash": key.digest})
        row = await cur.fetchone()
    return None if row is None else Caller(row[0], row[1])


async def enroll(
    conn: psycopg.AsyncConnection[Any], email: str, course_id: str, clock: Clock = system_clock
) -> bool:
    """Record a course purchase; False when the caller was already enrolled."""
    if not COURSE_ID_PATTERN.fullmatch(course_id):
        raise CallerError("course: must be 1-100 characters of a-z, 0-9, '.', '_' or '-'")
    caller = await find_caller(conn, email)
    async with conn.cursor() as cur:
        await cur.execute(queries.ENROLL, {"caller_id": caller.caller_id, "course_id": course_id, "now": clock()})
        return await cur.fetchone() is not None
