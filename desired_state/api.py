"""Compatibility only: the HTTP API is the package :mod:`desired_state.http` now.

Kept because the paid-jobs router (``desired_state/http_paid.py``, on its own branch) imports
``ApiError``, ``_no_constants`` and ``_check_strings`` from here. New code imports
:mod:`desired_state.http` (``create_app``, ``serve``...) and decodes bodies with
``desired_state.http.json_decode.decode`` (or mounts its router with
``route_class=desired_state.http.body.StrictJsonRoute``); delete this module once nothing imports it.
"""

from __future__ import annotations

from typing import Any

from desired_state.http import ApiConfig, ApiConfigError, ApiStartError, begin_shutdown, create_app, json_decode, serve
from desired_state.http.errors import ApiError, bad_input


def _no_constants(name: str) -> Any:
    """``parse_constant`` for ``json.loads``: ``NaN`` and ``Infinity`` are not JSON."""
    raise ValueError(f"{name} is not JSON")


def _check_strings(value: Any, where: str) -> None:
    """:class:`ApiError` (400) naming the field that holds a NUL character or a lone surrogate."""
    try:
        json_decode.check_strings(value, where)
    except json_decode.DecodeError as exc:
        raise bad_input(exc.problems) from None


__all__ = ["ApiConfig", "ApiConfigError", "ApiError", "ApiStartError", "begin_shutdown", "create_app", "serve"]
