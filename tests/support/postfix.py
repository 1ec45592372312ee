"""A private Postfix instance on a loopback port (Debian's postfix package).

Its own config, queue and data directories in a temp dir, run in the foreground
with ``postfix start-fg`` (logs on its stdout), relaying everything it accepts
to ``relayhost``.  Used as the real MTA downstream of the gateway in tests, and
as the reference relay in bench/.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

POSTFIX = shutil.which("postfix") or "/usr/sbin/postfix"


def postfix_available() -> bool:
    return os.path.exists(POSTFIX) and os.geteuid() == 0


class PostfixInstance:
    def __init__(self, port: int, relayhost: str, *, relay_domains: list[str],
                 recipients: list[str] | None = None, extra: dict[str, str] | None = None,
                 address: str = "127.0.0.1"):
        self.port, self.address = port, address
        # Postfix's own processes run as the postfix user: the whole path must be
        # traversable by it (pytest's tmp dirs are 0700), so use a 0755 dir in /tmp.
        self.root = Path(tempfile.mkdtemp(prefix="portcullis-postfix-"))
        self.root.chmod(0o755)
        conf, queue, data = self.root / "conf", self.root / "queue", self.root / "data"
        for d in (conf, queue, data):
            d.mkdir()
        shutil.chown(data, "postfix")
        master = Path("/etc/postfix/master.cf").read_text()
        lines = []
        for line in master.splitlines():
            if line.startswith("smtp ") and " inet " in line:
                line = f"{address}:{port} inet n - n - - smtpd"
            lines.append(line)
        (conf / "master.cf").write_text("\n".join(lines) + "\n")
        for name in ("dynamicmaps.cf",):
            if Path("/etc/postfix", name).exists():
                shutil.copy(Path("/etc/postfix", name), conf / name)
        if Path("/etc/postfix/dynamicmaps.cf.d").is_dir():
            shutil.copytree("/etc/postfix/dynamicmaps.cf.d", conf / "dynamicmaps.cf.d")
        settings = {
            "compatibility_level": "3.6",
            "queue_directory": str(queue),
            "data_directory": str(data),
            "mail_owner": "postfix",
            "setgid_group": "postdrop",
            "inet_interfaces": "127.0.0.1",
            "inet_protocols": "ipv4",
            "myhostname": "postfix.test",
            "mydestination": "",
            "mynetworks": "127.0.0.0/8",
            "relay_domains": " ".join(relay_domains),
            "relayhost": relayhost,
            "maillog_file": "/dev/stdout",
            "smtp_dns_support_level": "disabled",
            "smtpd_banner": "$myhostname ESMTP",
            "default_process_limit": "100",
            "smtpd_client_connection_count_limit": "0",
            "smtpd_client_connection_rate_limit": "0",
            "anvil_rate_time_unit": "60s",
        }
        if recipients is not None:
            (conf / "recipients").write_text("".join(f"{r} OK\n" for r in recipients))
            settings["relay_recipient_maps"] = f"texthash:{conf / 'recipients'}"
        settings.update(extra or {})
        (conf / "main.cf").write_text("".join(f"{k} = {v}\n" for k, v in settings.items()))
        self.conf = conf
        self.log = self.root / "postfix.log"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 20) -> PostfixInstance:
        self.proc = subprocess.Popen([POSTFIX, "-c", str(self.conf), "start-fg"],
                                     stdout=self.log.open("w"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"postfix exited: {self.log.read_text()}")
            try:
                with socket.create_connection((self.address, self.port), timeout=1) as s:
                    if s.recv(100).startswith(b"220"):
                        return self
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"postfix did not start: {self.log.read_text()}")

    def stop(self) -> None:
        subprocess.run([POSTFIX, "-c", str(self.conf), "stop"], capture_output=True, timeout=30)
        if self.proc is not None:
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        shutil.rmtree(self.root, ignore_errors=True)

    def flush(self) -> None:
        subprocess.run([POSTFIX, "-c", str(self.conf), "flush"], capture_output=True, timeout=30)
