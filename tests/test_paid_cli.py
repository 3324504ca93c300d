"""The paid half's commands as an operator runs them: real subprocesses and a real Postgres."""

from __future__ import annotations

import json
import re

import psycopg

from desired_state.services import callers
from tests.test_cli import cli_env, run_cli


def count(db_url: str, table: str) -> int:
    with psycopg.connect(db_url) as conn:
        row = conn.execute(psycopg.sql.SQL("SELECT count(*) FROM {}").format(psycopg.sql.Identifier(table))).fetchone()
    assert row is not None
    return int(row[0])


async def test_callers_credits_courses_and_audit(db_url: str) -> None:
    env = cli_env(db_url)
    code, out, err = await run_cli("callers", "create", "Ada@Example.com", env=env)
    assert code == 0, err
    key = out.strip()
    assert re.fullmatch(r"sk-[A-Za-z0-9_-]{43}", key) and "shown once" in err
    code, _, err = await run_cli("callers", "create", "ada@example.com", env=env)
    assert code == 1 and "already exists" in err

    code, out, _ = await run_cli("credits", "grant", "ada@example.com", "500", "--reason", "welcome", env=env)
    assert code == 0 and "balance 500" in out
    code, out, _ = await run_cli("credits", "show", "ada@example.com", "--json", env=env)
    shown = json.loads(out)
    assert shown["balance"] == 500 and [t["kind"] for t in shown["transfers"]] == ["grant"]

    code, out, _ = await run_cli("courses", "enroll", "ada@example.com", "media-101", env=env)
    assert code == 0 and "enrolled in media-101" in out

    code, out, _ = await run_cli("ledger", "audit", env=env)
    assert code == 0 and "every invariant holds" in out and "granted 500 = callers 500" in out

    # break the ledger behind its back: the audit names each violated invariant and exits 1
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("UPDATE credit_accounts SET balance = balance + 7 WHERE kind = 'caller'")
    code, out, _ = await run_cli("ledger", "audit", env=env)
    assert code == 1
    assert "I1 conservation: all balances sum to 7, not 0" in out
    assert "I2 parity" in out and "holds 507 but its transfers sum to 500" in out

    code, out, _ = await run_cli("callers", "revoke", "ada@example.com", env=env)
    assert code == 0 and out.startswith("revoked sk-")
    async with await psycopg.AsyncConnection.connect(db_url) as conn:
        assert await callers.verify_key(conn, key) is None
    code, _, err = await run_cli("callers", "revoke", "ada@example.com", env=env)
    assert code == 1 and "no live key" in err


async def test_bad_input_exits_2_naming_the_field_and_writes_nothing(db_url: str) -> None:
    env = cli_env(db_url)
    cases = [
        (("callers", "create", "not-an-email"), "email"),
        (("credits", "grant", "ada@example.com", "0", "--reason", "x"), "amount"),
        (("credits", "grant", "ada@example.com", "ten", "--reason", "x"), "amount"),
        (("credits", "grant", "ada@example.com", "5"), "--reason"),
        (("credits", "grant", "ada@example.com", "5", "--reason", " "), "--reason"),
        (("credits", "grant", "bad email", "5", "--reason", "x"), "email"),
        (("credits", "show", "@"), "email"),
        (("courses", "enroll", "ada@example.com", "Bad Course!"), "course"),
        (("callers", "revoke", "ada@example.com", "--key", "pk-123"), "--key"),
        (("callers", "key", "ada"), "email"),
        (("courses", "enroll", "ada@@example.com", "media-101"), "email"),
    ]
    for args, field in cases:
        code, _, err = await run_cli(*args, env=env)
        assert code == 2, (args, err)
        assert field in err and "Traceback" not in err, (args, err)
    for table in ("callers", "caller_keys", "credit_transfers", "course_enrollments"):
        assert count(db_url, table) == 0, table
    code, _, err = await run_cli("credits", "grant", "nobody@example.com", "5", "--reason", "x", env=env)
    assert code == 1 and "no caller nobody@example.com" in err


async def test_services_list(db_url: str) -> None:
    env = cli_env(db_url)
    env["AGENTS_PROVISION_COST_CREDITS"] = "250"
    code, out, _ = await run_cli("services", "list", "--json", env=env)
    assert code == 0
    costs = {item["id"]: item["costCredits"] for item in json.loads(out)}
    assert costs == {"agents.destroy": 0, "agents.provision": 250, "util.delay-echo": 1, "util.echo": 1}
    env["AGENTS_PROVISION_COST_CREDITS"] = "lots"
    code, _, err = await run_cli("services", "list", env=env)
    assert code == 2 and "AGENTS_PROVISION_COST_CREDITS" in err
