"""Property-based testing of the HTTP API against its own ``/openapi.json`` with schemathesis.

The app runs on a loopback port with a real Postgres and the reconcile loop converging against
the simulated providers (so creates also answer 200 with real data, not only 202). Schemathesis
generates valid and invalid requests for every operation, plus stateful sequences that follow
the links between them (create, then configure, destroy... the same id), and checks every answer:
no 5xx, status codes, content types, headers and bodies as documented, invalid input refused,
and authentication enforced (it retries requests without the bearer token).

One check is left out: ``positive_data_acceptance`` ("every schema-valid request succeeds").
Some rules cannot be said in JSON Schema (an opaque cursor must be one this API issued;
``config.limit`` applies to OpenRouter only; a merged env may exceed 200 variables), and the API
rightly answers those with a 400 naming the field.

Kept short for CI (seeded, a few examples per operation, well under a minute); raise
``MAX_EXAMPLES`` locally for a deeper run.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest

from reconciler.runtime import Runtime
from tests.conftest import Sim
from tests.support import API_KEY, config_for, looping, served

MAX_EXAMPLES = int(os.environ.get("SCHEMATHESIS_MAX_EXAMPLES", "10"))
SCHEMATHESIS = Path(sys.executable).parent / "schemathesis"


@pytest.mark.timeout(180)
async def test_schemathesis_finds_no_server_error_and_no_schema_violation(
    db_url: str, sim: Sim, runtime: Runtime, tmp_path: Path
) -> None:
    if not SCHEMATHESIS.exists():
        pytest.skip("schemathesis is not installed in this environment (pip install schemathesis)")
    async with looping(runtime), served(config_for(db_url, sim, wait_timeout=0.1)) as api:
        process = await asyncio.create_subprocess_exec(
            str(SCHEMATHESIS),
            "run",
            f"{api.root}/openapi.json",
            "--header",
            f"Authorization: Bearer {API_KEY}",
            "--checks",
            "all",
            "--exclude-checks",
            "positive_data_acceptance",
            "--max-examples",
            str(MAX_EXAMPLES),
            "--seed",
            "20260411",
            "--report",
            "ndjson",
            "--report-dir",
            str(tmp_path),
            "--request-timeout",
            "30",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            cwd=tmp_path,  # its .hypothesis database and any report stay out of the repository
            env={**os.environ, "NO_COLOR": "1", "SCHEMATHESIS_HOOKS": ""},
        )
        output, _ = await asyncio.wait_for(process.communicate(), timeout=170)
    text = output.decode(errors="replace")
    print(text[-2500:])  # the run's summary, in the test log
    assert process.returncode == 0, text[-30000:]
    assert "No issues found" in text or " passed" in text, text[-4000:]
