"""A real `portcullis serve --workers N` for the reload tests, and what they ask of it."""

from __future__ import annotations

import os
import signal
import smtplib
import subprocess
import sys
import time
from pathlib import Path

import yaml

from tests.conftest import customer_policies
from tests.support.ports import free_port


def serve_workers(tmp_path: Path, downstream, password_hash: str,
                  workers: int = 2, **settings) -> tuple[subprocess.Popen, int]:
    """The MX only, the test customers' policy files, ``workers`` worker processes;
    (the process, its inbound port).  Its own session: its workers go with it.
    ``settings``: more top-level settings of the gateway file."""
    policy = tmp_path / "policy"
    policy.mkdir()
    for name, p in customer_policies(password_hash).items():
        (policy / f"{name}.yaml").write_text(yaml.safe_dump(p))
    port = free_port()
    (tmp_path / "gateway.yaml").write_text(yaml.safe_dump({
        "hostname": "mx.test", "listeners": {"inbound": {"port": port}},
        "downstream": {"inbound": downstream.url}, "policy_dir": "policy",
        "dns": {"nameservers": ["127.0.0.1"], "port": free_port(), "timeout": 1},
        "limits": {"shutdown_grace": 2}} | settings))
    proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "serve", "-c",
                             str(tmp_path / "gateway.yaml"), "--workers", str(workers)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    return proc, port


def stop_and_read(proc: subprocess.Popen) -> str:
    """SIGTERM to a ``serve_workers`` gateway and its workers; its stderr, read to the
    end (a pipe nobody reads would keep its log, and so its exit, waiting)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        return proc.communicate(timeout=30)[1]
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise


def inbound_rcpt(port: int, rcpt: str) -> int:
    """The MX's answer to RCPT TO:<rcpt> in a new session."""
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as c:
        c.ehlo("x")
        c.mail("a@other.example")
        return c.rcpt(rcpt)[0]


def worker_pids(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def eventually(check, timeout: float = 20.0) -> bool:
    """True once ``check()`` is; a refused connection (a worker still starting) is a no."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return True
        except OSError:
            pass
        time.sleep(0.1)
    return False
