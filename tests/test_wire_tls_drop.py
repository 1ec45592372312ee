"""A TLS client that pipelines and goes away without reading its replies: the
gateway writes nothing after it has hung up (asyncio's TLS transport crashes with
AttributeError when written to after a second close), runs none of the commands
still buffered, logs no traceback, and keeps serving."""

from __future__ import annotations

import base64
import logging
import socket
import struct
import time

import pytest

from tests.conftest import PASSWORD
from tests.support.reply_ids import without_id
from tests.support.submission import connect


def reset(s: socket.socket) -> None:
    """Close with an RST (SO_LINGER 0), as a client that crashed would."""
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()


def problems(records: list[logging.LogRecord]) -> list[str]:
    return [r.getMessage() for r in records
            if r.exc_info or r.levelno >= logging.ERROR or "Traceback" in r.getMessage()]


# Ten refusals (auth required) reach max_errors: 421 4.7.0 and the gateway hangs up.
# What follows is already buffered and must go unanswered: unknown commands (after
# five of them aiosmtpd says 502 and closes, a second close), then NOOPs.
PIPELINE = (b"MAIL FROM:<a@acme.example>\r\n" * 10 + b"XYZZY\r\n" * 12
            + b"NOOP\r\n" * 5)


@pytest.mark.parametrize("ending", ["rst", "close", "stay"])
def test_tls_client_dropping_with_pipelined_replies_pending_leaves_no_traceback(
        gateway, client_tls, caplog, ending):
    caplog.set_level(logging.INFO)
    for _ in range(5):
        raw = socket.create_connection(("127.0.0.1", gateway.ports["submissions"]), timeout=10)
        s = client_tls.wrap_socket(raw, server_hostname="localhost")
        s.recv(1024)  # the greeting
        s.sendall(b"EHLO client.example\r\n" + PIPELINE)
        time.sleep(0.3)  # the gateway reads it all and answers into the void
        if ending == "rst":
            reset(s)
        elif ending == "close":
            s.close()
        else:  # read what was said: it ends with the goodbye, nothing after it
            s.settimeout(5)
            said = b""
            try:
                while chunk := s.recv(65536):
                    said += chunk
            except (OSError, TimeoutError):
                pass
            s.close()
            assert said.count(b"530 ") == 10, said
            assert without_id(said.rstrip()).endswith(b"421 4.7.0 Too many errors, closing connection"), said
    time.sleep(0.5)
    assert problems(caplog.records) == []
    # And the listener still serves.
    with connect(gateway, client_tls) as c:
        assert c.noop()[0] == 250


def test_tls_clients_resetting_mid_pipeline_leave_no_traceback(gateway, client_tls, caplog):
    """The race behind the report: the client's RST marks the TLS transport closed
    while commands it pipelined are still being answered; aiosmtpd's own goodbye
    (502 after five unknown commands) then closed it a second time, and the next
    read or write raised AttributeError.  Many clients, many timings."""
    caplog.set_level(logging.INFO)
    pipeline = (b"EHLO client.example\r\n" + b"XYZZY\r\n" * 6
                + b"NOOP and some text to fill the buffers\r\n" * 3000)
    for i in range(40):
        raw = socket.create_connection(("127.0.0.1", gateway.ports["submissions"]), timeout=10)
        s = client_tls.wrap_socket(raw, server_hostname="localhost")
        s.recv(1024)
        try:
            s.sendall(pipeline)
        except OSError:
            pass  # the gateway hung up first: fine
        time.sleep((0, 0.001, 0.003, 0.01, 0.03)[i % 5])
        reset(s)
    time.sleep(0.5)
    assert problems(caplog.records) == []
    with connect(gateway, client_tls) as c:
        assert c.noop()[0] == 250


def test_commands_pipelined_after_the_goodbye_are_not_run(gateway, downstream, client_tls, caplog):
    """After 421 4.7.0 the rest of the pipeline is dropped, not executed: here a whole
    transaction that would otherwise reach the downstream while the TLS connection
    waits for the client's close_notify."""
    caplog.set_level(logging.INFO)
    login = base64.b64encode(f"\0alice@acme.example\0{PASSWORD}".encode())
    raw = socket.create_connection(("127.0.0.1", gateway.ports["submissions"]), timeout=10)
    with client_tls.wrap_socket(raw, server_hostname="localhost") as s:
        s.recv(1024)
        s.sendall(b"EHLO client.example\r\nAUTH PLAIN " + login + b"\r\n"
                  + b"RCPT TO:<x@elsewhere.example>\r\n" * 10
                  + b"MAIL FROM:<alice@acme.example>\r\nRCPT TO:<x@elsewhere.example>\r\nDATA\r\n"
                  + b"From: alice@acme.example\r\n\r\nafter the goodbye\r\n.\r\n")
        time.sleep(1)  # a client slow to notice the goodbye: the connection is still up
        said = b""
        s.settimeout(3)
        try:
            while chunk := s.recv(65536):
                said += chunk
        except TimeoutError:
            pass
    assert b"235 " in said and said.count(b"503 ") == 10, said
    assert without_id(said.rstrip()).endswith(b"421 4.7.0 Too many errors, closing connection"), said
    assert downstream.handler.mail_commands == 0 and downstream.messages == []
    assert problems(caplog.records) == []
