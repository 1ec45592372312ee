"""`portcullis audit proxy`: real proxies from Debian (tinyproxy, Squid, Dante, socat), open
and closed, on loopback; open only when the audit listener receives the token."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from gateway.audit.listener import AuditListener, new_token
from gateway.audit.proxy import CLOSED, NOT_APPLICABLE, OPEN, audit_proxy, judge_method
from tests.support.ports import free_port
from tests.support.proxies import DANTED, SQUID, TINYPROXY, Dante, Squid, TinyProxy, available

HTTP_METHODS = {"http-connect", "http-post", "http-get"}
SOCKS_METHODS = {"socks4", "socks4a", "socks5"}
FAST = {"reply_timeout": 1.5, "grace": 0.3}


def _server(cls, binary, address, open):
    if not available(binary):
        pytest.skip(f"needs {binary}, run as root")
    server = cls(address, free_port(), open=open).start()
    return server


@pytest.fixture(scope="module")
def tinyproxies():
    servers = (_server(TinyProxy, TINYPROXY, "127.0.0.2", True),
               _server(TinyProxy, TINYPROXY, "127.0.0.2", False))
    yield servers
    for s in servers:
        s.stop()


@pytest.fixture(scope="module")
def squids():
    servers = (_server(Squid, SQUID, "127.0.0.3", True), _server(Squid, SQUID, "127.0.0.3", False))
    yield servers
    for s in servers:
        s.stop()


@pytest.fixture(scope="module")
def dantes():
    servers = (_server(Dante, DANTED, "127.0.0.4", True), _server(Dante, DANTED, "127.0.0.4", False))
    yield servers
    for s in servers:
        s.stop()


def verdicts(audit) -> dict[str, str]:
    return {r.method: r.verdict for r in audit.results}


def by_method(audit, method):
    return next(r for r in audit.results if r.method == method)


def assert_token_arrived(result, listener):
    """The evidence: the listener's own transcript carries the token of that method."""
    assert result.arrival is not None
    assert result.arrival.peer.startswith("127.0.0.")
    assert any(result.arrival.token in line for line in result.arrival.transcript)
    assert listener.arrived(result.arrival.token) is result.arrival


@pytest.mark.asyncio
async def test_open_tinyproxy_is_open_by_connect_post_and_get(tinyproxies):
    proxy = tinyproxies[0]
    async with AuditListener("127.0.0.1", 0) as listener:
        audit = await audit_proxy(proxy.address, proxy.port, listener, **FAST)
    assert not audit.error and audit.is_open
    v = verdicts(audit)
    assert {m for m, verdict in v.items() if verdict == OPEN} == HTTP_METHODS
    for method in HTTP_METHODS:
        assert_token_arrived(by_method(audit, method), listener)
    assert by_method(audit, "http-connect").proxy_said.startswith("HTTP/1.0 200")
    # tinyproxy answers the POST with an error page, yet it did forward it: the
    # listener decides, not the status code.
    assert not by_method(audit, "http-post").proxy_said.startswith("HTTP/1.0 2")


@pytest.mark.asyncio
async def test_closed_tinyproxy_is_closed_and_nothing_reaches_the_listener(tinyproxies):
    proxy = tinyproxies[1]
    async with AuditListener("127.0.0.1", 0) as listener:
        audit = await audit_proxy(proxy.address, proxy.port, listener, **FAST)
    assert not audit.error and not audit.is_open
    assert set(verdicts(audit).values()) == {CLOSED}
    for method in HTTP_METHODS:
        assert "403" in by_method(audit, method).proxy_said
    assert listener.connections == 0


@pytest.mark.asyncio
async def test_open_squid_is_open_by_connect_and_plain_http(squids):
    proxy = squids[0]
    async with AuditListener("127.0.0.1", 0) as listener:
        audit = await audit_proxy(proxy.address, proxy.port, listener, **FAST)
    v = verdicts(audit)
    assert {m for m, verdict in v.items() if verdict == OPEN} == HTTP_METHODS, v
    get = by_method(audit, "http-get")
    assert_token_arrived(get, listener)
    # Squid adds itself to what it forwards: the listener saw its Via header.
    post = by_method(audit, "http-post").arrival
    assert any("squid" in line for line in post.transcript)


@pytest.mark.asyncio
async def test_closed_squid_says_403_and_nothing_reaches_the_listener(squids):
    proxy = squids[1]
    async with AuditListener("127.0.0.1", 0) as listener:
        audit = await audit_proxy(proxy.address, proxy.port, listener, **FAST)
    assert set(verdicts(audit).values()) == {CLOSED}
    assert all("403" in by_method(audit, m).proxy_said for m in HTTP_METHODS)
    assert listener.connections == 0


@pytest.mark.asyncio
async def test_open_dante_is_open_by_socks4_and_socks5_but_refuses_socks4a(dantes):
    proxy = dantes[0]
    async with AuditListener("127.0.0.1", 0) as listener:
        audit = await audit_proxy(proxy.address, proxy.port, listener, **FAST)
    v = verdicts(audit)
    assert v["socks4"] == OPEN and v["socks5"] == OPEN, v
    assert_token_arrived(by_method(audit, "socks4"), listener)
    assert_token_arrived(by_method(audit, "socks5"), listener)
    # Debian's Dante 1.4 does not resolve names for SOCKS4 clients: 0x5B, rejected.
    assert v["socks4a"] == CLOSED
    assert by_method(audit, "socks4a").proxy_said.startswith("[00 5b")
    assert all(v[m] == CLOSED for m in HTTP_METHODS)


@pytest.mark.asyncio
async def test_closed_dante_rejects_every_socks_request(dantes):
    proxy = dantes[1]
    async with AuditListener("127.0.0.1", 0) as listener:
        audit = await audit_proxy(proxy.address, proxy.port, listener, **FAST)
    assert set(verdicts(audit).values()) == {CLOSED}
    assert by_method(audit, "socks4").proxy_said.startswith("[00 5b")  # rejected
    assert listener.connections == 0


@pytest.mark.asyncio
async def test_socat_forwarding_to_the_listener_is_an_open_port_forward():
    socat = shutil.which("socat")
    if socat is None:
        pytest.skip("needs socat")
    async with AuditListener("127.0.0.1", 0) as listener:
        port = free_port()
        proc = await asyncio.create_subprocess_exec(
            socat, f"TCP-LISTEN:{port},bind=127.0.0.5,reuseaddr,fork",
            f"TCP:127.0.0.1:{listener.port}", start_new_session=True)
        try:
            await _wait_listening("127.0.0.5", port)
            audit = await audit_proxy("127.0.0.5", port, listener, **FAST)
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            await asyncio.wait_for(proc.wait(), 5)
    assert verdicts(audit)["port-forward"] == OPEN
    assert_token_arrived(by_method(audit, "port-forward"), listener)


@pytest.mark.asyncio
async def test_a_proxy_that_says_200_but_forwards_nothing_is_not_open():
    async def liar(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n220 fake.example ESMTP\r\n"
                     b"250 fake.example\r\n221 bye\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(liar, "127.0.0.1", 0)
    try:
        async with AuditListener("127.0.0.1", 0) as listener:
            audit = await audit_proxy("127.0.0.1", server.sockets[0].getsockname()[1], listener,
                                      methods=("http-connect",), **FAST)
    finally:
        server.close()
    result = by_method(audit, "http-connect")
    assert result.proxy_said.startswith("HTTP/1.1 200")
    assert result.verdict == CLOSED and listener.connections == 0


@pytest.mark.asyncio
async def test_the_listener_counts_only_tokens_it_handed_out():
    async with AuditListener("127.0.0.1", 0) as listener:
        mine = listener.token()
        stranger = new_token()
        reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
        await reader.readline()
        writer.write(f"EHLO {stranger}\r\nHELO {mine}\r\nQUIT\r\n".encode())
        await writer.drain()
        arrival = await listener.wait_for(mine, 5)
        writer.close()
    assert arrival is not None and f"C: HELO {mine}" in arrival.transcript
    assert listener.arrived(stranger) is None


@pytest.mark.asyncio
async def test_a_target_that_does_not_answer_is_reported_not_run():
    port = free_port()  # nothing listens there
    async with AuditListener("127.0.0.1", 0) as listener:
        audit = await audit_proxy("127.0.0.1", port, listener, **FAST)
    assert audit.error.startswith("cannot connect") and audit.results == ()


@pytest.mark.parametrize(
    ("arrived", "error", "verdict"),
    [(True, "", OPEN), (True, "the target closed the connection", OPEN), (False, "", CLOSED),
     (False, "no answer within 1s", CLOSED), (False, NOT_APPLICABLE, NOT_APPLICABLE)],
)
def test_judge_method_trusts_only_the_listener(arrived, error, verdict):
    from gateway.audit.listener import Arrival

    arrival = Arrival("t", "127.0.0.1:1", ()) if arrived else None
    assert judge_method(arrival, error) == verdict


def test_cli_finds_the_open_tinyproxy_and_exits_1(tinyproxies):
    proxy = tinyproxies[0]
    out = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "audit", "proxy", f"{proxy.address}:{proxy.port}",
         "--listen", f"127.0.0.1:{free_port()}", "--timeout", "1.5", "--grace", "0.3"],
        capture_output=True, text=True, timeout=60)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "OPEN PROXY: http-connect, http-post, http-get" in out.stdout


def test_cli_without_a_listener_is_one_line_and_exit_2():
    out = subprocess.run([sys.executable, "-m", "gateway.cli", "audit", "proxy", "127.0.0.1:3128"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1 and "--listen" in out.stderr


async def _wait_listening(host: str, port: int) -> None:
    deadline = time.monotonic() + 5
    while True:
        try:
            _, writer = await asyncio.open_connection(host, port)
            writer.close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)
