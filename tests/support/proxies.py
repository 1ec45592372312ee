"""Private proxy servers from Debian's packages on loopback: tinyproxy, Squid, Dante.

Each runs in the foreground from its own config file in its own temp dir (pid file,
logs, Squid's cache dir), on an address and port the test gives, in its own process
group, and is stopped by that group at teardown.  ``open=True`` lets loopback clients
through; ``open=False`` is the closed configuration an ISP would want.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

TINYPROXY = shutil.which("tinyproxy") or "/usr/bin/tinyproxy"
SQUID = shutil.which("squid") or "/usr/sbin/squid"
DANTED = shutil.which("danted") or "/usr/sbin/danted"


def available(binary: str) -> bool:
    return os.access(binary, os.X_OK) and os.geteuid() == 0


class _Server:
    name = "server"

    def __init__(self, address: str, port: int, *, open: bool):
        self.address, self.port, self.open = address, port, open
        self.root = Path(tempfile.mkdtemp(prefix=f"portcullis-{self.name}-"))
        self.root.chmod(0o755)  # the servers drop to their own users
        self.log = self.root / "server.log"
        self.proc: subprocess.Popen | None = None

    def command(self) -> list[str]:
        raise NotImplementedError

    def start(self, timeout: float = 20) -> _Server:
        self.proc = subprocess.Popen(self.command(), stdout=self.log.open("w"),
                                     stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited: {self.logs()}")
            try:
                socket.create_connection((self.address, self.port), timeout=1).close()
                return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{self.name} did not start: {self.logs()}")

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.root.rglob("*.log")))

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
            except ProcessLookupError:
                pass
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> _Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class TinyProxy(_Server):
    name = "tinyproxy"

    def command(self) -> list[str]:
        # Closed: only a client that is not us may use it (tinyproxy answers 403).
        allow = "127.0.0.0/8" if self.open else "192.0.2.1"
        conf = self.root / "tinyproxy.conf"
        conf.write_text(
            f"Port {self.port}\nListen {self.address}\nTimeout 10\nMaxClients 50\n"
            f'PidFile "{self.root}/tinyproxy.pid"\nLogFile "{self.root}/tinyproxy.log"\n'
            f"LogLevel Info\nAllow {allow}\nDisableViaHeader Yes\n"
        )
        return [TINYPROXY, "-d", "-c", str(conf)]


class Squid(_Server):
    name = "squid"

    def command(self) -> list[str]:
        cache = self.root / "cache"
        cache.mkdir()
        shutil.chown(cache, "proxy", "proxy")
        # Squid's stock rules: CONNECT only to 443, plain HTTP only to "safe" ports
        # (25 is not one): the open configuration drops them, as careless ones do.
        access = "http_access allow all" if self.open else (
            "acl localnet src 10.0.0.0/8\nhttp_access allow localnet\nhttp_access deny all")
        conf = self.root / "squid.conf"
        conf.write_text(
            f"http_port {self.address}:{self.port}\n"
            f"pid_filename {cache}/squid.pid\ncache_log {cache}/cache.log\n"
            f"access_log stdio:{cache}/access.log\ncache_store_log none\n"
            f"coredump_dir {cache}\ncache deny all\ncache_mem 4 MB\n"
            "cache_effective_user proxy\ncache_effective_group proxy\n"
            "netdb_filename none\npinger_enable off\nshutdown_lifetime 0 seconds\n"
            # No DNS is needed: the tests name the listener by its address.
            "dns_nameservers 127.0.0.1\n"
            f"{access}\n"
        )
        return [SQUID, "-N", "-f", str(conf)]


class Dante(_Server):
    """danted: SOCKS4 and SOCKS5 (Debian's 1.4 does not do SOCKS4a: it refuses it)."""

    name = "danted"

    def command(self) -> list[str]:
        verb = "pass" if self.open else "block"
        conf = self.root / "danted.conf"
        conf.write_text(
            f"logoutput: {self.root}/danted.log\n"
            # Dante warns that 127.0.0.x is on no interface, then binds it all the same.
            f"internal: {self.address} port = {self.port}\n"
            "external: 127.0.0.1\n"
            "clientmethod: none\nsocksmethod: none\n"
            "user.privileged: root\nuser.unprivileged: nobody\n"
            "client pass {\n  from: 127.0.0.0/8 to: 0.0.0.0/0\n}\n"
            f"socks {verb} {{\n  from: 0.0.0.0/0 to: 0.0.0.0/0\n  command: connect\n}}\n"
        )
        return [DANTED, "-f", str(conf), "-p", str(self.root / "danted.pid"), "-N", "1"]
