"""rspamd (Debian's rspamd package) as a third, independent DKIM verifier for tests.

Debian 12's Perl Mail::DKIM cannot verify ed25519-sha256 and its opendkim-testmsg
fails on every message (``dkim_chunk(): Syntax error``), so Ed25519 signatures get
their independent check here: a private rspamd on a free loopback port, its DNS
pointed at the test's NSD, asked with ``rspamc symbols``.  rspamd's DKIM module
reports R_DKIM_ALLOW / R_DKIM_REJECT / R_DKIM_TEMPFAIL / R_DKIM_PERMFAIL and, in
DKIM_TRACE, one ``domain:result`` per signature (``+`` pass, ``-`` fail).

Starting rspamd takes seconds (it compiles its Lua rules), so use one per module.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import re
import shutil
import signal
import subprocess
import textwrap
import time
from pathlib import Path

from tests.support.authdns import free_port

RSPAMD = shutil.which("rspamd") or "/usr/bin/rspamd"
RSPAMC = shutil.which("rspamc") or "/usr/bin/rspamc"
START_TIMEOUT = 120.0  # loading the stock rules is slow on a busy 2-core machine


class RspamdVerifier:
    def __init__(self, tmpdir: Path, dns_port: int):
        self.dir = Path(tmpdir)
        self.dns_port = dns_port
        self.port = free_port()
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> RspamdVerifier:
        d = self.dir
        (d / "local").mkdir(parents=True, exist_ok=True)
        # A tiny public-suffix list: compiling the full one is most of the start-up.
        (d / "tld.dat").write_text("com\norg\nnet\nexample\ntest\n")
        (d / "rspamd.conf").write_text(textwrap.dedent(f"""\
            .include "$CONFDIR/common.conf"
            options {{
                # Not the stock options.inc: its dns block would win over ours
                # and send queries to the system resolver instead of the test's NSD.
                pidfile = "$RUNDIR/rspamd.pid";
                filters = "dkim";
                url_tld = "{d}/tld.dat";
                dns {{
                    nameserver = ["127.0.0.1:{self.dns_port}"];
                    timeout = 1s;
                    retransmits = 2;
                }}
            }}
            logging {{
                type = "file";
                filename = "$LOGDIR/rspamd.log";
                level = "error";
            }}
            worker "normal" {{
                bind_socket = "127.0.0.1:{self.port}";
                .include "$CONFDIR/worker-normal.inc"
                count = 1;
            }}
            """))
        variables = [f"--var={k}={d}" for k in ("RUNDIR", "LOGDIR", "DBDIR")]
        self._log = open(d / "rspamd.out", "wb")  # closed by stop()
        # rspamd insists on -u/-g; the current user and group change nothing.
        user, group = pwd.getpwuid(os.getuid()).pw_name, grp.getgrgid(os.getgid()).gr_name
        self._proc = subprocess.Popen(
            [RSPAMD, "-f", "-i", "-c", str(d / "rspamd.conf"), *variables,
             f"--var=LOCAL_CONFDIR={d}/local", "-u", user, "-g", group],
            stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        deadline = time.monotonic() + START_TIMEOUT
        probe = b"From: probe@example.com\r\nSubject: probe\r\n\r\nprobe\r\n"
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                self.stop()
                raise RuntimeError(f"rspamd exited: {(d / 'rspamd.out').read_text()[-2000:]}")
            with contextlib.suppress(subprocess.TimeoutExpired):
                if "Symbol:" in self._rspamc(probe, timeout=5):
                    return self
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"rspamd did not answer within {START_TIMEOUT}s")

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)
        if getattr(self, "_log", None) is not None:
            self._log.close()
            self._log = None

    def _rspamc(self, message: bytes, timeout: float = 30) -> str:
        # A remote client address (TEST-NET, never contacted): rspamd's DKIM module skips
        # mail from local addresses, and our Received header names 127.0.0.1.
        run = subprocess.run([RSPAMC, "-h", f"127.0.0.1:{self.port}", "-t", "10",
                              "-i", "192.0.2.10", "symbols"],
                             input=message, capture_output=True, timeout=timeout)
        return run.stdout.decode(errors="replace")

    def dkim_trace(self, message: bytes) -> list[str]:
        """DKIM_TRACE options, one per signature: ``domain:+`` pass, ``domain:-`` fail,
        ``domain:?`` temporary failure, ``domain:~`` permanent error."""
        out = self._rspamc(message)
        m = re.search(r"^Symbol: DKIM_TRACE \([^)]*\)\[(.*)\]$", out, re.M)
        return [o.strip() for o in m.group(1).split(",")] if m else []
