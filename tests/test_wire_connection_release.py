"""A finished connection is freed when its last reference goes, not by the garbage
collector.

Each connection used to be a reference cycle (its command table of its own bound
methods, its task's CancelledError whose traceback held the command loop's
frames, its writer, its clean-up runner): about 67 objects a connection that only
a collection freed, so the collector ran every few hundred connections and paused
the event loop 4-6 ms each time (SMTPAdapter._let_go).  With the collector off,
the connections of finished sessions must be gone all the same: the way each one
ended (QUIT, the client vanishing, STARTTLS and AUTH, a timeout) must leave no
cycle behind.
"""

from __future__ import annotations

import gc
import smtplib
import socket
import time

from gateway.smtp.protocol import GatewaySMTP
from tests.conftest import PASSWORD

MSG = b"From: a@other.example\r\nTo: bob@acme.example\r\nSubject: x\r\n\r\nhi\r\n"


def connections_alive() -> int:
    return sum(1 for o in gc.get_objects() if isinstance(o, GatewaySMTP))


def wait_closed(gateway, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while gateway.gateway.listeners.active_connections and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not gateway.gateway.listeners.active_connections
    time.sleep(0.3)  # the clean-up tasks after the close


def test_finished_connections_are_freed_without_the_garbage_collector(gateway, downstream, client_tls):
    gc.collect()
    gc.disable()
    try:
        before = connections_alive()
        for _ in range(3):  # delivered, then QUIT
            with smtplib.SMTP("127.0.0.1", gateway.ports["inbound"], timeout=10) as c:
                c.sendmail("a@other.example", ["bob@acme.example"], MSG)
        # The client vanishes mid-session (aiosmtpd cancels the command loop).
        with socket.create_connection(("127.0.0.1", gateway.ports["inbound"]), timeout=10) as s:
            s.recv(1024)
            s.sendall(b"EHLO client.example\r\nMAIL FROM:<a@other.example>\r\n")
            s.recv(1024)
        # STARTTLS and AUTH on the submission port, a message, QUIT.
        with smtplib.SMTP("127.0.0.1", gateway.ports["submission"], timeout=10) as c:
            c.ehlo("client.example")
            c.starttls(context=client_tls)
            c.ehlo("client.example")
            c.login("alice@acme.example", PASSWORD)
            c.sendmail("alice@acme.example", ["carol@other.example"],
                       MSG.replace(b"a@other.example", b"alice@acme.example"))
        wait_closed(gateway)
        assert len(downstream.messages) == 4
        assert connections_alive() == before, "a finished connection waits for the collector"
    finally:
        gc.enable()
