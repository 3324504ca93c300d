"""What the routers share: the config, the database and the convergence wait of one app.

Each family of routes is an ``APIRouter`` made by a factory that takes an :class:`ApiState`
(``routes_health``, ``routes_seed``, ``routes_instances``); ``app.create_app`` includes them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from fastapi import Security

from desired_state.http.auth import BEARER
from desired_state.http.config import ApiConfig
from desired_state.http.database import Database
from desired_state.http.errors import bad_input, documented_errors
from desired_state.http.waiting import Convergence
from desired_state.vocabulary import Tool


@dataclass(frozen=True)
class ApiState:
    config: ApiConfig
    database: Database
    convergence: Convergence

    def require_available(self, tools: Iterable[Tool], where: str) -> None:
        """A 400 naming each tool whose provider key is not configured here."""
        missing = [tool.value for tool in tools if tool.value not in self.config.tools_enabled]
        if missing:
            raise bad_input(
                f"{where}: {tool} is not available (its provider key is not configured)" for tool in missing
            )


AUTHENTICATED: dict[str, Any] = {
    "dependencies": [Security(BEARER)],
    "responses": {
        **documented_errors(400, 401, 503),
        # Declaring 4XX also keeps FastAPI from documenting its 422, which this API never sends.
        "4XX": {"model": documented_errors(400)[400]["model"], "description": "Another client error."},
    },
}
"""``APIRouter`` keyword arguments of every authenticated family of routes."""
