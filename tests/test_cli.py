"""The CLI as an operator uses it: real subprocesses, a real Postgres, simulated providers."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import uuid
from pathlib import Path

import httpx
import psycopg
import pytest

from reconciler.db import create_database
from tests.conftest import Sim
from tests.support import CLI, ROOT, cli_env, free_port, run_cli


async def test_bad_file_is_refused_with_the_field_named_and_nothing_written(
    db_url: str, tmp_path: Path
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("- instanceId: good1\n- instanceId: 'bad id'\n  tools: [slack]\n")
    code, _, err = await run_cli("apply", str(bad), env=cli_env(db_url))
    assert code == 2
    assert "[1].instanceId: must be 1-32 characters" in err and "[1].tools.0" in err
    assert "Traceback" not in err
    with psycopg.connect(db_url) as conn:
        assert conn.execute("SELECT count(*) FROM desired_instances").fetchone() == (0,)

    broken = tmp_path / "broken.json"
    broken.write_text("[{")
    code, _, err = await run_cli("apply", str(broken), env=cli_env(db_url))
    assert code == 2 and "not valid JSON" in err


async def test_apply_status_delete_round_trip(db_url: str, tmp_path: Path) -> None:
    good = tmp_path / "good.json"
    good.write_text(
        json.dumps([{"instanceId": "cli1", "name": "one", "tools": ["openrouter"], "env": {"A": "1"}}])
    )
    env = cli_env(db_url)
    code, out, _ = await run_cli("apply", str(good), env=env)
    assert code == 0 and "cli1: created" in out
    code, out, _ = await run_cli("apply", str(good), env=env)
    assert code == 0 and "cli1: unchanged" in out

    code, out, _ = await run_cli("status", "--json", env=env)
    [row] = json.loads(out)
    # The shape of GET /instances/{id}: one read model for the CLI and the API.
    assert (row["instanceId"], row["spec"]["tools"], row["phase"], row["present"]) == (
        "cli1",
        ["openrouter"],
        "Pending",
        True,
    )
    assert row["spec"]["envKeys"] == ["A"] and "1" not in json.dumps(row["spec"])

    code, out, _ = await run_cli("delete", "cli1", "ghost", env=env)
    assert code == 1 and "cli1: marked for deletion" in out and "ghost: not found" in out
    code, _, err = await run_cli("delete", "no good", env=env)
    assert code == 2 and "not an instance id" in err


async def test_migrate_twice_is_a_no_op(db_url: str) -> None:
    code, out, _ = await run_cli("migrate", env=cli_env(db_url))
    assert code == 0 and "up to date" in out


async def test_missing_setting_is_one_line_naming_it(db_url: str) -> None:
    code, _, err = await run_cli("reconcile", "--all", env=cli_env(db_url))
    assert code == 2
    assert err.strip().splitlines() == [
        "error: RAILWAY_API_TOKEN is not set (the Railway token the reconciler acts with)"
    ]
    env = cli_env(db_url) | {"OPENROUTER_KEY_LIMIT": "many"}
    code, _, err = await run_cli("status", env=env)
    assert code == 2 and "OPENROUTER_KEY_LIMIT" in err and "Traceback" not in err


async def test_reconcile_prints_what_it_did(db_url: str, sim: Sim, tmp_path: Path) -> None:
    spec = tmp_path / "one.yaml"
    spec.write_text("- instanceId: rec1\n  tools: [agentmail]\n")
    env = cli_env(db_url, sim)
    assert (await run_cli("apply", str(spec), env=env))[0] == 0
    code, out, err = await run_cli("reconcile", "--instance", "rec1", env=env)
    assert code == 0, err
    assert "rec1:" in out and "+ agentmail_inbox" in out and "+ railway_service" in out
    assert [i["name"] for i in sim.simulator.snapshot()["agentmail"]["inboxes"]] == ["convos-agent-rec1"]


async def test_run_serves_metrics_converges_and_stops_cleanly_on_sigterm(
    db_url: str, sim: Sim, tmp_path: Path
) -> None:
    spec = tmp_path / "one.yaml"
    spec.write_text("- instanceId: run1\n  tools: [openrouter]\n")
    api_port = free_port()
    env = cli_env(db_url, sim) | {"SERVICES_API_KEY": "test-api-key", "PORT": str(api_port)}
    assert (await run_cli("apply", str(spec), env=env))[0] == 0
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        *CLI,
        "run",
        "--metrics-port",
        str(port),
        "--tick",
        "0.2",
        env=env,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with httpx.AsyncClient() as client:
            for _ in range(200):
                with psycopg.connect(db_url) as conn:
                    phase = conn.execute("SELECT phase FROM desired_instances").fetchone()
                if phase == ("Ready",):
                    break
                await asyncio.sleep(0.1)
            assert phase == ("Ready",)
            metrics = (await client.get(f"http://127.0.0.1:{port}/metrics")).text
            # The HTTP API runs in the same process, and answers from our tables.
            api = f"http://127.0.0.1:{api_port}"
            assert (await client.get(f"{api}/healthz")).status_code == 200
            assert (await client.post(f"{api}/status/batch", json={})).status_code == 401
            batch = await client.post(
                f"{api}/status/batch", json={}, headers={"Authorization": "Bearer test-api-key"}
            )
            assert [s["instanceId"] for s in batch.json()["services"]] == ["run1"]
            # Readiness sees the database and this process's loop (its last finished tick or pass).
            ready = (await client.get(f"{api}/readyz")).json()
            assert ready["ready"] is True and ready["loop"]["running"] is True
            assert ready["loop"]["lastProgressAgeSeconds"] is not None
        assert 'reconciler_reconcile_total{kind="converge",result="done"}' in metrics
        assert "reconciler_api_database_up 1.0" in metrics
        assert "reconciler_provider_calls_total{operation=" in metrics
        assert "simulated" not in metrics and "sk-or-v1" not in metrics
    finally:
        process.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(process.communicate(), 20)
    assert process.returncode == 0, err.decode()
    assert "reconciler stopped" in err.decode()


async def test_run_refuses_to_open_an_unauthenticated_api(db_url: str, sim: Sim) -> None:
    code, _, err = await run_cli("run", "--metrics-port", "0", env=cli_env(db_url, sim))
    assert code == 2
    assert "SERVICES_API_KEY is not set: refusing to serve an unauthenticated API (or run with --no-api)" in err


async def test_simulate_prints_base_urls_and_serves_the_admin_route() -> None:
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        *CLI,
        "simulate",
        "--port",
        str(port),
        cwd=ROOT,
        env=os.environ | {"PYTHONPATH": str(ROOT)},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        lines = [(await asyncio.wait_for(process.stdout.readline(), 20)).decode() for _ in range(5)]
        text = "".join(lines)
        for prefix in ("/railway/graphql/v2", "/openrouter/api/v1", "/agentmail/v0", "/telnyx/v2"):
            assert f"http://127.0.0.1:{port}{prefix}" in text
        async with httpx.AsyncClient() as client:
            for _ in range(50):
                try:
                    held = (await client.get(f"http://127.0.0.1:{port}/_admin/resources")).json()
                    break
                except httpx.ConnectError:
                    await asyncio.sleep(0.1)
        assert set(held) == {"railway", "openrouter", "agentmail", "telnyx"}
    finally:
        process.terminate()
        await process.wait()


async def test_nul_characters_and_undecodable_files_exit_2_naming_the_field(db_url: str, tmp_path: Path) -> None:
    files: dict[str, tuple[str | bytes, tuple[str, ...]]] = {
        "nul.yaml": ('- instanceId: nul1\n  name: "a\\0b"\n', ("[0].name: ", "must not contain NUL characters")),
        "nul.json": ('[{"instanceId": "nul2", "env": {"K": "x\\u0000y"}}]', ("[0].env", "must not contain NUL")),
        "surrogate.json": ('[{"instanceId": "sur1", "name": "x\\ud800y"}]', ("[0].name: ",)),
        "binary.yaml": (b"\xff\xfe- instanceId: x\n", ("not UTF-8 text",)),
        "deep.json": ("[" * 100_000 + "]" * 100_000, ("not valid JSON",)),
        "long.json": ('[{"instanceId": "x", "redeploy": ' + "9" * 5000 + "}]", ("not valid JSON",)),
    }
    for name, (content, fragments) in files.items():
        path = tmp_path / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
        code, _, err = await run_cli("apply", str(path), env=cli_env(db_url))
        assert (code, err.count("\n")) == (2, 1), (name, err)
        assert all(fragment in err for fragment in fragments) and "Traceback" not in err, (name, err)
    with psycopg.connect(db_url) as conn:
        assert conn.execute("SELECT count(*) FROM desired_instances").fetchone() == (0,)


async def test_a_malformed_id_exits_2_on_every_command_that_takes_one(db_url: str, sim: Sim) -> None:
    env = cli_env(db_url, sim)
    for args in (["why", "a b"], ["status", "a b"], ["reconcile", "-i", "a b"], ["plan", "-i", "ok", "-i", "a/b"]):
        code, _, err = await run_cli(*args, env=env)
        assert code == 2, (args, err)
        assert err.startswith("error: not an instance id: 'a") and err.count("\n") == 1, (args, err)


async def test_every_command_on_an_unmigrated_database_says_run_migrate(
    pg_server_url: str, sim: Sim, tmp_path: Path
) -> None:
    spec = tmp_path / "one.yaml"
    spec.write_text("- instanceId: um1\n")
    commands = [
        ["status"],
        ["status", "um1"],
        ["apply", str(spec)],
        ["delete", "um1"],
        ["why", "um1"],
        ["reconcile", "--all"],
        ["plan"],
        ["gc", "--dry-run"],
        ["run", "--no-api", "--metrics-port", "0"],
    ]
    name = f"u_{uuid.uuid4().hex[:12]}"
    empty = create_database(pg_server_url, name)
    try:
        for args in commands:
            code, _, err = await run_cli(*args, env=cli_env(empty, sim))
            assert code == 1 and err.strip().splitlines() == [
                "error: the database has no schema yet: run `reconciler migrate` first"
            ], (args, err)

        # What a migrate that found no files used to leave: the bookkeeping table, empty.
        with psycopg.connect(empty, autocommit=True) as conn:
            conn.execute("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY)")
        code, _, err = await run_cli("status", env=cli_env(empty))
        assert code == 1 and err.strip().splitlines() == [
            "error: the database schema is behind this version: run `reconciler migrate` first"
        ]
    finally:
        with psycopg.connect(pg_server_url, autocommit=True) as conn:
            conn.execute(psycopg.sql.SQL("DROP DATABASE {} WITH (FORCE)").format(psycopg.sql.Identifier(name)))


async def test_a_table_missing_behind_a_current_version_number_is_one_line(db_url: str) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("DROP TABLE desired_instances CASCADE")
    code, _, err = await run_cli("status", env=cli_env(db_url))
    assert code == 1 and "Traceback" not in err
    assert err.strip().splitlines() == [
        'error: the database schema is behind this version (relation "desired_instances" does not exist): '
        "run `reconciler migrate` first"
    ]


async def test_run_serves_metrics_on_the_host_it_was_given(db_url: str, sim: Sim) -> None:
    host = "127.0.0.2"  # loopback too, yet a server bound to every interface also answers 127.0.0.1
    port, api_port = free_port(), free_port()
    env = cli_env(db_url, sim) | {"SERVICES_API_KEY": "test-api-key", "PORT": str(api_port)}
    process = await asyncio.create_subprocess_exec(
        *CLI, "run", "--no-loop", "--host", host, "--metrics-port", str(port),
        env=env, cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        async with httpx.AsyncClient() as client:
            for _ in range(200):  # the API answers last, once SIGTERM is handled
                try:
                    healthy = await client.get(f"http://{host}:{api_port}/healthz")
                    break
                except httpx.ConnectError:
                    await asyncio.sleep(0.1)
            assert healthy.status_code == 200
            assert (await client.get(f"http://{host}:{port}/metrics")).status_code == 200
            for address in ("127.0.0.1", "localhost"):
                with pytest.raises(httpx.ConnectError):
                    await client.get(f"http://{address}:{port}/metrics")
    finally:
        process.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(process.communicate(), 20)
    assert process.returncode == 0, err.decode()
