"""What bench/submission.py reads to prove a row did what its label says, and what it cost.

- ``Sink``: Postfix's smtp-sink with every message appended to one dump file, so
  a row's messages can be counted and their DKIM signatures checked afterwards.
- ``check_signed``: every message carries one DKIM-Signature by the expected
  domain with rsa-sha256, and a sample of them verifies (dkimpy) against the
  signer's public key.
- ``refuses_mismatched_sender``: a logged-in account asking to send as another
  account is refused (Postfix's reject_sender_login_mismatch, the gateway's
  sender rules): the peer checks what an ISP's submission server must.
- ``tree_cpu`` / ``tree_peak_rss`` / ``MemoryPeak``: a server's CPU seconds, the sum
  of its processes' RSS high-water marks, and its sampled peak total PSS, over its
  whole process tree, from /proc.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import smtplib
import subprocess
import threading
import time
from pathlib import Path

import dkim

from bench.inbound import wait_port
from bench.submission_client import client_tls
from tests.support.ports import free_port
from tests.support.servers import private_dir, stop_process

MARKER = b"PORTCULLIS-BENCH-MESSAGE"
SINK_HEADERS = (b"X-Client-Addr:", b"X-Client-Proto:", b"X-Helo-Args:", b"X-Mail-Args:",
                b"X-Rcpt-Args:")


class Sink:
    def __init__(self) -> None:
        self.dir = private_dir("sink", owner="nobody")
        self.dump = self.dir / "dump"
        self.port = free_port()
        self.proc = subprocess.Popen(
            ["smtp-sink", "-u", "nobody", "-D", str(self.dump), "-S", MARKER.decode() + r"\n",
             f"127.0.0.1:{self.port}", "1024"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_port(self.port)
        except BaseException:
            self.stop()
            raise

    def messages(self) -> list[bytes]:
        """Every message received so far, as it was sent to the sink (CRLF lines)."""
        if not self.dump.exists():
            return []
        out = []
        for chunk in self.dump.read_bytes().split(MARKER + b"\n")[1:]:
            lines = chunk.split(b"\n")
            # smtp-sink's own lines: its X-* envelope lines and the Received: it adds.
            while lines and lines[0].startswith(SINK_HEADERS):
                lines.pop(0)
            if lines and lines[0].startswith(b"Received: from") and b"smtp-sink" in b"".join(lines[:3]):
                lines.pop(0)
                while lines and lines[0][:1] in (b" ", b"\t"):
                    lines.pop(0)
            out.append(b"\r\n".join(lines))
        return out

    def count(self) -> int:
        return self.dump.read_bytes().count(MARKER + b"\n") if self.dump.exists() else 0

    def wait_for(self, expected: int, timeout: float = 120) -> int:
        """Until the sink holds ``expected`` messages (Postfix forwards after it answers)."""
        deadline = time.monotonic() + timeout
        while (got := self.count()) < expected and time.monotonic() < deadline:
            time.sleep(0.1)
        if got != expected:
            raise RuntimeError(f"the sink received {got} messages, expected {expected}")
        return got

    def stop(self) -> None:
        stop_process(self.proc)
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Sink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def check_signed(messages: list[bytes], record: str, domain: str, sample: int = 3) -> None:
    """Raise unless each message has exactly one rsa-sha256 DKIM-Signature by ``domain``
    and the first ``sample`` verify against ``record``."""
    for i, msg in enumerate(messages):
        head = msg.split(b"\r\n\r\n", 1)[0]
        sigs = re.findall(rb"(?im)^DKIM-Signature:((?:.*\r\n[ \t].*)*.*)", head)
        if len(sigs) != 1:
            raise RuntimeError(f"message {i}: {len(sigs)} DKIM-Signature headers, expected 1")
        tags = re.sub(rb"\s+", b"", sigs[0])
        if b"a=rsa-sha256" not in tags or not re.search(rb"(^|;)d=" + re.escape(domain.encode()) + rb"(;|$)", tags):
            raise RuntimeError(f"message {i}: not an rsa-sha256 signature by {domain}: {sigs[0][:120]!r}")

    def dns(name: bytes, timeout: int = 5) -> bytes:
        return record.encode()

    for i, msg in enumerate(messages[:sample]):
        if not dkim.verify(msg, dnsfunc=dns):
            raise RuntimeError(f"message {i}: its DKIM signature does not verify")


def check_unsigned(messages: list[bytes]) -> None:
    for i, msg in enumerate(messages):
        if re.search(rb"(?im)^DKIM-Signature:", msg.split(b"\r\n\r\n", 1)[0]):
            raise RuntimeError(f"message {i}: signed, though this row does not sign")


def refuses_mismatched_sender(port: int, login: str, password: str, other: str) -> str:
    """The reply to ``login`` sending as ``other``: a 5xx at MAIL or RCPT, or an error."""
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as c:
        c.ehlo("client.bench.example")
        c.starttls(context=client_tls())
        c.ehlo("client.bench.example")
        blob = base64.b64encode(f"\0{login}\0{password}".encode()).decode()
        code, text = c.docmd("AUTH", "PLAIN " + blob)
        if code != 235:
            raise RuntimeError(f"AUTH as {login} answered {code} {text!r}")
        for step in (lambda: c.mail(other), lambda: c.rcpt("someone@elsewhere.example")):
            code, text = step()
            if code >= 500:
                return f"{code} {text.decode(errors='replace')}"
            if code != 250:
                raise RuntimeError(f"sending as {other}: {code} {text!r}, neither 250 nor 5xx")
        raise RuntimeError(f"{login} may send as {other}: the sender check is not on")


def tree_pids(roots: list[int]) -> set[int]:
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            parents[int(entry)] = int(stat[stat.rindex(")") + 2:].split()[1])
    tree, frontier = set(roots), list(roots)
    while frontier:
        parent = frontier.pop()
        children = [p for p, pp in parents.items() if pp == parent and p not in tree]
        tree.update(children)
        frontier.extend(children)
    return tree


def tree_cpu(roots: list[int]) -> float:
    """CPU seconds (user + system) of the trees under ``roots``, including children that
    exited: Postfix's cleanup and smtp processes end after 100 uses (max_use) under
    load, and their time lives on only in their parent's cutime/cstime once reaped."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in tree_pids(roots):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        total += sum(int(f) for f in fields[11:15])  # utime stime cutime cstime
    return total / ticks


class MemoryPeak:
    """The largest total PSS of a process tree, sampled every ``interval`` seconds while
    in the ``with`` block.  PSS shares each page among the processes mapping it, so a
    sum over forty Postfix processes counts their shared libraries once (a sum of RSS
    counts them forty times)."""

    def __init__(self, roots: list[int], interval: float = 0.25) -> None:
        self.roots, self.interval = roots, interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while True:
            self.peak = max(self.peak, tree_pss(self.roots))
            if self._stop.wait(self.interval):
                return

    def __enter__(self) -> MemoryPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


def tree_pss(roots: list[int]) -> int:
    total = 0
    for pid in tree_pids(roots):
        try:
            rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
        except OSError:
            continue
        m = re.search(r"^Pss:\s+(\d+) kB", rollup, re.M)
        total += int(m.group(1)) * 1024 if m else 0
    return total


def tree_peak_rss(roots: list[int]) -> int:
    """Bytes: the sum of every live process's RSS high-water mark (VmHWM).  The peaks
    of different processes need not coincide, so this is an upper bound."""
    total = 0
    for pid in tree_pids(roots):
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        m = re.search(r"^VmHWM:\s+(\d+) kB", status, re.M)
        total += int(m.group(1)) * 1024 if m else 0
    return total
