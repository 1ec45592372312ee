"""A private rspamd for tests: loopback, free ports, offline, always stopped.

It runs Debian's ``/usr/bin/rspamd`` in the foreground (``-f``) with its stock rules
(``$CONFDIR/common.conf``: actions, groups, scores, the Lua plugins) but our own
top-level file, so nothing touches the system instance:

- ``LOCAL_CONFDIR``, ``DBDIR``, ``RUNDIR`` and ``LOGDIR`` point into a temp dir, so
  ``local.d/`` there is ours; in it every module that needs the network or Redis is
  switched off (RBLs, SURBL, SPF, DKIM, DMARC, ARC, fuzzy, phishing, ASN, ...).
- DNS goes to a closed loopback port, so a look-up some rule still tries fails at
  once instead of leaving the machine.
- ``url_tld`` is a short list of TLDs: compiling the full public suffix list takes
  rspamd about 25 s on a loaded machine; with this one it starts in about a second.
- hyperscan is off by default (its helper compiles regexps in the background and
  competes for CPU with other tests); ``RspamdServer(hyperscan=True)`` for benchmarks.

GTUBE (the spam test string) is a built-in pre-result: rspamd answers
``action: reject`` whatever the configuration.

    from tests.support import rspamd_server as _rspamd
    rspamd = _rspamd.rspamd   # a module-scoped fixture
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.ports import free_port
from tests.support.servers import stop_group

RSPAMD = shutil.which("rspamd") or "/usr/bin/rspamd"

GTUBE = b"XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"

# Modules that look things up over the network or need Redis.
OFFLINE_DISABLED = (
    "antivirus", "arc", "asn", "bimi", "clickhouse", "dcc", "dkim", "dkim_signing", "dmarc",
    "elastic", "emails", "external_services", "fuzzy_check", "greylist", "hfilter",
    "history_redis", "maillist", "metadata_exporter", "metric_exporter", "mx_check", "neural",
    "p0f", "phishing", "ratelimit", "rbl", "replies", "reputation", "rspamd_update", "spamtrap",
    "spf", "surbl", "url_redirector",
)

TLDS = ("com", "org", "net", "edu", "gov", "example", "test", "invalid", "localhost",
        "de", "fr", "nl", "io", "uk", "co.uk", "eu", "info", "biz")

OPTIONS = """\
dns {{ nameserver = ["127.0.0.1:{dead_port}"]; timeout = 0.2s; retransmits = 1; }}
url_tld = "{tld_file}";
control_socket = "$DBDIR/rspamd.sock mode=0600";
disable_hyperscan = {no_hyperscan};
"""

TOP_LEVEL = """\
.include "$CONFDIR/common.conf"
options {{
    pidfile = "$RUNDIR/rspamd.pid";
    .include "$CONFDIR/options.inc"
    # Same key in one UCL object: the first value wins unless the later has priority.
    .include(priority=10) "$LOCAL_CONFDIR/test-options.inc"
}}
logging {{ type = "file"; filename = "$LOGDIR/rspamd.log"; level = "info"; }}
worker "normal" {{
    bind_socket = "127.0.0.1:{normal_port}";
    .include "$CONFDIR/worker-normal.inc"
    count = {workers};
}}
worker "controller" {{
    bind_socket = "127.0.0.1:{controller_port}";
    .include "$CONFDIR/worker-controller.inc"
    count = 1;
}}
"""


def _ping(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=0.5) as resp:
            return resp.status == 200
    except OSError:
        return False


class RspamdServer:
    def __init__(self, workers: int = 1, hyperscan: bool = False) -> None:
        self.workers = workers
        self.hyperscan = hyperscan
        self.port = 0
        self.controller_port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.dir: Path | None = None

    @property
    def url(self) -> str:
        """The normal worker: where /checkv2 lives."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def log(self) -> str:
        path = self.dir / "rspamd.log" if self.dir else None
        return path.read_text(errors="replace") if path and path.exists() else ""

    def _write_config(self) -> Path:
        assert self.dir is not None
        (self.dir / "db").mkdir(exist_ok=True)
        local_d = self.dir / "local.d"
        local_d.mkdir(exist_ok=True)
        for module in OFFLINE_DISABLED:
            (local_d / f"{module}.conf").write_text("enabled = false;\n")
        tld_file = self.dir / "tld.dat"
        tld_file.write_text("\n".join(TLDS) + "\n")
        (self.dir / "test-options.inc").write_text(OPTIONS.format(
            dead_port=free_port(), tld_file=tld_file,
            no_hyperscan="false" if self.hyperscan else "true"))
        conf = self.dir / "rspamd.conf"
        conf.write_text(TOP_LEVEL.format(
            normal_port=self.port, controller_port=self.controller_port, workers=self.workers))
        return conf

    def start(self, timeout: float = 60.0) -> RspamdServer:
        self.dir = Path(tempfile.mkdtemp(prefix="portcullis-rspamd-"))
        for _attempt in range(3):  # another process may take a free port first
            self.port, self.controller_port = free_port(), free_port()
            conf = self._write_config()
            d = self.dir
            self.proc = subprocess.Popen(
                [RSPAMD, "-f", "-u", "root", "-g", "root", "-c", str(conf),
                 "--var", f"LOCAL_CONFDIR={d}", "--var", f"DBDIR={d / 'db'}",
                 "--var", f"RUNDIR={d}", "--var", f"LOGDIR={d}"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                start_new_session=True,  # its workers are our process group: stop them all
            )
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and self.proc.poll() is None:
                if _ping(self.port):
                    return self
                time.sleep(0.05)
            stop_group(self.proc)
        log = self.log[-3000:]
        self.stop()
        raise RuntimeError(f"rspamd did not start on 127.0.0.1:{self.port}\n{log}")

    def stop(self) -> None:
        stop_group(self.proc)
        self.proc = None
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None


@pytest.fixture(scope="module")
def rspamd() -> Iterator[RspamdServer]:
    server = RspamdServer().start()
    try:
        yield server
    finally:
        server.stop()
