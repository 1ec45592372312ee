"""Submission clients and a movable clock for the quota tests on the wire."""

from __future__ import annotations

import base64
import copy
import smtplib
import ssl
import uuid
from typing import Any

import pytest

from tests.conftest import PASSWORD, customer_policies
from tests.support.gateway import GatewayUnderTest

T0 = 1_800_000_000.0


class Clock:
    """The gateway's clock in a test: time moves only when the test says so."""

    def __init__(self, t: float = T0):
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


def connect(gw: Any, client_tls: ssl.SSLContext, source: str | None = None) -> smtplib.SMTP_SSL:
    c = smtplib.SMTP_SSL("127.0.0.1", gw.ports["submissions"], timeout=15, context=client_tls,
                         source_address=(source, 0) if source else None)
    c.ehlo("client.example")
    return c


def auth_plain(c: smtplib.SMTP, login: str, password: str = PASSWORD) -> tuple[int, bytes]:
    """One AUTH PLAIN exchange (smtplib's login() would retry with LOGIN on a failure)."""
    blob = base64.b64encode(f"\0{login}\0{password}".encode()).decode()
    return c.docmd("AUTH", "PLAIN " + blob)


def logged_in(gw: Any, client_tls: ssl.SSLContext, login: str = "alice@acme.example",
              source: str | None = None) -> smtplib.SMTP_SSL:
    c = connect(gw, client_tls, source)
    code, msg = auth_plain(c, login)
    assert code == 235, (code, msg)
    return c


def message(sender: str = "alice@acme.example", body: str = "hello", pad: int = 0) -> bytes:
    return (f"From: {sender}\r\nTo: someone@elsewhere.example\r\nSubject: test\r\n\r\n{body}\r\n"
            + ("x" * 70 + "\r\n") * pad).encode()


def send(c: smtplib.SMTP, rcpts: list[str], sender: str = "alice@acme.example",
         body: bytes | None = None, options: list[str] | None = None) -> dict[str, Any]:
    """One transaction, every reply kept: {"mail": (code, text), "rcpt": [...], "data": ...}."""
    out: dict[str, Any] = {"rcpt": [], "data": None}
    out["mail"] = c.mail(sender, options or [])
    if out["mail"][0] != 250:
        return out
    for r in rcpts:
        out["rcpt"].append(c.rcpt(r))
    if any(code == 250 for code, _ in out["rcpt"]):
        out["data"] = c.data(body if body is not None else message(sender))
    else:
        c.rset()
    return out


def codes(result: dict[str, Any]) -> list[int]:
    return [code for code, _ in result["rcpt"]]


# --- fixtures: a gateway on either store -----------------------------------------------
# Use with `from tests.support.redis_server import redis_server` in the test module.
@pytest.fixture(params=["sqlite", "redis"])
def store_config(request, tmp_path):
    if request.param == "redis":
        server = request.getfixturevalue("redis_server")
        return {"backend": "redis", "url": server.url, "prefix": f"t{uuid.uuid4().hex[:8]}:"}
    return {"backend": "sqlite", "path": str(tmp_path / "state.db")}


@pytest.fixture
def make_gateway(tmp_path, downstream, cert_files, password_hash, store_config):
    started: list[GatewayUnderTest] = []

    def make(alice: dict | None = None, acme: dict | None = None, shadow: bool = False,
             extra: dict | None = None, clock: Clock | None = None) -> GatewayUnderTest:
        policies = copy.deepcopy(customer_policies(password_hash))
        if alice is not None:
            policies["acme"]["accounts"][0]["quotas"] = alice
        if acme is not None:
            policies["acme"]["quotas"] = acme
        if shadow:
            policies["acme"]["shadow"] = True
        gw = GatewayUnderTest(tmp_path, inbound_url=downstream.url, outbound_url=downstream.url,
                              policies=policies, cert=cert_files,
                              extra={"store": store_config, **(extra or {})},
                              clock=clock or Clock())
        started.append(gw.start())
        return gw

    try:
        yield make
    finally:
        for gw in started:
            gw.stop()
