"""A real HAProxy (Debian's package) on loopback, in front of a gateway under test.

Each frontend is a TCP proxy (``mode tcp``: STARTTLS passes through untouched)
that tells the gateway who the client is with a PROXY protocol v2 header
(``send-proxy-v2``), as an ISP's balancer does.  HAProxy runs in the foreground
(``-db``) with its own config and pid file in a temporary directory, and is
stopped by its own pid.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from tests.support.ports import free_port

HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"


def haproxy_config(routes: dict[str, tuple[int, int]]) -> str:
    """``routes``: name → (port HAProxy listens on, gateway port it forwards to)."""
    lines = [
        "global",
        "  maxconn 100",
        "defaults",
        "  mode tcp",
        "  timeout connect 5s",
        "  timeout client 30s",
        "  timeout server 30s",
    ]
    for name, (listen, target) in routes.items():
        lines += [
            f"frontend {name}",
            f"  bind 127.0.0.1:{listen}",
            f"  default_backend {name}_gateways",
            f"backend {name}_gateways",
            f"  server gw1 127.0.0.1:{target} send-proxy-v2",
        ]
    return "\n".join(lines) + "\n"


class HAProxy:
    def __init__(self, tmp: Path, targets: dict[str, int]):
        """``targets``: name → the gateway port each frontend forwards to."""
        self.dir = tmp / "haproxy"
        self.dir.mkdir(exist_ok=True)
        self.ports = {name: free_port() for name in targets}
        self.config = self.dir / "haproxy.cfg"
        self.config.write_text(haproxy_config(
            {name: (self.ports[name], port) for name, port in targets.items()}))
        self.log = self.dir / "haproxy.log"
        self.process: subprocess.Popen | None = None

    def start(self) -> HAProxy:
        check = subprocess.run([HAPROXY, "-c", "-f", str(self.config)],
                               capture_output=True, text=True, timeout=30)
        assert check.returncode == 0, check.stdout + check.stderr
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                [HAPROXY, "-db", "-f", str(self.config), "-p", str(self.dir / "haproxy.pid")],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 15
        for port in self.ports.values():
            while True:
                if self.process.poll() is not None:
                    raise RuntimeError("haproxy exited: " + self.log.read_text())
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise RuntimeError("haproxy did not listen: " + self.log.read_text()) from None
                    time.sleep(0.05)
        return self

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
        self.process = None
