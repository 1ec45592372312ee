"""Timeouts end a session with a reply (RFC 5321 §4.5.3.2: a server that gives up
on a client says 421 first), never a silent close: idle between commands, idle
in the middle of DATA, on plain TCP and on TLS."""

from __future__ import annotations

import socket
import ssl
import time

import pytest

from tests.conftest import customer_policies
from tests.support.gateway import GatewayUnderTest


@pytest.fixture
def quick_timeouts(tmp_path, downstream, cert_files, password_hash):
    gw = GatewayUnderTest(tmp_path, inbound_url=downstream.url, outbound_url=downstream.url,
                          policies=customer_policies(password_hash), cert=cert_files,
                          extra={"limits": {"command_timeout": 1, "data_timeout": 1}}).start()
    try:
        yield gw
    finally:
        gw.stop()


def read_until_closed(s: socket.socket, limit: float = 10) -> bytes:
    """Everything the gateway says until it closes (bounded by ``limit`` seconds)."""
    s.settimeout(limit)
    out = b""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            chunk = s.recv(65536)
        except (ssl.SSLError, ConnectionResetError):
            break
        if not chunk:
            break
        out += chunk
    return out


def open_session(gw, listener: str, client_tls: ssl.SSLContext) -> socket.socket:
    raw = socket.create_connection(("127.0.0.1", gw.ports[listener]), timeout=10)
    if listener == "submissions":
        return client_tls.wrap_socket(raw, server_hostname="localhost")
    return raw


def last_line(data: bytes) -> bytes:
    return data.rstrip(b"\r\n").rsplit(b"\r\n", 1)[-1]


@pytest.mark.parametrize("listener", ["inbound", "submissions"])
def test_idle_client_hears_421_4_4_2_before_the_connection_closes(quick_timeouts, client_tls, listener):
    with open_session(quick_timeouts, listener, client_tls) as s:
        s.sendall(b"EHLO client.example\r\n")
        started = time.monotonic()
        said = read_until_closed(s)
        waited = time.monotonic() - started
    assert said.startswith(b"220 ")
    assert last_line(said).startswith(b"421 4.4.2 "), said
    assert 0.5 < waited < 8


def test_client_silent_in_the_middle_of_data_hears_421_4_4_2(quick_timeouts, downstream):
    with socket.create_connection(("127.0.0.1", quick_timeouts.ports["inbound"]), timeout=10) as s:
        s.sendall(b"EHLO client.example\r\nMAIL FROM:<a@other.example>\r\n"
                  b"RCPT TO:<bob@acme.example>\r\nDATA\r\n"
                  b"From: a@other.example\r\n\r\nhalf a mess")  # ... and nothing more
        said = read_until_closed(s)
    assert b"\r\n354 " in said
    assert last_line(said).startswith(b"421 4.4.2 "), said
    assert downstream.messages == []


def test_data_that_keeps_coming_is_not_cut_by_the_idle_timer(quick_timeouts, downstream):
    """The DATA timer is an idle timer: a slow but steady sender is not cut off."""
    with socket.create_connection(("127.0.0.1", quick_timeouts.ports["inbound"]), timeout=10) as s:
        s.sendall(b"EHLO client.example\r\nMAIL FROM:<a@other.example>\r\n"
                  b"RCPT TO:<bob@acme.example>\r\nDATA\r\nFrom: a@other.example\r\n\r\n")
        for i in range(5):  # 2.5 s in all, never silent for the 1 s timeout
            time.sleep(0.5)
            s.sendall(b"line %d\r\n" % i)
        s.sendall(b".\r\nQUIT\r\n")
        said = read_until_closed(s)
    assert b"\r\n250 2.0.0 " in said and b"421" not in said, said
    assert len(downstream.messages) == 1


def test_commands_that_keep_coming_move_the_deadline(quick_timeouts):
    """One timer a connection, whose deadline each command moves (SMTPAdapter._reset_timeout):
    it comes due a second after the first command, finds the deadline later and waits
    on; a second after the last command, the client hears 421."""
    with socket.create_connection(("127.0.0.1", quick_timeouts.ports["inbound"]), timeout=10) as s:
        s.sendall(b"EHLO client.example\r\n")
        for _ in range(5):  # 2.5 s in all, never silent for the 1 s timeout
            time.sleep(0.5)
            s.sendall(b"NOOP\r\n")
        last = time.monotonic()
        said = read_until_closed(s)
        waited = time.monotonic() - last
    assert said.count(b"\r\n250 2.0.0 ") == 5, said
    assert last_line(said).startswith(b"421 4.4.2 "), said
    assert 0.7 < waited < 3, waited


def test_a_shorter_deadline_than_the_armed_one_is_kept(tmp_path, downstream, cert_files,
                                                      password_hash):
    """DATA's idle timeout (1 s) is shorter than the command timeout (30 s) armed at
    RCPT: the timer is armed afresh for it, not left to come due at 30 s."""
    gw = GatewayUnderTest(tmp_path, inbound_url=downstream.url, outbound_url=downstream.url,
                          policies=customer_policies(password_hash), cert=cert_files,
                          extra={"limits": {"command_timeout": 30, "data_timeout": 1}}).start()
    try:
        with socket.create_connection(("127.0.0.1", gw.ports["inbound"]), timeout=10) as s:
            s.sendall(b"EHLO client.example\r\nMAIL FROM:<a@other.example>\r\n"
                      b"RCPT TO:<bob@acme.example>\r\nDATA\r\n"
                      b"From: a@other.example\r\n\r\nhalf a mess")
            started = time.monotonic()
            said = read_until_closed(s, limit=20)
            waited = time.monotonic() - started
    finally:
        gw.stop()
    assert b"\r\n354 " in said
    assert last_line(said).startswith(b"421 4.4.2 "), said
    assert waited < 8, waited
    assert downstream.messages == []
