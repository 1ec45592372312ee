"""A gateway in its own process, and what one large message costs it in memory.

The memory regression test (tests/test_memory_large_messages.py) and
bench/memory.py share this: ``portcullis serve --workers 1`` (one process, no
fork) started from a source tree, an inbound listener with every check on and
a submission listener that DKIM-signs, against a downstream and a DNS server the
caller runs.  The cost of a message is the process's peak resident set while it
handles it (VmHWM, its high-water mark reset first through clear_refs) minus its
resident set just before, over the message size.
"""

from __future__ import annotations

import os
import signal
import smtplib
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import yaml

from gateway.accounts.passwords import hash_password
from gateway.dkim.keystore import generate_selector
from tests.support.ports import free_port

DOMAIN = "acme.example"  # the customer: submission signs for it, inbound mail is for it
SENDER_DOMAIN = "sender.test"  # who signs inbound mail (a key in the caller's DNS)
PASSWORD = "memory-test-password"


def signed_inbound_message(size: int, key) -> bytes:  # type: ignore[no-untyped-def]
    """A message of about ``size`` octets from SENDER_DOMAIN, DKIM-signed with ``key``
    (tests.support.dkim_keys.TestKey; selector "sel") by our own fast signer."""
    from gateway.dkim.keystore import ActiveKey
    from gateway.dkim.sign import sign_message

    message = (f"From: News <news@{SENDER_DOMAIN}>\r\nTo: bob@{DOMAIN}\r\nSubject: large\r\n"
               f"Date: Mon, 23 Nov 2026 10:00:00 +0000\r\nMessage-ID: <large@{SENDER_DOMAIN}>\r\n"
               "\r\n").encode() + line_body(size)
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    active = ActiveKey(SENDER_DOMAIN, "sel", "rsa-sha256", load_pem_private_key(key.private, None))
    return sign_message(message, [active], int(time.time())) + message


def submitted_message(size: int) -> bytes:
    return (f"From: Alice <alice@{DOMAIN}>\r\nTo: someone@other.example\r\nSubject: large\r\n"
            f"Date: Mon, 23 Nov 2026 10:00:00 +0000\r\nMessage-ID: <large@{DOMAIN}>\r\n"
            "\r\n").encode() + line_body(size)


def sender_zone(key) -> dict[str, str]:  # type: ignore[no-untyped-def]
    from tests.support.authdns import txt_record
    return {SENDER_DOMAIN: f"""
        @              TXT "v=spf1 ip4:127.0.0.1 -all"
        _dmarc         TXT "v=DMARC1; p=reject"
        sel._domainkey TXT {txt_record(key.record)}
    """}


def line_body(size: int) -> bytes:
    """About ``size`` octets of ordinary text lines (78 octets with CRLF)."""
    line = b"The quick brown fox jumps over the lazy dog; all work and no play, 0123456\r\n"
    return line * max(1, size // len(line))


class GatewayProcess:
    def __init__(self, tmp: Path, source: Path, *, downstream_port: int, dns_port: int):
        self.tmp, self.source = tmp, source
        self.ports = {"inbound": free_port(), "submission": free_port()}
        policy = tmp / "policy"
        policy.mkdir(exist_ok=True)
        (policy / "acme.yaml").write_text(yaml.safe_dump({
            "customer": "acme", "domains": [DOMAIN],
            "accounts": [{"login": f"alice@{DOMAIN}", "password": hash_password(PASSWORD)}],
            "quotas": {"max_message_size": 200_000_000},
        }))
        keys = tmp / "keys"
        if not (keys / DOMAIN).exists():
            generate_selector(keys, DOMAIN, "mem", "rsa-sha256")
        self.keys_dir = keys
        config = {
            "hostname": "mx.memory.test",
            "listeners": {"inbound": {"port": self.ports["inbound"]},
                          "submission": {"port": self.ports["submission"]}},
            "downstream": {"inbound": {"url": f"smtp://127.0.0.1:{downstream_port}", "timeout": 120},
                           "outbound": {"url": f"smtp://127.0.0.1:{downstream_port}", "timeout": 120}},
            "policy_dir": str(policy),
            "dkim": {"keys_dir": str(keys), "check_published": False},  # no DNS has the keys
            "limits": {"max_message_size": 200_000_000, "data_timeout": 120,
                       "command_timeout": 120},
            "dns": {"nameservers": ["127.0.0.1"], "port": dns_port, "timeout": 2},
        }  # no tls: submission gets serve's self-signed development certificate
        self.config = tmp / "gateway.yaml"
        self.config.write_text(yaml.safe_dump(config))
        self.proc: subprocess.Popen | None = None

    def start(self) -> GatewayProcess:
        env = {**os.environ, "PYTHONPATH": str(self.source)}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "serve", "-c", str(self.config),
             "--workers", "1", "--log-level", "WARNING"],
            cwd=self.source, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        for port in self.ports.values():
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"gateway exited: {self.proc.stderr.read().decode()[-2000:]}")
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)
        return self

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None

    # --- memory --------------------------------------------------------------------------
    def _status(self, field: str) -> int:
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
        raise KeyError(field)

    def peak_growth(self, send) -> int:  # type: ignore[no-untyped-def]
        """Octets the process's peak RSS rose above its RSS before ``send()`` ran."""
        assert self.proc is not None
        # Linux ≥ 4.0: writing 5 resets the peak (VmHWM) to the current RSS.
        Path(f"/proc/{self.proc.pid}/clear_refs").write_text("5")
        before = self._status("VmRSS")
        send()
        return self._status("VmHWM") - before

    # --- clients -------------------------------------------------------------------------
    def send_inbound(self, message: bytes) -> tuple[int, bytes]:
        with smtplib.SMTP("127.0.0.1", self.ports["inbound"], timeout=300) as c:
            c.ehlo("client.example")
            return c.data(message) if _envelope(c, f"news@{SENDER_DOMAIN}", f"bob@{DOMAIN}") \
                else (0, b"refused before DATA")

    def send_submission(self, message: bytes) -> tuple[int, bytes]:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        with smtplib.SMTP("127.0.0.1", self.ports["submission"], timeout=300) as c:
            c.starttls(context=context)
            c.login(f"alice@{DOMAIN}", PASSWORD)
            return c.data(message) if _envelope(c, f"alice@{DOMAIN}", "someone@other.example") \
                else (0, b"refused before DATA")


def _envelope(client: smtplib.SMTP, sender: str, recipient: str) -> bool:
    return client.mail(sender)[0] == 250 and client.rcpt(recipient)[0] == 250
