"""Webhooks: signed per Standard Webhooks, written to an outbox when a job ends, delivered by the loop.

Signatures are checked with an independent implementation of the specification (the
``standardwebhooks`` package) as well as ours; deliveries go to a real receiver on loopback,
from jobs admitted and ended by the real SQL functions (``paid_admit``, ``paid_terminate``).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import random
import sys
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest
from prometheus_client import CollectorRegistry
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from desired_state.webhooks import (
    WebhookState,
    WebhookUrlError,
    WebhookView,
    attach_webhook_url,
    parse_webhook_url,
    webhook_id,
    webhook_view,
)
from providers.http import parse_retry_after
from reconciler.metrics import Metrics
from reconciler.settings import SettingsError
from reconciler.webhooks.delivery import RETRY_SCHEDULE, AttemptResult, WebhookSender, decide
from reconciler.webhooks.safety import RefusedDestination, forbidden, resolve_target
from reconciler.webhooks.settings import WebhookSettings, load_webhook_settings
from reconciler.webhooks.signing import (
    VerificationError,
    new_secret,
    parse_secret,
    parse_secrets,
    sign,
    signed_headers,
    verify,
)
from tests.webhook_receiver import Answer, running_receiver

SECRET = new_secret()
SERVICE = "test.hook"
FAST_SCHEDULE = (0.0, 0.05, 0.05, 0.05)
ROOT = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-c", "import cli; cli.main()"]


# -- signing ---------------------------------------------------------------------------------------


def _standard(secret: str, body: bytes, headers: dict[str, str]) -> Any:
    return Webhook(secret).verify(body, headers)


def test_our_signature_verifies_with_the_standardwebhooks_package() -> None:
    body = b'{"jobId":"j","status":"completed"}'
    headers = signed_headers(parse_secrets(SECRET), "evt_1_completed", int(time.time()), body)
    assert _standard(SECRET, body, headers) == {"jobId": "j", "status": "completed"}
    # and the package's own signature matches ours byte for byte
    from datetime import UTC, datetime

    timestamp = int(time.time())
    theirs = Webhook(SECRET).sign("evt_1_completed", datetime.fromtimestamp(timestamp, UTC), body.decode())
    assert theirs == sign(parse_secrets(SECRET), "evt_1_completed", timestamp, body)


def test_tampered_body_timestamp_or_id_is_rejected() -> None:
    body = b'{"payload":{"amount":1}}'
    now = int(time.time())
    headers = signed_headers(parse_secrets(SECRET), "evt_1_completed", now, body)
    keys = parse_secrets(SECRET)
    assert verify(keys, headers, body, now=now) == "evt_1_completed"
    tampered = {
        "body": (headers, b'{"payload":{"amount":9}}'),
        "appended": (headers, body + b" "),
        "timestamp": ({**headers, "webhook-timestamp": str(now - 1)}, body),
        "id": ({**headers, "webhook-id": "evt_2_completed"}, body),
        "signature": ({**headers, "webhook-signature": "v1," + base64.b64encode(b"x" * 32).decode()}, body),
        "version": ({**headers, "webhook-signature": headers["webhook-signature"].replace("v1,", "v2,")}, body),
    }
    for name, (bad_headers, bad_body) in tampered.items():
        with pytest.raises(VerificationError):
            verify(keys, bad_headers, bad_body, now=now)
        with pytest.raises(WebhookVerificationError):
            _standard(SECRET, bad_body, bad_headers)
        assert name  # every case was checked by both implementations
    with pytest.raises(WebhookVerificationError):
        _standard(new_secret(), body, headers)  # another secret


def test_old_and_future_timestamps_are_rejected() -> None:
    body = b"{}"
    keys = parse_secrets(SECRET)
    for offset in (-600, +600):
        stamp = int(time.time()) + offset
        headers = signed_headers(keys, "evt_1_failed", stamp, body)
        with pytest.raises(WebhookVerificationError, match=r"too (old|new)"):
            _standard(SECRET, body, headers)
        with pytest.raises(VerificationError, match="tolerance"):
            verify(keys, headers, body, now=time.time())
    fresh = signed_headers(keys, "evt_1_failed", int(time.time()) - 60, body)
    assert verify(keys, fresh, body, now=time.time()) == "evt_1_failed"


def test_rotation_signs_with_every_secret() -> None:
    old, new = new_secret(), new_secret()
    body = b'{"status":"completed"}'
    headers = signed_headers(parse_secrets(f"{old} {new}"), "evt_1_completed", int(time.time()), body)
    assert len(headers["webhook-signature"].split()) == 2
    for secret in (old, new):  # a receiver on either secret accepts the message
        _standard(secret, body, headers)
        verify(parse_secrets(secret), headers, body, now=time.time())
    after = signed_headers(parse_secrets(new), "evt_1_completed", int(time.time()), body)
    with pytest.raises(WebhookVerificationError):
        _standard(old, body, after)  # the old secret is retired


def test_secrets_are_checked_and_never_echoed() -> None:
    assert len(base64.b64decode(new_secret().removeprefix("whsec_"))) == 32
    parse_secret(new_secret())
    bad_values = (
        "hunter2-not-a-secret",
        "whsec_!!!notbase64",
        "whsec_" + base64.b64encode(b"short").decode(),
        f"{SECRET} whsec_zzz",
    )
    for bad in bad_values:
        with pytest.raises(SettingsError) as caught:
            load_webhook_settings({"SERVICE_WEBHOOK_SECRET": bad})
        message = str(caught.value)
        assert message.startswith("SERVICE_WEBHOOK_SECRET:") and "\n" not in message
        assert bad.split()[-1] not in message and SECRET not in message
    assert not load_webhook_settings({}).enabled
    settings = load_webhook_settings({"SERVICE_WEBHOOK_SECRET": f" {SECRET}  {new_secret()} "})
    assert len(settings.keys) == 2 and SECRET not in repr(settings)
    with pytest.raises(SettingsError, match="WEBHOOK_ALLOW_PRIVATE"):
        load_webhook_settings({"WEBHOOK_ALLOW_PRIVATE": "maybe"})
    with pytest.raises(SettingsError, match="WEBHOOK_TIMEOUT_SECONDS"):
        load_webhook_settings({"WEBHOOK_TIMEOUT_SECONDS": "0"})


# -- the schedule ----------------------------------------------------------------------------------


def test_retry_schedule_with_jitter_then_failed() -> None:
    rng = random.Random(7)
    assert RETRY_SCHEDULE == (0, 5, 300, 1800, 7200, 18000, 36000, 36000)
    error = AttemptResult(500, "boom")
    for attempts_before in range(len(RETRY_SCHEDULE) - 1):
        decision = decide(attempts_before, error, rng)
        expected = RETRY_SCHEDULE[attempts_before + 1]
        assert decision.state is WebhookState.PENDING and decision.result == "server_error"
        assert expected * 0.9 <= decision.delay <= expected * 1.1
    assert decide(len(RETRY_SCHEDULE) - 1, error, rng).state is WebhookState.FAILED
    assert decide(0, AttemptResult(204), rng).state is WebhookState.DELIVERED
    assert decide(0, AttemptResult(410), rng).state is WebhookState.FAILED
    assert decide(0, AttemptResult(None, "refused", refused=True), rng).state is WebhookState.FAILED
    assert decide(0, AttemptResult(302), rng).result == "redirect"
    assert decide(0, AttemptResult(None, "timeout"), rng).state is WebhookState.PENDING


def test_retry_after_is_honoured_on_429_and_503_only() -> None:
    rng = random.Random(1)
    assert decide(0, AttemptResult(429, retry_after=120), rng).delay >= 120
    assert decide(0, AttemptResult(503, retry_after=120), rng).delay >= 120
    assert decide(0, AttemptResult(500, retry_after=120), rng).delay < 10
    assert decide(3, AttemptResult(429, retry_after=5), rng).delay >= 1800 * 0.9  # never sooner than the schedule
    assert decide(1, AttemptResult(429, retry_after=10**9), rng).delay == 86_400
    assert parse_retry_after("30", 0) == 30
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", 1445412480 - 60) == 60
    assert parse_retry_after("soon", 0) is None


# -- outbound safety -------------------------------------------------------------------------------


def test_private_loopback_link_local_and_metadata_addresses_are_forbidden() -> None:
    import ipaddress

    for text in (
        "127.0.0.1",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",
        "100.64.0.1",
        "0.0.0.0",
        "::1",
        "fd00:ec2::254",
        "fe80::1",
        "::ffff:127.0.0.1",
        "224.0.0.1",
        # IPv6 addresses that reach a private IPv4 one through a gateway or a tunnel
        "64:ff9b::7f00:1",
        "64:ff9b::a9fe:a9fe",
        "64:ff9b:1::a00:1",
        "2002:7f00:1::",
        "2002:a9fe:a9fe::",
        "2001:0:4136:e378:8000:63bf:f5ff:fffe",  # Teredo to 10.0.0.1
        "::127.0.0.1",
        "::10.0.0.1",
    ):
        assert forbidden(ipaddress.ip_address(text)), text
    for text in ("93.184.216.34", "2606:4700::1111", "::ffff:8.8.8.8", "64:ff9b::808:808"):
        assert not forbidden(ipaddress.ip_address(text)), text


async def test_targets_are_pinned_to_the_checked_address() -> None:
    with pytest.raises(RefusedDestination):
        await resolve_target("http://localhost:9/hook", allow_private=False)
    with pytest.raises(RefusedDestination):
        await resolve_target("http://169.254.169.254/latest/meta-data", allow_private=False)
    with pytest.raises(RefusedDestination):
        await resolve_target("ftp://example.com/", allow_private=True)
    target = await resolve_target("http://localhost:9/hook?a=1", allow_private=True)
    assert target.url in ("http://127.0.0.1:9/hook?a=1", "http://[::1]:9/hook?a=1")
    assert target.host_header == "localhost:9" and target.server_name is None


def test_webhook_url_shape() -> None:
    assert parse_webhook_url(" https://example.com/cb?x=1 ") == "https://example.com/cb?x=1"
    for bad in ("", "ftp://example.com", "example.com/cb", "https://", "https://u:p@example.com/", "http://a b/"):
        with pytest.raises(WebhookUrlError, match=r"^X-Webhook-Url "):
            parse_webhook_url(bad)
    with pytest.raises(WebhookUrlError):
        parse_webhook_url("https://example.com/" + "a" * 2048)


# -- delivery, end to end --------------------------------------------------------------------------


async def _service_and_caller(conn: psycopg.AsyncConnection[Any], email: str = "ada@example.com") -> uuid.UUID:
    await conn.execute(
        "INSERT INTO paid_services (service_id, runtime, cost_credits, timeout_seconds, max_attempts)"
        " VALUES (%s, 'job', 0, 60, 1) ON CONFLICT DO NOTHING",
        (SERVICE,),
    )
    cur = await conn.execute("INSERT INTO callers (email) VALUES (%s) RETURNING caller_id", (email,))
    row = await cur.fetchone()
    assert row is not None
    await conn.execute(
        "INSERT INTO credit_accounts (account_id, kind, caller_id, balance)"
        " VALUES ('caller:' || %s::text, 'caller', %s, 0)",
        (row[0], row[0]),
    )
    return uuid.UUID(str(row[0]))


async def _admit(conn: psycopg.AsyncConnection[Any], caller: uuid.UUID, url: str | None) -> uuid.UUID:
    async with conn.transaction():
        cur = await conn.execute(
            "SELECT outcome, job_id FROM paid_admit(%s, %s, %s)", (caller, SERVICE, Jsonb({"n": 1}))
        )
        row = await cur.fetchone()
        assert row is not None and row[0] == "admitted"
        if url is not None:
            await attach_webhook_url(conn, row[1], url)
    return uuid.UUID(str(row[1]))


async def _terminate(
    conn: psycopg.AsyncConnection[Any],
    job_id: uuid.UUID,
    status: str,
    result: Any = None,
    code: str | None = None,
    message: str | None = None,
) -> None:
    cur = await conn.execute(
        "SELECT changed FROM paid_terminate(%s, %s, ARRAY['pending', 'running'], NULL, now(), %s, %s, %s)",
        (job_id, status, None if result is None else Jsonb(result), code, message),
    )
    assert await cur.fetchone() == (True,)


@asynccontextmanager
async def _sender(
    db_url: str, settings: WebhookSettings | None = None, schedule: tuple[float, ...] = FAST_SCHEDULE
) -> AsyncIterator[WebhookSender]:
    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
        db_url, min_size=1, max_size=4, kwargs={"autocommit": True}, open=False
    )
    await pool.open(wait=True)
    settings = settings or WebhookSettings(keys=parse_secrets(SECRET), allow_private=True, timeout_seconds=2)
    sender = WebhookSender(
        pool, settings, Metrics(CollectorRegistry()), owner="test", schedule=schedule, rng=random.Random(3)
    )
    try:
        yield sender
    finally:
        await sender.aclose()
        await pool.close()


def _view(view: WebhookView | None) -> dict[str, Any] | None:
    return None if view is None else view.model_dump(mode="json")


async def _state(conn: psycopg.AsyncConnection[Any], job_id: uuid.UUID) -> tuple[Any, ...]:
    cur = await conn.execute(
        "SELECT state, attempts, last_status, last_error FROM webhook_deliveries WHERE job_id = %s", (job_id,)
    )
    row = await cur.fetchone()
    assert row is not None
    return tuple(row)


async def _until_final(sender: WebhookSender, conn: psycopg.AsyncConnection[Any], job_id: uuid.UUID) -> tuple[Any, ...]:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        await sender.drain()
        state = await _state(conn, job_id)
        if state[0] != WebhookState.PENDING:
            return state
        await asyncio.sleep(0.05)
    raise AssertionError(f"delivery of {job_id} still pending: {await _state(conn, job_id)}")


async def test_a_finished_job_is_delivered_once_signed_with_the_seeds_fields(
    db_url: str, conn: psycopg.AsyncConnection[Any]
) -> None:
    caller = await _service_and_caller(conn)
    async with running_receiver() as receiver, _sender(db_url) as sender:
        job = await _admit(conn, caller, receiver.url)
        assert _view(await webhook_view(conn, job)) == {
            "url": receiver.url,
            "state": "pending",
            "attempts": 0,
            "lastStatus": None,
        }
        await _terminate(conn, job, "completed", result={"echo": {"hi": 1}})
        assert await _until_final(sender, conn, job) == ("delivered", 1, 200, None)
        assert await sender.drain() == 0  # nothing more is owed

    [got] = receiver.deliveries()
    assert got.headers["webhook-id"] == webhook_id(job, "completed") == f"evt_{job}_completed"
    assert got.headers["content-type"] == "application/json"
    assert got.headers["x-clawvard-job-id"] == str(job) and got.headers["x-clawvard-service-id"] == SERVICE
    assert abs(int(got.headers["webhook-timestamp"]) - time.time()) < 30
    payload = _standard(SECRET, got.body, got.headers)
    assert set(payload) == {"jobId", "serviceId", "userEmail", "status", "payload", "deliveredAt"}
    assert payload["jobId"] == str(job) and payload["serviceId"] == SERVICE
    assert payload["userEmail"] == "ada@example.com" and payload["status"] == "completed"
    assert payload["payload"] == {"echo": {"hi": 1}} and payload["deliveredAt"].endswith("Z")
    assert _view(await webhook_view(conn, job)) == {
        "url": receiver.url,
        "state": "delivered",
        "attempts": 1,
        "lastStatus": 200,
    }
    stored = await conn.execute("SELECT body FROM webhook_deliveries WHERE job_id = %s", (job,))
    assert (await stored.fetchone()) == (got.body,)  # the bytes sent are the bytes stored


async def test_every_terminal_status_gets_one_delivery_and_no_url_none(
    db_url: str, conn: psycopg.AsyncConnection[Any]
) -> None:
    caller = await _service_and_caller(conn)
    async with running_receiver() as receiver, _sender(db_url) as sender:
        jobs = {}
        for status in ("completed", "failed", "cancelled", "timed_out"):
            jobs[status] = await _admit(conn, caller, receiver.url)
            code = None if status == "completed" else f"{status}_code"
            await _terminate(
                conn,
                jobs[status],
                status,
                result={"ok": True} if code is None else None,
                code=code,
                message=None if code is None else "why",
            )
        quiet = await _admit(conn, caller, None)
        await _terminate(conn, quiet, "completed", result={})
        assert await webhook_view(conn, quiet) is None
        # a second termination attempt changes nothing, so it owes nothing either
        cur = await conn.execute(
            "SELECT changed FROM paid_terminate(%s, 'failed', ARRAY['pending', 'running'], NULL, now())",
            (jobs["completed"],),
        )
        assert await cur.fetchone() == (False,)
        await sender.drain()
    ids = receiver.ids()
    assert ids == {webhook_id(job, status): 1 for status, job in jobs.items()}
    for got in receiver.deliveries():
        body = _standard(SECRET, got.body, got.headers)
        if body["status"] == "completed":
            assert body["payload"] == {"ok": True}
        else:
            assert body["payload"] == {"code": f"{body['status']}_code", "message": "why"}


async def test_retries_send_the_same_bytes_and_id_with_fresh_signatures(
    db_url: str, conn: psycopg.AsyncConnection[Any]
) -> None:
    caller = await _service_and_caller(conn)
    async with running_receiver() as receiver, _sender(db_url) as sender:
        receiver.script = [
            Answer(500, body=b"x" * 100_000),
            Answer(503, {"Retry-After": "0"}),
            Answer(302, {"Location": f"{receiver.root}/elsewhere"}),
        ]
        job = await _admit(conn, caller, receiver.url)
        await _terminate(conn, job, "failed", code="handler_failed", message="boom")
        assert await _until_final(sender, conn, job) == ("delivered", 4, 200, None)
    attempts = receiver.deliveries()
    assert len(attempts) == 4 and not [r for r in receiver.received if r.path == "/elsewhere"]  # no redirect followed
    assert {r.body for r in attempts} == {attempts[0].body}
    assert {r.headers["webhook-id"] for r in attempts} == {webhook_id(job, "failed")}
    for got in attempts:
        _standard(SECRET, got.body, got.headers)


async def test_a_failing_receiver_keeps_only_a_prefix_of_its_answer(
    db_url: str, conn: psycopg.AsyncConnection[Any]
) -> None:
    caller = await _service_and_caller(conn)
    async with running_receiver() as receiver, _sender(db_url, schedule=(0.0, 30.0)) as sender:
        receiver.script = [Answer(500, body=b"E" * 1_000_000)]
        job = await _admit(conn, caller, receiver.url)
        await _terminate(conn, job, "completed", result={})
        await sender.drain()
        state, attempts, last_status, last_error = await _state(conn, job)
    assert (state, attempts, last_status) == ("pending", 1, 500)
    assert last_error == "E" * 200
    assert _view(await webhook_view(conn, job)) == {
        "url": receiver.url,
        "state": "pending",
        "attempts": 1,
        "lastStatus": 500,
    }


async def test_a_slow_receiver_times_out_as_a_whole(db_url: str, conn: psycopg.AsyncConnection[Any]) -> None:
    caller = await _service_and_caller(conn)
    settings = WebhookSettings(keys=parse_secrets(SECRET), allow_private=True, timeout_seconds=0.5)
    async with running_receiver() as receiver, _sender(db_url, settings, schedule=(0.0, 30.0)) as sender:
        receiver.delay = (2.0, 2.0)
        job = await _admit(conn, caller, receiver.url)
        await _terminate(conn, job, "completed", result={})
        started = time.monotonic()
        await sender.drain()
        assert time.monotonic() - started < 1.5
        assert await _state(conn, job) == ("pending", 1, None, "no answer within 0.5s")


async def test_429_retry_after_postpones_the_next_attempt(db_url: str, conn: psycopg.AsyncConnection[Any]) -> None:
    caller = await _service_and_caller(conn)
    async with running_receiver() as receiver, _sender(db_url) as sender:
        receiver.script = [Answer(429, {"Retry-After": "120"})]
        job = await _admit(conn, caller, receiver.url)
        await _terminate(conn, job, "completed", result={})
        await sender.drain()
    cur = await conn.execute(
        "SELECT state, EXTRACT(EPOCH FROM next_attempt_at - now()) FROM webhook_deliveries WHERE job_id = %s", (job,)
    )
    row = await cur.fetchone()
    assert row is not None and row[0] == "pending" and 100 < float(row[1]) <= 120


async def test_410_exhaustion_and_refusal_fail_visibly_and_an_operator_retries(
    db_url: str, conn: psycopg.AsyncConnection[Any]
) -> None:
    caller = await _service_and_caller(conn)
    async with running_receiver() as receiver:
        gone_job = await _admit(conn, caller, receiver.url)
        exhausted_job = await _admit(conn, caller, receiver.url + "?exhaust")
        private_job = await _admit(conn, caller, receiver.url + "?private")
        receiver.script = [Answer(410)]
        async with _sender(db_url) as sender:
            await _terminate(conn, gone_job, "completed", result={})
            assert await _until_final(sender, conn, gone_job) == ("failed", 1, 410, "ok")
            receiver.script = [Answer(500)] * len(FAST_SCHEDULE)
            await _terminate(conn, exhausted_job, "completed", result={})
            assert (await _until_final(sender, conn, exhausted_job))[:3] == ("failed", len(FAST_SCHEDULE), 500)
        strict = WebhookSettings(keys=parse_secrets(SECRET), allow_private=False, timeout_seconds=2)
        async with _sender(db_url, strict) as sender:
            await _terminate(conn, private_job, "completed", result={})
            state = await _until_final(sender, conn, private_job)
            assert state[:3] == ("failed", 1, None) and "loopback, private" in state[3]
        assert len(receiver.deliveries()) == 1 + len(FAST_SCHEDULE)  # the refused one never arrived

        env = {**os.environ, "SERVICE_DATABASE_URL": db_url, "PYTHONPATH": str(ROOT)}
        code, out, _ = await _cli("webhooks", "list", "--failed", env=env)
        assert code == 0
        assert all(webhook_id(j, "completed") in out for j in (gone_job, exhausted_job, private_job))
        code, out, _ = await _cli("webhooks", "list", "--failed", "--json", env=env)
        listed = {item["webhookId"]: item for item in json.loads(out)}
        assert listed[webhook_id(gone_job, "completed")]["lastStatus"] == 410

        code, out, _ = await _cli("webhooks", "retry", str(exhausted_job), env=env)
        assert code == 0 and f"{webhook_id(exhausted_job, 'completed')}: pending" in out
        async with _sender(db_url) as sender:
            assert await _until_final(sender, conn, exhausted_job) == ("delivered", 1, 200, None)
        code, _, err = await _cli("webhooks", "retry", webhook_id(exhausted_job, "completed"), env=env)
        assert code == 1 and "delivered" in err
        code, _, err = await _cli("webhooks", "retry", "nonsense", env=env)
        assert code == 2 and "not a webhook id" in err and "Traceback" not in err
        code, _, err = await _cli("webhooks", "list", "--state", "lost", env=env)
        assert code == 2 and "--state" in err


async def test_without_a_secret_deliveries_are_recorded_disabled(
    db_url: str, conn: psycopg.AsyncConnection[Any]
) -> None:
    caller = await _service_and_caller(conn)
    async with running_receiver() as receiver:
        job = await _admit(conn, caller, receiver.url)
        await _terminate(conn, job, "completed", result={})
        async with _sender(db_url, WebhookSettings()) as sender:
            assert await sender.drain() == 1
        assert _view(await webhook_view(conn, job)) == {
            "url": receiver.url,
            "state": "disabled",
            "attempts": 0,
            "lastStatus": None,
        }
        assert receiver.deliveries() == []
        # once a secret is set, an operator's retry sends it
        await conn.execute(
            "UPDATE webhook_deliveries SET state = 'pending', next_attempt_at = now() WHERE job_id = %s", (job,)
        )
        async with _sender(db_url) as sender:
            assert await _until_final(sender, conn, job) == ("delivered", 1, 200, None)


async def test_cli_prints_a_usable_secret_and_refuses_a_bad_one(db_url: str) -> None:
    env = {**os.environ, "SERVICE_DATABASE_URL": db_url, "PYTHONPATH": str(ROOT)}
    code, out, _ = await _cli("webhooks", "secret", env=env)
    assert code == 0 and parse_secret(out.strip())
    code, _, err = await _cli(
        "webhooks", "deliver", "--once", env={**env, "SERVICE_WEBHOOK_SECRET": "plain-text-secret"}
    )
    assert code == 2 and "SERVICE_WEBHOOK_SECRET" in err and "plain-text-secret" not in err
    code, out, err = await _cli(
        "webhooks", "deliver", "--once", env={k: v for k, v in env.items() if k != "SERVICE_WEBHOOK_SECRET"}
    )
    assert code == 0 and "SERVICE_WEBHOOK_SECRET is not set" in err


async def _cli(*args: str, env: dict[str, str]) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        *CLI, *args, env=env, cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()
