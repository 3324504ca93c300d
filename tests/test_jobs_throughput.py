"""The jobs benchmark (tests/benchmarks/jobs_throughput.py) at a smoke size.

``make bench`` runs it with 10,000 jobs on each side and writes docs/benchmarks.md; this runs the
same code with a few hundred, checks that both drains complete, that every HTTP admission was
accepted and drained, and that the ledger audit is clean after each part. procrastinate is a
benchmark-only dependency (the ``bench`` extra): without it, its half is skipped and said so.
The rates at this size say nothing about the targets, so none is asserted.
"""

from __future__ import annotations

import ast
import asyncio
from pathlib import Path
from typing import Any

import pytest

from tests.benchmarks import jobs_throughput

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


KNOBS: dict[str, Any] = {**jobs_throughput.QUICK, "http_clients": 2, "http_seconds": 1.0}


@pytest.fixture(scope="module")
def results(pg_server_url: str) -> Any:
    """One smoke-size run of the whole benchmark, shared by the tests below."""
    return asyncio.run(jobs_throughput.run(pg_server_url, **KNOBS))


def test_our_drain_completes_and_the_audit_is_clean(results: Any) -> None:
    ours = results["ours"]
    assert ours["complete"] and ours["completed"] == ours["total"] == KNOBS["jobs"]
    assert ours["audit"] == {"clean": True, "violations": [], "escrow": 0, "revenue": KNOBS["jobs"]}
    assert ours["drain_jobs_per_second"] > 0 and ours["admit_jobs_per_second"] > 0
    assert 0 < ours["claim_to_terminal_p50_ms"] <= ours["claim_to_terminal_p99_ms"]
    assert ours["admission_to_terminal_p50_ms"] <= ours["admission_to_terminal_p99_ms"]
    # Batched claims and terminations: far fewer commits than jobs.
    assert 0 < ours["commits_per_job"] < 0.5 and ours["commit_ms"] > 0


def test_every_http_admission_is_accepted_drained_and_audited(results: Any) -> None:
    http = results["http"]
    assert http["requests"] > 0 and http["status_codes"] == {"202": http["requests"]}
    assert http["complete"] and http["admitted"] == http["completed"] == http["requests"]
    assert http["audit"]["clean"] and results["audit_clean"]
    assert http["p50_ms"] <= http["p99_ms"]


def test_procrastinate_drains_beside_it_and_the_ratio_is_reported(results: Any) -> None:
    if not jobs_throughput.procrastinate_installed():
        assert results["procrastinate"] == [] and results["ratio"] is None
        pytest.skip("procrastinate is not installed (pip install -e '.[bench]'): its half was skipped")
    [peer] = results["procrastinate"]
    assert peer["complete"] and peer["statuses"] == {"succeeded": KNOBS["jobs"]}
    assert peer["commits_per_job"] > 0
    assert results["procrastinate_best"] == peer
    ours = results["ours"]
    assert results["ratio"] == round(ours["drain_jobs_per_second"] / peer["drain_jobs_per_second"], 1)
    [ratio_row, *_] = jobs_throughput.summary_rows(results)
    assert "procrastinate" in ratio_row[0] and ratio_row[2].endswith(f"= {results['ratio']:.1f}{jobs_throughput.TIMES}")
    document = jobs_throughput.markdown(results)
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
