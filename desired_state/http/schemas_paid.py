"""The paid routes' wire models (``routes_paid``) and the error answers their OpenAPI entries document.

Answers are these pydantic models dumped in JSON mode; refusals are :class:`PaidError`
(``{error: <code>, message, hint}``, the seed's codes: :class:`ErrorCode`), unlike the instance
routes' ``{"error": message}`` (``errors.ErrorResponse``).
"""

# No ``from __future__ import annotations``: pydantic and FastAPI read these annotations at runtime.
import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from desired_state.services.definitions import CatalogItem
from desired_state.services.vocabulary import ErrorCode, JobStatus, TransferKind


class PaidError(BaseModel):
    error: ErrorCode
    message: str
    hint: str | None = None


class Catalog(BaseModel):
    services: list[CatalogItem]


class Invoked(BaseModel):
    jobId: uuid.UUID
    status: JobStatus
    pollUrl: str


class Cancelled(BaseModel):
    jobId: uuid.UUID
    status: JobStatus
    refunded: bool = Field(description="True when this request refunded the job's credits.")


class TransferView(BaseModel):
    transferId: uuid.UUID
    kind: TransferKind
    amount: int = Field(description="Signed: positive into your balance, negative out of it.")
    jobId: uuid.UUID | None
    reason: str | None
    createdAt: datetime


class Credits(BaseModel):
    balance: int
    transfers: list[TransferView]


def documented_errors(*codes: ErrorCode) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for these codes, all :class:`PaidError`; codes sharing a status share an entry."""
    responses: dict[int | str, dict[str, Any]] = {}
    for code in codes:
        entry = responses.setdefault(code.http_status, {"model": PaidError, "description": ""})
        entry["description"] = ", ".join(filter(None, [entry["description"], f"`{code.value}`"]))
    return responses


AUTH_ERRORS = documented_errors(ErrorCode.AUTHENTICATION_REQUIRED, ErrorCode.DATABASE_UNAVAILABLE)
"""What every authenticated paid route may answer besides its own refusals."""
