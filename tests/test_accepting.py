"""Workers take connections in turn from the socket they share (gateway/accepting.py).

With one SO_REUSEPORT socket per worker the kernel hashed sessions to workers
unevenly (20 bench sessions: 15 and 5); now each worker takes a connection only
while no other carries fewer sessions, and one that is ahead still takes what the
others leave waiting (a stalled worker must never strand a client)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import smtplib
import socket
import ssl
import time

import pytest
import yaml

from gateway.accepting import (
    FORCE_AFTER,
    GONE,
    STEP_ASIDE,
    LoadTable,
    Share,
    TurnTakingServer,
    takes_next,
)
from gateway.sockets import Address, claim, release
from tests.support.ports import free_port
from tests.test_serve import start, wait_listening, write_config


def test_the_least_loaded_worker_takes_the_next_connection_ties_race():
    assert takes_next(3, [3, 5])
    assert takes_next(3, [3, 3])
    assert not takes_next(4, [4, 3])
    assert takes_next(7, [7, GONE])  # a worker restarting is never waited for


def test_the_table_is_shared_with_forked_workers():
    table = LoadTable(2)
    assert table.loads() == [GONE, GONE]  # until each worker has started
    pid = os.fork()
    if pid == 0:
        table.publish(1, 9)
        os._exit(0)
    os.waitpid(pid, 0)
    table.publish(0, 4)
    assert table.loads() == [4, 9]
    table.gone(1)
    assert table.loads() == [4, GONE]


class Greeter(asyncio.Protocol):
    def connection_made(self, transport):  # type: ignore[no-untyped-def]
        transport.write(b"hello\r\n")


def served(loads: list[int], mine: int, connections: int = 1) -> list[float]:
    """Seconds until each of ``connections`` clients is greeted by a TurnTakingServer
    in slot 0 carrying ``mine`` sessions while the table says ``loads``."""
    table = LoadTable(len(loads))
    for slot, load in enumerate(loads):
        table.publish(slot, load)
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)
    port = listener.getsockname()[1]

    async def main() -> list[float]:
        server = TurnTakingServer(listener, Greeter, share=Share(table, 0), sessions=lambda: mine)
        server.start()
        waits = []
        try:
            for _ in range(connections):
                began = time.monotonic()
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                assert await asyncio.wait_for(reader.readline(), 5) == b"hello\r\n"
                waits.append(time.monotonic() - began)
                writer.close()
        finally:
            server.close()
            await server.wait_closed()
        return waits

    try:
        return asyncio.run(main())
    finally:
        listener.close()


def test_a_worker_behind_takes_connections_at_once():
    assert max(served([2, 5], mine=2, connections=5)) < STEP_ASIDE * FORCE_AFTER


def test_a_worker_ahead_steps_aside_yet_takes_what_the_others_leave():
    # Slot 1 says it carries fewer but never accepts (stalled): slot 0 takes each
    # connection once it has left it to the other FORCE_AFTER times STEP_ASIDE.
    waits = served([6, 1], mine=6, connections=3)
    assert all(STEP_ASIDE * FORCE_AFTER * 0.8 < w < 1.0 for w in waits), waits


def test_a_closed_server_takes_nothing_more():
    table = LoadTable(1)
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)

    async def main() -> bool:
        server = TurnTakingServer(listener, Greeter, share=Share(table, 0), sessions=lambda: 0)
        server.start()
        server.close()
        assert not server.is_serving()
        reader, writer = await asyncio.open_connection(*listener.getsockname())
        try:
            await asyncio.wait_for(reader.readline(), STEP_ASIDE * FORCE_AFTER * 10)
            return True
        except TimeoutError:
            return False
        finally:
            writer.close()

    try:
        assert asyncio.run(main()) is False  # queued in the backlog, never served
    finally:
        listener.close()


def with_submission(tmp_path, downstream, password_hash, cert_files, listener: str,
                    grace: float = 10):
    """test_serve's gateway file with a ``listener`` (submission or submissions) on a
    free port, and no domain signed (no keys here): (config, that port)."""
    config, _inbound = write_config(tmp_path, downstream.url, password_hash, grace=grace)
    port = free_port()
    settings = yaml.safe_load(config.read_text())
    settings["listeners"][listener] = {
        "port": port, "tls": {"cert": str(cert_files[0]), "key": str(cert_files[1])}}
    settings["downstream"]["outbound"] = downstream.url
    config.write_text(yaml.safe_dump(settings))
    for policy in (tmp_path / "policy").glob("*.yaml"):
        customer = yaml.safe_load(policy.read_text())
        customer["dkim"] = {"sign": []}
        policy.write_text(yaml.safe_dump(customer))
    (tmp_path / "keys").mkdir()
    return config, port


@pytest.mark.timeout(120)
def test_two_workers_carry_long_submission_sessions_evenly(tmp_path, downstream, password_hash,
                                                           cert_files):
    """40 submission sessions opened one after another and held: each worker carries
    20 (+-2).  With a SO_REUSEPORT socket per worker the split was the kernel's hash
    of the client's port, binomial: 20 +-2 only about one time in three."""
    config, port = with_submission(tmp_path, downstream, password_hash, cert_files, "submission")
    proc = start(config, "--workers", "2")
    sessions: list[smtplib.SMTP] = []
    try:
        wait_listening(port, proc)
        for _ in range(40):
            c = smtplib.SMTP("127.0.0.1", port, timeout=10)
            c.ehlo("x")
            sessions.append(c)
        for c in sessions:
            c.quit()
        sessions.clear()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
        log = proc.stderr.read()
        per_worker: dict[str, int] = {}
        for line in log.splitlines():
            if "listener=submission" in line and "ended=quit" in line:
                pid = line.split()[2]
                per_worker[pid] = per_worker.get(pid, 0) + 1
        # wait_listening's own session is one more, on either worker.
        assert sum(per_worker.values()) in (40, 41), log[-2000:]
        assert max(per_worker.values()) - min(per_worker.values()) <= 3 and len(per_worker) == 2, per_worker
    finally:
        for c in sessions:
            c.close()
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)


def test_mx_connections_keep_a_socket_per_worker():
    """Short MX sessions: the kernel's hash spreads them evenly and wakes one worker
    per connection (taking turns cost inbound --workers auto a fifth of its rate)."""
    slots = claim([Address("listeners.inbound", "127.0.0.1", free_port()),
                   Address("listeners.submission", "127.0.0.1", free_port())], 2)
    try:
        assert slots[0]["listeners.inbound"] is not slots[1]["listeners.inbound"]
        assert slots[0]["listeners.submission"] is slots[1]["listeners.submission"]
    finally:
        release(slots)


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_failed_465_handshake_is_forgotten_at_once(tmp_path, downstream, password_hash, cert_files,
                                                     workers):
    """asyncio never hands a connection whose TLS handshake failed to its protocol,
    so the listener kept counting it as open: it skewed the workers' turns and held
    shutdown for the whole grace period.  Our acceptor tells the connection, which
    the listener then forgets."""
    config, port = with_submission(tmp_path, downstream, password_hash, cert_files, "submissions",
                                   grace=60)
    proc = start(config, "--workers", workers)
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                with smtplib.SMTP_SSL("127.0.0.1", port, timeout=5, context=ctx) as c:
                    c.ehlo("x")
                break
            except OSError:
                assert time.monotonic() < deadline and proc.poll() is None, proc.stderr.read()
                time.sleep(0.1)
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"EHLO not-tls\r\n")
            with contextlib.suppress(OSError):
                while s.recv(4096):
                    pass
        time.sleep(0.5)
        began = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        # No session left to wait for: not the 60 s grace, nor the 31 s handshake deadline.
        assert time.monotonic() - began < 5
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
