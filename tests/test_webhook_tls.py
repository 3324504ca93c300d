"""Webhooks over https: TLS to the checked address, the certificate checked against the URL's host.

The sender resolves the URL's host itself (:mod:`reconciler.webhooks.safety`) and connects to
the address it checked, so the TLS server name has to be carried separately (the ``sni_hostname``
extension). These tests serve a real TLS receiver on loopback with certificates from a throwaway
CA made here, and show that the name sent and checked is the URL's host, never the address:

* a certificate for ``localhost`` from the trusted CA: delivered, the SNI name was ``localhost``;
* a certificate for another host, or for the very address the sender connected to: refused, the
  TLS error recorded, retried on the schedule and never ``delivered``;
* the same ``localhost`` certificate when the sender has only its default roots: refused too;
* a connection made and checked for ``localhost`` is not reused for a URL naming the address.
"""

from __future__ import annotations

import ipaddress
import random
import ssl
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from prometheus_client import CollectorRegistry
from psycopg_pool import AsyncConnectionPool
from standardwebhooks.webhooks import Webhook

from desired_state.services import callers, intake, termination
from desired_state.services.builtin import builtin_definitions
from desired_state.services.definitions import ServiceRegistry
from desired_state.services.vocabulary import JobStatus
from desired_state.webhooks import WebhookState, webhook_id
from reconciler.metrics import Metrics
from reconciler.webhooks.delivery import WebhookSender
from reconciler.webhooks.settings import WebhookSettings
from reconciler.webhooks.signing import new_secret, parse_secrets
from tests.support import until
from tests.webhook_receiver import Receiver, running_tls_receiver

SECRET = new_secret()
HOST = "localhost"
CERTIFICATE_REFUSED = "CERTIFICATE_VERIFY_FAILED"
"""What OpenSSL's error says when the chain or the name does not verify (kept in ``last_error``)."""

Conn = psycopg.AsyncConnection[Any]


# -- a throwaway certificate authority -------------------------------------------------------------


@dataclass(frozen=True)
class Authority:
    key: ec.EllipticCurvePrivateKey
    certificate: x509.Certificate
    directory: Path

    def client_trust(self) -> ssl.SSLContext:
        """A client context that trusts this CA only (hostname checking on, as by default)."""
        return ssl.create_default_context(cadata=self.certificate.public_bytes(serialization.Encoding.PEM).decode())

    def server_context(self, *names: x509.GeneralName) -> ssl.SSLContext:
        """A server context presenting a certificate from this CA for ``names`` (its SANs)."""
        key = ec.generate_private_key(ec.SECP256R1())
        certificate = (
            _builder(f"receiver {names[0].value}", self.certificate.subject, key.public_key())
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(signs_certificates=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectAlternativeName(list(names)), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        stem = self.directory / f"server-{uuid.uuid4().hex[:8]}"
        chain, private = stem.with_suffix(".crt"), stem.with_suffix(".key")
        chain.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        private.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(chain, private)
        return context


def _builder(common_name: str, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey) -> x509.CertificateBuilder:
    now = datetime.now(UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )


def _key_usage(*, signs_certificates: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=signs_certificates,
        crl_sign=signs_certificates,
        encipher_only=False,
        decipher_only=False,
    )


@pytest.fixture
def authority(tmp_path: Path) -> Authority:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "webhook test CA")])
    certificate = (
        _builder("webhook test CA", name, key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(signs_certificates=True), critical=True)
        .sign(key, hashes.SHA256())
    )
    return Authority(key, certificate, tmp_path)


# -- a job that ends with an https delivery owed ---------------------------------------------------


async def _ended_job(conn: Conn, url: str, email: str = "ada@example.com") -> uuid.UUID:
    caller = (await callers.create_caller(conn, email)).caller.caller_id
    registry = ServiceRegistry(builtin_definitions())
    admitted = await intake.admit(conn, registry, caller, "agents.destroy", {"instanceId": "i1"}, webhook_url=url)
    ended = await termination.terminate(
        conn, admitted.job_id, JobStatus.COMPLETED, now=datetime.now(UTC), token=None, result={"ok": True}
    )
    assert ended.changed
    return admitted.job_id


@asynccontextmanager
async def _sender(
    db_url: str, tls_trust: ssl.SSLContext | None, schedule: Sequence[float]
) -> AsyncIterator[WebhookSender]:
    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
        db_url, min_size=1, max_size=2, kwargs={"autocommit": True}, open=False
    )
    await pool.open(wait=True)
    # allow_private: the receiver is on loopback; the name check is what is under test here.
    settings = WebhookSettings(keys=parse_secrets(SECRET), allow_private=True, timeout_seconds=5)
    sender = WebhookSender(
        pool,
        settings,
        Metrics(CollectorRegistry()),
        owner="tls-test",
        schedule=schedule,
        rng=random.Random(5),
        tls_trust=tls_trust,
    )
    try:
        yield sender
    finally:
        await sender.aclose()
        await pool.close()


async def _delivery(conn: Conn, job_id: uuid.UUID) -> dict[str, Any]:
    async with conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
        await cur.execute(
            "SELECT state, attempts, last_status, last_error, next_attempt_at > now() AS later"
            " FROM webhook_deliveries WHERE job_id = %s",
            (job_id,),
        )
        row = await cur.fetchone()
    assert row is not None
    return row


def _port(receiver: Receiver) -> int:
    return int(receiver.root.rsplit(":", 1)[1])


# -- the tests -------------------------------------------------------------------------------------


async def test_https_is_delivered_with_the_url_host_as_server_name(
    db_url: str, conn: Conn, authority: Authority
) -> None:
    async with (
        running_tls_receiver(authority.server_context(x509.DNSName(HOST))) as receiver,
        _sender(db_url, authority.client_trust(), schedule=(0.0, 30.0)) as sender,
    ):
        job = await _ended_job(conn, receiver.url)
        assert receiver.url.startswith(f"https://{HOST}:")
        assert await sender.drain() == 1
        delivery = await _delivery(conn, job)
    assert (delivery["state"], delivery["attempts"], delivery["last_status"]) == (WebhookState.DELIVERED, 1, 200)
    assert receiver.server_names == [HOST]  # SNI named the URL's host, not the address connected to
    [got] = receiver.deliveries()
    assert got.headers["host"] == f"{HOST}:{_port(receiver)}"
    assert got.headers["webhook-id"] == webhook_id(job, "completed")
    event = Webhook(SECRET).verify(got.body, got.headers)
    assert event["jobId"] == str(job) and event["status"] == "completed" and event["payload"] == {"ok": True}


@pytest.mark.parametrize(
    "presented",
    [x509.DNSName("elsewhere.test"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
    ids=["another-host", "the-connected-address"],
)
async def test_a_certificate_not_for_the_url_host_is_refused_and_retried_never_delivered(
    db_url: str, conn: Conn, authority: Authority, presented: x509.GeneralName
) -> None:
    # The connected-address case: a sender checking the certificate against the address it
    # connects to (127.0.0.1) rather than the URL's host would accept this one.
    schedule = (0.0, 0.3, 0.3)
    async with (
        running_tls_receiver(authority.server_context(presented)) as receiver,
        _sender(db_url, authority.client_trust(), schedule) as sender,
    ):
        job = await _ended_job(conn, receiver.url)
        assert await sender.drain() == 1
        first = await _delivery(conn, job)
        assert (first["state"], first["attempts"], first["last_status"]) == (WebhookState.PENDING, 1, None)
        assert CERTIFICATE_REFUSED in first["last_error"] and first["later"]  # retried later, not now

        async def settled() -> dict[str, Any] | None:
            await sender.drain()
            delivery = await _delivery(conn, job)
            return delivery if delivery["state"] != WebhookState.PENDING else None

        last = await until(settled, timeout=20)
    assert (last["state"], last["attempts"], last["last_status"]) == (WebhookState.FAILED, len(schedule), None)
    assert CERTIFICATE_REFUSED in last["last_error"]
    assert receiver.deliveries() == []  # no request ever reached the receiver
    assert receiver.server_names == [HOST] * len(schedule)


async def test_a_certificate_from_an_untrusted_authority_is_refused(
    db_url: str, conn: Conn, authority: Authority
) -> None:
    started = time.monotonic()
    async with (
        running_tls_receiver(authority.server_context(x509.DNSName(HOST))) as receiver,
        _sender(db_url, None, schedule=(0.0, 30.0)) as sender,  # the default roots, not the test CA
    ):
        job = await _ended_job(conn, receiver.url)
        assert await sender.drain() == 1
        delivery = await _delivery(conn, job)
    assert (delivery["state"], delivery["attempts"], delivery["last_status"]) == (WebhookState.PENDING, 1, None)
    assert CERTIFICATE_REFUSED in delivery["last_error"] and delivery["later"]
    assert receiver.deliveries() == [] and receiver.server_names == [HOST]
    assert time.monotonic() - started < 5  # refused at the handshake, not timed out


async def test_a_connection_checked_for_one_name_is_not_reused_for_another_url_on_that_address(
    db_url: str, conn: Conn, authority: Authority
) -> None:
    # Both URLs reach 127.0.0.1:PORT, so the client's pool (keyed by address) would match a kept
    # connection; only the localhost one may be delivered, since the certificate names localhost only.
    async with (
        running_tls_receiver(authority.server_context(x509.DNSName(HOST))) as receiver,
        _sender(db_url, authority.client_trust(), schedule=(0.0, 30.0)) as sender,
    ):
        by_name = await _ended_job(conn, receiver.url)
        assert await sender.drain() == 1
        by_address = await _ended_job(conn, f"https://127.0.0.1:{_port(receiver)}/hook", email="bob@example.com")
        assert await sender.drain() == 1
        named, addressed = await _delivery(conn, by_name), await _delivery(conn, by_address)
    assert named["state"] == WebhookState.DELIVERED
    assert (addressed["state"], addressed["last_status"]) == (WebhookState.PENDING, None)
    assert CERTIFICATE_REFUSED in addressed["last_error"]
    assert [got.headers["webhook-id"] for got in receiver.deliveries()] == [webhook_id(by_name, "completed")]
    assert receiver.server_names == [HOST, None]  # a second handshake, with no SNI (an IP is not a name)
