"""A real gateway with its admin listener over HTTPS, tokens for each role, and a
small HTTPS client (http.client) for the admin API."""

from __future__ import annotations

import http.client
import json
import ssl
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from gateway.admin.tokens import new_token
from tests.conftest import customer_policies
from tests.support.gateway import GatewayUnderTest
from tests.support.ports import free_port

MESSAGE = (b"From: Alice <alice@acme.example>\r\nTo: friend@elsewhere.example\r\n"
           b"Subject: <script>alert(1)</script> quarterly figures\r\n"
           b"Message-ID: <held-admin@acme.example>\r\nMIME-Version: 1.0\r\n"
           b"Content-Type: text/html; charset=utf-8\r\n\r\n"
           b"<html><body><p>Hello <b>friend</b></p><script>steal()</script>"
           b"<img src=\"https://tracker.example/x.gif\"></body></html>\r\n")


@cache
def tokens() -> dict[str, tuple[str, str]]:
    """role -> (token, hash); made once per test run (scrypt is slow on purpose)."""
    return {"operator": new_token("desk"), "read-only": new_token("viewer")}


def admin_section(cert: tuple[Path, Path], **extra: Any) -> dict[str, Any]:
    return {"admin": {
        "port": free_port(), "tls": {"cert": str(cert[0]), "key": str(cert[1])},
        "tokens": [{"name": "desk", "role": "operator", "hash": tokens()["operator"][1]},
                   {"name": "viewer", "role": "read-only", "hash": tokens()["read-only"][1]}],
        **extra}}


def start_gateway(tmp_path: Path, downstream, cert_files, password_hash: str,
                  **admin_extra: Any) -> GatewayUnderTest:
    return GatewayUnderTest(tmp_path, inbound_url=downstream.url, outbound_url=downstream.url,
                            policies=customer_policies(password_hash), cert=cert_files,
                            extra=admin_section(cert_files, **admin_extra)).start()


def hold_one(gw: GatewayUnderTest, login: str = "alice@acme.example", reason: str = "content",
             now: float | None = None, recipients=("friend@elsewhere.example",)):
    """A message held as the pipeline holds one, in the directory the gateway reviews."""
    store = gw.gateway.admin.desk.held
    return gw.run(store.hold(message=MESSAGE, sender="alice@acme.example",
                             recipients=list(recipients), direction="outbound", reason=reason,
                             reply="250 2.0.0 held for review", now=now or gw.runtime.clock(),
                             evidence={"score": 16.5, "symbols": ["GTUBE"]}, login=login,
                             txid="ABCDEFGHIJKL.1"))


@dataclass
class Answer:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)


class AdminClient:
    def __init__(self, port: int, tls: ssl.SSLContext, token: str | None = None):
        self.port, self.tls, self.token = port, tls, token

    def request(self, method: str, path: str, body: Any = None, token: str | None = None,
                headers: dict[str, str] | None = None) -> Answer:
        conn = http.client.HTTPSConnection("127.0.0.1", self.port, context=self.tls, timeout=20)
        try:
            h = dict(headers or {})
            token = token if token is not None else self.token
            if token:
                h["Authorization"] = f"Bearer {token}"
            data = None
            if body is not None:
                data = json.dumps(body).encode()
                h["Content-Type"] = "application/json"
            conn.request(method, path, body=data, headers=h)
            r = conn.getresponse()
            return Answer(r.status, r.headers, r.read())
        finally:
            conn.close()

    def get(self, path: str, **kw: Any) -> Answer:
        return self.request("GET", path, **kw)

    def post(self, path: str, body: Any = None, **kw: Any) -> Answer:
        return self.request("POST", path, body, **kw)
