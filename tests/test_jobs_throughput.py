"""The jobs benchmark (tests/benchmarks/jobs_throughput.py) at a smoke size.

``make bench`` runs it with 10,000 jobs on each side and writes docs/benchmarks.md; this runs the
same code with a few hundred, checks that both drains complete, that every HTTP admission was
accepted and drained, and that the ledger audit is clean after each part. procrastinate is a
benchmark-only dependency (the ``bench`` extra): without it, its half is skipped and said so.
The rates at this size say nothing about the targets, so none is asserted.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import pytest

from tests.benchmarks import jobs_throughput

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


async def test_both_drains_complete_and_the_audit_is_clean(pg_server_url: str) -> None:
    knobs: dict[str, Any] = {**jobs_throughput.QUICK, "http_clients": 2, "http_seconds": 1.0}
    results: Any = await jobs_throughput.run(pg_server_url, **knobs)

    ours = results["ours"]
    assert ours["complete"] and ours["completed"] == ours["total"] == knobs["jobs"]
    assert ours["audit"] == {"clean": True, "violations": [], "escrow": 0, "revenue": knobs["jobs"]}
    assert ours["drain_jobs_per_second"] > 0 and ours["admit_jobs_per_second"] > 0
    assert 0 < ours["claim_to_terminal_p50_ms"] <= ours["claim_to_terminal_p99_ms"]
    assert ours["admission_to_terminal_p50_ms"] <= ours["admission_to_terminal_p99_ms"]

    http = results["http"]
    assert http["requests"] > 0 and http["status_codes"] == {"202": http["requests"]}
    assert http["complete"] and http["admitted"] == http["completed"] == http["requests"]
    assert http["audit"]["clean"] and results["audit_clean"]

    rows = jobs_throughput.summary_rows(results)
    document = jobs_throughput.markdown(results)
    if not jobs_throughput.procrastinate_installed():
        assert results["procrastinate"] == [] and results["ratio"] is None
        pytest.skip("procrastinate is not installed (pip install -e '.[bench]'): its half was skipped")
    [peer] = results["procrastinate"]
    assert peer["complete"] and peer["statuses"] == {"succeeded": knobs["jobs"]}
    assert results["procrastinate_best"] == peer
    assert results["ratio"] == round(ours["drain_jobs_per_second"] / peer["drain_jobs_per_second"], 1)
    assert "procrastinate" in rows[0][0] and rows[0][2].endswith(f"= {results['ratio']:.1f}{jobs_throughput.TIMES}")
    assert f"procrastinate {results['procrastinate_version']}, concurrency 10" in document


def test_the_product_never_imports_procrastinate() -> None:
    packages = ("reconciler", "desired_state", "providers")
    sources = [ROOT / "cli.py", *(path for package in packages for path in (ROOT / package).rglob("*.py"))]
    for path in sources:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            assert not any(name.split(".")[0] == "procrastinate" for name in names), path
