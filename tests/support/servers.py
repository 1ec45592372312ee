"""What the account-source test servers share: free ports, private dirs, bounded waits."""

from __future__ import annotations

import os
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def private_dir(prefix: str, owner: str | None = None) -> Path:
    """A temp dir that a daemon dropping privileges to ``owner`` can use."""
    path = Path(tempfile.mkdtemp(prefix=f"portcullis-{prefix}-"))
    path.chmod(0o755)
    if owner is not None and os.geteuid() == 0:
        import pwd

        pw = pwd.getpwnam(owner)
        os.chown(path, pw.pw_uid, pw.pw_gid)
    return path


def wait_for(what: str, ready: Callable[[], bool], timeout: float = 15.0,
             proc: subprocess.Popen | None = None, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            return
        if proc is not None and proc.poll() is not None:
            break
        time.sleep(0.05)
    detail = ""
    if log is not None and log.exists():
        detail = "\n" + log.read_text(errors="replace")[-3000:]
    raise RuntimeError(f"{what} did not become ready within {timeout} s{detail}")


def tcp_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def stop_process(proc: subprocess.Popen | None, timeout: float = 10.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=timeout)


def stop_group(proc: subprocess.Popen | None, timeout: float = 10.0) -> None:
    """Stop a daemon started with ``start_new_session=True`` and every child it forked."""
    if proc is None:
        return
    import signal

    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=timeout)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:  # children exit after the master
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
