"""SIGTERM when ``shutdown_grace`` is not enough: every client hears 421 4.3.2
(none is cut off in silence), nothing half-done is acknowledged or delivered,
the sessions' connection slots and quota holds are released before the state
file is closed (so after a restart the same account is not refused 454 for half
an hour, nor 451 for a message that never left), and the process exits 0."""

from __future__ import annotations

import signal
import smtplib
import subprocess
import sys
import threading
import time

import yaml

from gateway.dkim.keystore import generate_selector
from tests.conftest import customer_policies
from tests.support.ports import free_port
from tests.support.reply_ids import without_id
from tests.support.submission import auth_plain

SESSIONS = 3  # alice's concurrent_connections: every one of them in use at SIGTERM


def write_config(tmp_path, downstream_url, password_hash, cert_files):
    policy = tmp_path / "policy"
    policy.mkdir()
    for name, p in customer_policies(password_hash).items():
        (policy / f"{name}.yaml").write_text(yaml.safe_dump(p))
        for domain in p["domains"]:  # submitted mail is signed: every domain has a key
            generate_selector(tmp_path / "keys", domain, "test", "ed25519-sha256")
    port = free_port()
    tls = {"cert": str(cert_files[0]), "key": str(cert_files[1])}
    cfg = {"hostname": "mx.test", "listeners": {"submissions": {"port": port, "tls": tls}},
           # The downstream's own deadline is longer than the grace: the message is
           # still with it when the grace runs out.
           "downstream": {"outbound": {"url": downstream_url, "timeout": 20}},
           "policy_dir": "policy", "dkim": {"keys_dir": "keys", "check_published": False}, "store": {"backend": "sqlite", "path": "state.db"},
           # The message cut short was not delivered: it must not count either.
           "quotas": {"concurrent_connections": SESSIONS, "messages_per_hour": 1},
           "lockout": {"failure_delay": 0},
           "limits": {"shutdown_grace": 1}}
    (tmp_path / "gateway.yaml").write_text(yaml.safe_dump(cfg))
    return tmp_path / "gateway.yaml", port


def start(config):
    return subprocess.Popen([sys.executable, "-m", "gateway.cli", "serve", "-c", str(config)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def connect(port, client_tls):
    deadline = time.monotonic() + 15
    while True:
        try:
            c = smtplib.SMTP_SSL("127.0.0.1", port, timeout=15, context=client_tls)
            c.ehlo("client.example")
            return c
        except OSError:
            assert time.monotonic() < deadline, "gateway did not start"
            time.sleep(0.1)


def stop(proc) -> tuple[int, str]:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        code = proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        code = proc.wait(10)
    return code, proc.stderr.read()


def test_sigterm_past_grace_says_421_releases_session_slots_and_exits_0(
        tmp_path, downstream, password_hash, cert_files, client_tls):
    config, port = write_config(tmp_path, downstream.url, password_hash, cert_files)
    downstream.behaviour.data_delay = 8  # far beyond the 1 s grace
    proc = start(config)
    sessions: list[smtplib.SMTP_SSL] = []
    in_flight: dict[str, object] = {}
    try:
        for _ in range(SESSIONS):
            c = connect(port, client_tls)
            assert auth_plain(c, "alice@acme.example")[0] == 235
            sessions.append(c)

        def send() -> None:
            c = sessions[0]
            try:
                c.mail("alice@acme.example")
                c.rcpt("someone@elsewhere.example")
                in_flight["data"] = c.data(b"From: alice@acme.example\r\n\r\nin flight\r\n")
            except smtplib.SMTPException as exc:
                in_flight["data"] = exc
            c.close()  # as a client does after a 421

        sender = threading.Thread(target=send)
        sender.start()
        time.sleep(1.0)  # the message is with the (slow) downstream now
        stopped = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        idle_replies = []
        for c in sessions[1:]:
            idle_replies.append(c.getreply())
            c.close()
        sender.join(20)
        code, log = stop(proc)
        took = time.monotonic() - stopped
    finally:
        if proc.poll() is None:
            proc.kill()
        for c in sessions:
            c.close()

    # The transaction still running at the end of the grace: 421, not silence.
    data_code, data_text = in_flight["data"]
    assert (data_code, without_id(data_text)) == (421, b"4.3.2 Service shutting down, try again later"), \
        in_flight
    # The idle sessions: 421 at once.
    assert all(r[0] == 421 and r[1].startswith(b"4.3.2") for r in idle_replies), idle_replies
    assert code == 0, log
    # The grace, then the goodbyes; not the downstream's 8 s.
    assert took < 4, took
    assert "could not release" not in log and "Traceback" not in log, log
    # The cut transaction is on record, with the id its 421 named and the rule that cut it.
    txid = data_text.rsplit(b"(id ", 1)[1].rstrip(b")").decode()
    [line] = [x for x in log.splitlines() if f"txid={txid} " in x]
    assert "result=421 4.3.2 rule=shutdown ended=shutdown" in line, line
    # Nothing half-done reached the mailbox (the downstream transaction was cut).
    time.sleep(0.5)
    assert downstream.messages == []

    # Restarted on the same state file: alice may open all her sessions again.
    downstream.behaviour.data_delay = 0
    proc = start(config)
    sessions = []
    try:
        for _ in range(SESSIONS):
            c = connect(port, client_tls)
            sessions.append(c)
            assert auth_plain(c, "alice@acme.example") == (235, b"2.7.0 Authentication successful")
        refused = sessions[0].sendmail("alice@acme.example", ["someone@elsewhere.example"],
                                       b"From: alice@acme.example\r\n\r\nagain\r\n")
        assert refused == {}
    finally:
        for c in sessions:
            c.close()
        code, log = stop(proc)
    assert code == 0, log
