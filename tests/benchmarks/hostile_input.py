"""Benchmark: hostile request bodies must not stall the API (issue 11; targets: ``/healthz`` p99
under 100 ms while they are sent, and the server's peak RSS under 300 MB).

Issue 11 measured an 8 MB create body holding 1.6 million tools: 15 s to answer, ``/healthz``
(and the reconcile loop, which shares the event loop) blocked for those 15 s, the process at
3 GB, a 223 MB error body; and a streamed 400 MB body grew the process by 740 MB before its 413.
This benchmark serves the real app in a child process pinned to two CPUs (as ``status_batch``
does) and, from two senders at once, sends round after round of:

* ``tools``: a create body of 500,000 tools (7 MB);
* ``nested``: a create body whose env holds two million empty lists (6 MB; the shape
  ``json.loads`` is slowest on);
* ``fields``: a create body with 900 unknown fields (each a problem: the error body must stay
  bounded);
* ``streamed``: a 64 MiB body streamed without ``Content-Length`` (refused at the 8 MiB cap);
* ``declared``: a body declaring 400 MB (refused before it is read).

Meanwhile a third client asks ``/healthz`` every 20 ms and records each latency. At the end the
server's peak RSS (``VmHWM``) is read, and that of the JSON worker process it started.

Run it with ``python -m tests.benchmarks.hostile_input [DATABASE_URL]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx

from reconciler.db import EmbeddedPostgres
from tests.benchmarks.status_batch import API_KEY, _percentile, drop_database, prepare_database, serve_app

TARGET_P99_MS = 100.0
TARGET_RSS_MB = 300.0
STREAM_CHUNK = 256 * 1024


def bodies() -> dict[str, bytes]:
    tools = json.dumps({"instanceId": "hostile", "tools": ["openrouter"] * 500_000}).encode()
    nested = b'{"instanceId": "hostile", "env": {"A": [' + b",".join([b"[]"] * 2_000_000) + b"]}}"
    fields = json.dumps({"instanceId": "hostile", **{f"field{n}": n for n in range(900)}}).encode()
    return {"tools": tools, "nested": nested, "fields": fields}


async def _stream(total: int) -> AsyncIterator[bytes]:
    chunk = b" " * STREAM_CHUNK
    for _ in range(total // STREAM_CHUNK):
        yield chunk


def _peak_rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry.name))
    return found


async def run(database_url: str, *, rounds: int = 10, senders: int = 2, cpus: int = 2) -> dict[str, object]:
    """Serve, send hostile bodies while probing ``/healthz``; returns the numbers (ms, MB)."""
    bench_url = prepare_database(database_url, 0)
    payloads = bodies()
    statuses: Counter[str] = Counter()
    largest_error = 0
    latencies: list[float] = []
    try:
        async with (
            serve_app(bench_url, cpus) as (root, pid),
            httpx.AsyncClient(base_url=root, timeout=60) as prober,
        ):
            done = asyncio.Event()

            async def probe() -> None:
                while not done.is_set():
                    started = time.perf_counter()
                    (await prober.get("/healthz")).raise_for_status()
                    latencies.append((time.perf_counter() - started) * 1000)
                    await asyncio.sleep(0.02)

            async def send(kind: str, client: httpx.AsyncClient) -> None:
                nonlocal largest_error
                headers = {"Content-Type": "application/json"}
                try:
                    if kind == "streamed":
                        response = await client.post("/create-instance", content=_stream(64 << 20), headers=headers)
                    elif kind == "declared":
                        headers["Content-Length"] = str(400_000_000)
                        response = await client.post("/create-instance", content=_stream(8 << 20), headers=headers)
                    else:
                        response = await client.post("/create-instance", content=payloads[kind], headers=headers)
                except httpx.TransportError:
                    # Refused mid-upload: the server answered 413 and closed while we were still sending.
                    statuses[f"{kind}:closed"] += 1
                    return
                statuses[f"{kind}:{response.status_code}"] += 1
                largest_error = max(largest_error, len(response.content))

            async def sender() -> None:
                auth = {"Authorization": f"Bearer {API_KEY}"}
                for _ in range(rounds):
                    for kind in ("tools", "nested", "fields", "streamed", "declared"):
                        async with httpx.AsyncClient(base_url=root, headers=auth, timeout=60) as client:
                            await send(kind, client)

            probing = asyncio.create_task(probe())
            started = time.monotonic()
            await asyncio.gather(*(sender() for _ in range(senders)))
            wall = time.monotonic() - started
            done.set()
            await probing
            server_rss = _peak_rss_mb(pid)
            worker_rss = max((_peak_rss_mb(child) or 0.0 for child in _children(pid)), default=None)
    finally:
        drop_database(database_url)

    p99 = _percentile(latencies, 0.99)
    return {
        "hostile_requests": sum(statuses.values()),
        "statuses": dict(sorted(statuses.items())),
        "wall_seconds": round(wall, 1),
        "healthz_samples": len(latencies),
        "healthz_p50_ms": round(_percentile(latencies, 0.5), 1),
        "healthz_p99_ms": round(p99, 1),
        "healthz_max_ms": round(max(latencies), 1),
        "largest_error_body_bytes": largest_error,
        "server_peak_rss_mb": server_rss,
        "worker_peak_rss_mb": worker_rss,
        "target_p99_ms": TARGET_P99_MS,
        "target_rss_mb": TARGET_RSS_MB,
        "meets_latency_target": p99 < TARGET_P99_MS,
        "meets_rss_target": server_rss is not None and server_rss < TARGET_RSS_MB,
    }


def markdown(results: dict[str, Any]) -> str:
    rows = [
        ("hostile requests (2 senders)", results["hostile_requests"]),
        ("answers", ", ".join(f"{k} x{v}" for k, v in results["statuses"].items())),
        ("wall time (s)", results["wall_seconds"]),
        ("/healthz samples", results["healthz_samples"]),
        ("/healthz p50 (ms)", results["healthz_p50_ms"]),
        ("/healthz p99 (ms)", results["healthz_p99_ms"]),
        ("/healthz max (ms)", results["healthz_max_ms"]),
        ("largest error body (bytes)", results["largest_error_body_bytes"]),
        ("server peak RSS (MB)", results["server_peak_rss_mb"]),
        ("JSON worker peak RSS (MB)", results["worker_peak_rss_mb"]),
        (f"p99 < {results['target_p99_ms']:g} ms", "yes" if results["meets_latency_target"] else "NO"),
        (f"server RSS < {results['target_rss_mb']:g} MB", "yes" if results["meets_rss_target"] else "NO"),
    ]
    lines = ["| hostile input | value |", "|---|---:|"]
    lines += [f"| {name} | {value} |" for name, value in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("database_url", nargs="?", help="Postgres server URL; default: embedded")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--json", action="store_true", help="print the result dict")
    args = parser.parse_args()
    url = args.database_url or os.environ.get("SERVICE_DATABASE_URL")
    if url:
        results = asyncio.run(run(url, rounds=args.rounds))
    else:
        with (
            tempfile.TemporaryDirectory(prefix="rpgh") as directory,
            EmbeddedPostgres(Path(directory) / "data") as embedded,
        ):
            results = asyncio.run(run(embedded, rounds=args.rounds))
    print(json.dumps(results, indent=1) if args.json else markdown(results))


if __name__ == "__main__":
    main()
