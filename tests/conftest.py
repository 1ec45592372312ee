"""Shared fixtures: TLS from a test CA, a recording downstream, a running gateway."""

from __future__ import annotations

import ssl

import pytest
import trustme

from gateway.accounts.passwords import hash_password
from tests.support.gateway import GatewayUnderTest
from tests.support.recorder import RecordingMTA

PASSWORD = "correct horse battery staple"


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="session")
def cert_files(ca, tmp_path_factory):
    cert = ca.issue_cert("mx.gateway.test", "localhost", "127.0.0.1")
    d = tmp_path_factory.mktemp("tls")
    cert_path, key_path = d / "cert.pem", d / "key.pem"
    cert.private_key_pem.write_to_path(str(key_path))
    cert.cert_chain_pems[0].write_to_path(str(cert_path))
    return cert_path, key_path


@pytest.fixture(scope="session")
def client_tls(ca) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    return ctx


@pytest.fixture(scope="session")
def password_hash() -> str:
    return hash_password(PASSWORD)


def customer_policies(password_hash: str) -> dict[str, dict]:
    return {
        "acme": {
            "customer": "acme",
            "domains": ["acme.example", "Sub.Acme.Example"],
            "accounts": [
                {"login": "alice@acme.example", "password": password_hash,
                 "senders": ["*@sub.acme.example"]},
                {"login": "bob@acme.example", "password": password_hash},
            ],
            "aliases": {"info@acme.example": ["alice@acme.example"]},
        },
        "globex": {
            "customer": "globex",
            "domains": ["globex.example"],
            "accounts": [{"login": "carol@globex.example", "password": password_hash}],
        },
    }


@pytest.fixture
def downstream():
    mta = RecordingMTA().start()
    try:
        yield mta
    finally:
        mta.stop()


@pytest.fixture
def gateway(tmp_path, downstream, cert_files, password_hash):
    gw = GatewayUnderTest(tmp_path, inbound_url=downstream.url, outbound_url=downstream.url,
                          policies=customer_policies(password_hash), cert=cert_files).start()
    try:
        yield gw
    finally:
        gw.stop()
