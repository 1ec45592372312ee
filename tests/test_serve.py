"""`portcullis serve` as a real process: SIGTERM lets in-flight mail finish, exits 0;
--workers N runs N processes sharing the listening sockets."""

import os
import signal
import smtplib
import subprocess
import sys
import threading
import time

import yaml

from tests.conftest import customer_policies
from tests.support.ports import free_port


def write_config(tmp_path, downstream_url, password_hash, grace=10):
    policy = tmp_path / "policy"
    policy.mkdir()
    for name, p in customer_policies(password_hash).items():
        (policy / f"{name}.yaml").write_text(yaml.safe_dump(p))
    port = free_port()
    cfg = {"hostname": "mx.test", "listeners": {"inbound": {"port": port}},
           "downstream": {"inbound": downstream_url}, "policy_dir": "policy",
           "limits": {"shutdown_grace": grace},
           # No DNS server there: the inbound checks see temperror quickly.
           "dns": {"nameservers": ["127.0.0.1"], "port": free_port(), "timeout": 1}}
    (tmp_path / "gateway.yaml").write_text(yaml.safe_dump(cfg))
    return tmp_path / "gateway.yaml", port


def start(config, *extra):
    proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "serve", "-c", str(config), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return proc


def wait_listening(port, proc, timeout=15):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read()
        try:
            with smtplib.SMTP("127.0.0.1", port, timeout=2) as c:
                c.noop()
            return
        except OSError:
            time.sleep(0.1)
    raise AssertionError("gateway did not start")


def test_sigterm_lets_the_transaction_in_flight_finish_then_exits_0(tmp_path, downstream, password_hash):
    config, port = write_config(tmp_path, downstream.url, password_hash)
    proc = start(config)
    try:
        wait_listening(port, proc)
        downstream.behaviour.data_delay = 1.5
        result = {}

        def send():
            c = smtplib.SMTP("127.0.0.1", port, timeout=15)
            c.ehlo("x")
            c.mail("a@other.example")
            c.rcpt("bob@acme.example")
            result["data"] = c.data(b"From: a@other.example\r\n\r\nin flight\r\n")
            # Then the gateway says goodbye: the transaction done, it hangs up.
            result["after"] = c.getreply()  # (smtplib may have it buffered already)
            c.close()

        t = threading.Thread(target=send)
        t.start()
        time.sleep(0.8)  # DATA is with the (slow) downstream now
        proc.send_signal(signal.SIGTERM)
        t.join(15)
        assert result["data"][0] == 250
        assert result["after"][0] == 421 and result["after"][1].startswith(b"4.3.2")
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert len(downstream.messages) == 1
    # After the stop nobody is listening any more.
    try:
        smtplib.SMTP("127.0.0.1", port, timeout=2)
        raise AssertionError("still listening")
    except OSError:
        pass


def test_idle_sessions_hear_421_on_shutdown(tmp_path, downstream, password_hash):
    config, port = write_config(tmp_path, downstream.url, password_hash)
    proc = start(config)
    try:
        wait_listening(port, proc)
        c = smtplib.SMTP("127.0.0.1", port, timeout=10)
        c.ehlo("x")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
        code, text = c.getreply()
        assert code == 421 and text.startswith(b"4.3.2")
    finally:
        if proc.poll() is None:
            proc.kill()


def test_workers_share_the_port_and_all_take_connections(tmp_path, downstream, password_hash):
    config, port = write_config(tmp_path, downstream.url, password_hash)
    proc = start(config, "--workers", "2")
    try:
        wait_listening(port, proc)
        for i in range(40):
            with smtplib.SMTP("127.0.0.1", port, timeout=10) as c:
                c.ehlo("x")
                c.sendmail("a@other.example", ["bob@acme.example"],
                           f"From: a@other.example\r\n\r\nmessage {i}\r\n".encode())
        assert len(downstream.messages) == 40
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
        log = proc.stderr.read()
        worker_pids = {line.split()[2] for line in log.splitlines() if "txid=" in line}
        assert len(worker_pids) == 2, log
        assert str(proc.pid) not in worker_pids
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)


def test_serve_exits_with_a_clear_message_when_the_port_is_taken(tmp_path, downstream, password_hash):
    import socket

    config, port = write_config(tmp_path, downstream.url, password_hash)
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", port))
    blocker.listen()
    try:
        proc = start(config)
        assert proc.wait(15) == 2
        err = proc.stderr.read()
        assert err.splitlines() == [
            f"listeners.inbound: 127.0.0.1:{port}: address already in use by another process"]
    finally:
        blocker.close()


def test_settle_heap_moves_start_up_objects_out_of_the_collectors_way():
    import gc

    from gateway.serve import settle_heap

    before = gc.get_freeze_count()
    try:
        settle_heap()
        # Everything alive now (the loaded config included) is frozen: collections skip it.
        assert gc.get_freeze_count() > before
        assert gc.get_count()[2] == 0
    finally:
        gc.unfreeze()
