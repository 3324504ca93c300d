"""Provider secrets at rest: our copy of each OpenRouter key is sealed with Fernet.

OpenRouter shows a key's value once, at creation; the reconciler keeps it in
``observed_resources.secret`` so that a later deploy can hand it to the runtime again. That copy
is sealed with `cryptography`'s Fernet (AES-128-CBC with an HMAC-SHA256, authenticated, with a
timestamp), not with cryptography of our own. The stored text is ``fernet:`` followed by the
token; migration 0008 refuses any new value without that prefix, so a code path that forgot to
seal fails loudly instead of writing a key in clear.

The key comes from ``RECONCILER_SECRET_KEY`` (one Fernet key, or several separated by commas to
rotate: the first seals, any of them opens). With the embedded database and no key set, one is
generated once into ``.reconciler/secret.key`` beside the embedded data (mode 0600), so the demo
needs no setting; with a configured database the key must be set, because every replica needs
the same one.

Upgrading: rows written before 0008 hold the key in clear. They stay readable (:meth:`SecretBox.open_`
takes both forms), and :func:`seal_stored_secrets` seals them when a runtime starts, one row at a
time with a compare-and-set, so a crash halfway leaves a mix that still reads correctly and the
next start finishes the job. The same pass re-seals values sealed by an older key of a rotation,
and checks that the key opens what is stored: a wrong key stops the process with one line naming
the setting, never a traceback and never the key.

``instance_services.env_value`` keeps the key in clear: it is the seed's column, which the pool
manager may read (docs/sql-contract.md says how to restrict it).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import uuid
from pathlib import Path
from typing import Any, Final

import psycopg
from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from psycopg_pool import AsyncConnectionPool

from reconciler.db import EMBEDDED_DIR
from reconciler.settings import Settings, SettingsError

SETTING: Final = "RECONCILER_SECRET_KEY"
SEALED_PREFIX: Final = "fernet:"
EMBEDDED_KEY_FILE: Final = EMBEDDED_DIR.parent / "secret.key"
GENERATE_HINT: Final = (
    "generate one with: python -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())'"
)

SELECT_STORED = "SELECT instance_id, kind, secret FROM observed_resources WHERE secret IS NOT NULL"
RESEAL = """
UPDATE observed_resources SET secret = %(sealed)s
 WHERE instance_id = %(instance_id)s AND kind = %(kind)s AND secret = %(stored)s
"""


class SecretKeyError(SettingsError):
    """The key is missing, malformed or does not open what is stored; one line naming the source."""


class SecretBox:
    """Seals and opens stored provider secrets. Its ``repr`` never shows a key."""

    __slots__ = ("_fernet", "_primary", "source")

    def __init__(self, keys: str, source: str = SETTING) -> None:
        self.source = source
        try:
            fernets = [Fernet(key.strip().encode()) for key in keys.split(",") if key.strip()]
        except ValueError:
            problem = f"{source} must hold Fernet keys (32 url-safe base64-encoded bytes)"
            raise SecretKeyError(f"{problem}: {GENERATE_HINT}") from None
        if not fernets:
            raise SecretKeyError(f"{source} is empty: {GENERATE_HINT}")
        self._primary = fernets[0]
        self._fernet = MultiFernet(fernets)

    def __repr__(self) -> str:
        return f"SecretBox(source={self.source!r})"

    def seal(self, value: str) -> str:
        """The text to store for ``value``."""
        return SEALED_PREFIX + self._fernet.encrypt(value.encode()).decode()

    def open_(self, stored: str) -> str:
        """The value of stored text: sealed, or written in clear before migration 0008."""
        if not is_sealed(stored):
            return stored
        try:
            return self._fernet.decrypt(stored.removeprefix(SEALED_PREFIX).encode()).decode()
        except InvalidToken:
            raise SecretKeyError(
                f"{self.source} does not open the secrets stored in observed_resources "
                "(to change the key, set the new one first and the old one after it, comma-separated)"
            ) from None

    def stale(self, stored: str) -> bool:
        """Whether ``stored`` should be sealed again: in clear, or sealed by an older key."""
        if not is_sealed(stored):
            return True
        try:
            self._primary.decrypt(stored.removeprefix(SEALED_PREFIX).encode())
        except InvalidToken:
            return True
        return False


def is_sealed(stored: str) -> bool:
    return stored.startswith(SEALED_PREFIX)


def generate_key() -> str:
    return Fernet.generate_key().decode()


def embedded_key(path: Path = EMBEDDED_KEY_FILE) -> str:
    """The embedded database's key: read from ``path``, or generated there once (mode 0600).

    Written to a private temporary file and hard-linked into place, so two processes starting at
    once agree on one key and neither reads a half-written file.
    """
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(descriptor, "w") as handle:
            handle.write(generate_key() + "\n")
        with contextlib.suppress(FileExistsError):  # another process won the race: use its key
            os.link(temporary, path)
    finally:
        temporary.unlink()
    return path.read_text().strip()


def secret_box(settings: Settings) -> SecretBox:
    """The box for these settings: ``RECONCILER_SECRET_KEY``, or the embedded database's own key."""
    if settings.secret_key is not None:
        return SecretBox(settings.secret_key.get_secret_value())
    if settings.database_url is None:
        path = EMBEDDED_KEY_FILE.resolve()
        return SecretBox(embedded_key(path), source=f"{SETTING} (unset; the key in {path})")
    raise SecretKeyError(
        f"{SETTING} is not set: with SERVICE_DATABASE_URL every replica needs the same key to seal "
        f"the OpenRouter keys it stores; {GENERATE_HINT}"
    )


async def seal_stored_secrets(pool: AsyncConnectionPool[Any], box: SecretBox, *, patience: float = 30.0) -> int:
    """Check that ``box`` opens every stored secret, and seal with its first key what is not.

    Runs before any work, so a wrong key stops the process here, with one line, rather than
    failing one instance after another (one row per resource holding a secret: milliseconds).
    A database that goes away meanwhile is waited for, up to ``patience`` seconds, as the pool
    waits for it when it opens. Returns how many rows were sealed. Each is a compare-and-set on
    the value read, so a concurrent writer is never overwritten and a crash leaves readable rows.
    """
    deadline = time.monotonic() + patience
    while True:
        try:
            return await _seal_stored_secrets(pool, box)
        except (psycopg.OperationalError, psycopg.InterfaceError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)


async def _seal_stored_secrets(pool: AsyncConnectionPool[Any], box: SecretBox) -> int:
    sealed = 0
    async with pool.connection() as conn:
        rows = await (await conn.execute(SELECT_STORED)).fetchall()
        fresh = []
        for instance_id, kind, stored in rows:
            value = box.open_(stored)
            if box.stale(stored):
                fresh.append({"instance_id": instance_id, "kind": kind, "stored": stored, "sealed": box.seal(value)})
        for params in fresh:
            sealed += (await conn.execute(RESEAL, params)).rowcount
    return sealed
