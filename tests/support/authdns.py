"""A private authoritative DNS server (NSD) on loopback, for tests.

Tests that need real DNS answers (SPF records, DKIM public keys, DMARC
policies) start their own NSD on 127.0.0.1 with a free UDP+TCP port, serving
zone text the test gives it.  Nothing runs as root: no chroot, no privilege
drop, and pidfile, config and zone files live in a temporary directory.

Using it from a test module
---------------------------
Load this module as a pytest plugin in the test module (no conftest needed;
importing the fixture names instead works too but trips ruff's F811)::

    from tests.support.authdns import txt_record

    pytest_plugins = ("tests.support.authdns",)

    def test_key_is_found(authdns_factory):
        dns = authdns_factory({
            "example.test": f'''
                sel._domainkey  TXT  {txt_record("v=DKIM1; k=rsa; p=MIIBIjANBg...")}
                @               TXT  "v=spf1 ip4:192.0.2.1 -all"
            ''',
        })
        resolver = Resolver([dns.host], port=dns.port, timeout=2.0)  # gateway.checks.dns
        ...

* Zone text may omit ``$ORIGIN``, ``$TTL``, SOA and NS: they are added when
  missing (see :func:`complete_zone`).  Long TXT values must be split into
  strings of at most 255 octets (``"part1" "part2"``); :func:`txt_record`
  does it for you.
* ``authdns_factory(zones)`` starts a server and stops it at test teardown;
  call it several times for several servers.  ``dns.reload(new_zones)``
  replaces the zones and waits until the new data is served (same port).
* ``dns.stop()`` leaves the port closed: queries get ICMP port unreachable
  (a "server stopped" temperror test).
* ``silent_dns`` is a (host, port) where a UDP socket receives queries and
  never answers, and a TCP listener never replies ("server unresponsive").
* Zone files kept in ``tests/dns/`` load with :func:`zones_from_dir`: every
  ``<zone>.zone`` file there becomes zone ``<zone>``.

Outside pytest, ``AuthDNS`` is a context manager::

    with AuthDNS({"example.test": "@ A 192.0.2.1"}, tmp_path) as dns:
        ...

(PYTEST_DONT_REWRITE: test modules import helpers from here before pytest loads
it as a plugin; nothing here needs assertion rewriting, so pytest need not warn.)
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import dns.message
import dns.query
import dns.rdatatype
import pytest

NSD = shutil.which("nsd") or "/usr/sbin/nsd"
DNS_DIR = Path(__file__).resolve().parent.parent / "dns"
START_TIMEOUT = 10.0  # seconds to wait for NSD to answer after start


def free_port() -> int:
    """A port free on 127.0.0.1 for both UDP and TCP (DNS needs both)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind(("127.0.0.1", 0))
            port = tcp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no free UDP+TCP port on 127.0.0.1")


def txt_record(value: str) -> str:
    """A TXT rdata string: the value split in quoted 255-octet strings."""
    chunks = [value[i : i + 255] for i in range(0, len(value), 255)] or [""]
    return " ".join('"' + c.replace("\\", "\\\\").replace('"', '\\"') + '"' for c in chunks)


def complete_zone(zone: str, text: str) -> str:
    """Zone text with $ORIGIN, $TTL, SOA and NS added when missing."""
    origin = zone.rstrip(".") + "."
    body = textwrap.dedent(text).strip("\n")
    head = []
    if "$ORIGIN" not in body:
        head.append(f"$ORIGIN {origin}")
    if "$TTL" not in body:
        head.append("$TTL 300")
    if " SOA " not in body and "\tSOA\t" not in body:
        head.append(f"@ IN SOA ns.{origin} hostmaster.{origin} 1 3600 600 86400 60")
    if not any(" NS " in line or "\tNS\t" in line for line in body.splitlines()):
        head.append(f"@ IN NS ns.{origin}")
    return "\n".join([*head, body, ""])


def zones_from_dir(directory: Path = DNS_DIR, names: list[str] | None = None) -> dict[str, str]:
    """Zones from ``<zone>.zone`` files (all of them, or only ``names``)."""
    zones = {}
    for path in sorted(directory.glob("*.zone")):
        zone = path.name[: -len(".zone")]
        if names is None or zone in names:
            zones[zone] = path.read_text()
    return zones


class AuthDNS:
    """One NSD process serving ``zones`` on 127.0.0.1:``port`` (UDP and TCP)."""

    def __init__(self, zones: dict[str, str], tmpdir: Path | str, port: int | None = None):
        self.zones = dict(zones)
        self.dir = Path(tmpdir) / f"nsd-{os.getpid()}-{id(self):x}"
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self._proc: subprocess.Popen[bytes] | None = None

    # -- lifecycle -----------------------------------------------------------
    def start(self) -> AuthDNS:
        self._write_files()
        conf = self.dir / "nsd.conf"
        check = subprocess.run(
            ["/usr/sbin/nsd-checkconf", str(conf)], capture_output=True, text=True, timeout=10
        )
        if check.returncode != 0:
            raise RuntimeError(f"nsd.conf rejected: {check.stderr.strip() or check.stdout}")
        log = open(self.dir / "nsd.out", "wb")
        self._log = log
        # -d: stay in the foreground, so the Popen is the server and stop() is a kill.
        self._proc = subprocess.Popen(
            [NSD, "-d", "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            self._wait_ready()
        except Exception:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)
        if getattr(self, "_log", None) is not None:
            self._log.close()
            self._log = None

    def reload(self, zones: dict[str, str]) -> None:
        """Serve ``zones`` instead, on the same port (a restart: simple and certain)."""
        self.stop()
        self.zones = dict(zones)
        deadline = time.monotonic() + START_TIMEOUT
        while True:  # the old sockets may linger a moment after the kill
            try:
                self.start()
                return
            except RuntimeError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    @property
    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def __enter__(self) -> AuthDNS:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- queries, for tests that want to look directly -------------------------
    def query(self, name: str, rdtype: str = "A", *, timeout: float = 2.0) -> dns.message.Message:
        q = dns.message.make_query(name, dns.rdatatype.from_text(rdtype))
        return dns.query.udp(q, self.host, port=self.port, timeout=timeout)

    # -- internals -------------------------------------------------------------
    def _write_files(self) -> None:
        if self.dir.exists():
            shutil.rmtree(self.dir)
        (self.dir / "zones").mkdir(parents=True)
        zone_conf = []
        for zone, text in {**self.zones, **_top_level_zones(self.zones)}.items():
            zone = zone.rstrip(".")
            (self.dir / "zones" / f"{zone}.zone").write_text(complete_zone(zone, text))
            zone_conf.append(f'zone:\n    name: "{zone}"\n    zonefile: "{zone}.zone"\n')
        d = self.dir
        (d / "nsd.conf").write_text(
            textwrap.dedent(f"""\
            server:
                ip-address: {self.host}@{self.port}
                port: {self.port}
                do-ip6: no
                server-count: 1
                username: ""
                chroot: ""
                zonesdir: "{d}/zones"
                database: ""
                zonelistfile: "{d}/zone.list"
                xfrdfile: "{d}/xfrd.state"
                xfrdir: "{d}"
                pidfile: "{d}/nsd.pid"
                cookie-secret-file: "{d}/cookiesecrets.txt"
                logfile: "{d}/nsd.log"
                verbosity: 1
                hide-version: yes
                minimal-responses: no
                refuse-any: no
                reuseport: no
                # No response rate limiting: a test's burst of queries (a corpus of DMARC
                # tree walks) is not an attack, and RRL's dropped answers read as timeouts.
                rrl-ratelimit: 0
                rrl-whitelist-ratelimit: 0
            remote-control:
                control-enable: no
            """)
            + "\n".join(zone_conf)
        )

    def _wait_ready(self) -> None:
        # Ready means: the first zone's SOA is served over UDP and TCP.
        probe = next(iter(self.zones), None)
        deadline = time.monotonic() + START_TIMEOUT
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self._proc is None or self._proc.poll() is not None:
                raise RuntimeError(f"nsd exited: {self._log_text()}")
            if probe is None:
                time.sleep(0.2)
                return
            try:
                q = dns.message.make_query(probe, dns.rdatatype.SOA)
                r = dns.query.udp(q, self.host, port=self.port, timeout=0.2)
                if r.answer:
                    dns.query.tcp(q, self.host, port=self.port, timeout=0.5)
                    return
                last = RuntimeError(f"no SOA for {probe}: rcode {r.rcode()}")
            except Exception as e:  # not up yet: retry until the deadline
                last = e
            time.sleep(0.05)
        raise RuntimeError(f"nsd did not answer within {START_TIMEOUT}s ({last}): {self._log_text()}")

    def _log_text(self) -> str:
        texts = []
        for name in ("nsd.out", "nsd.log"):
            p = self.dir / name
            if p.exists():
                texts.append(p.read_text(errors="replace")[-2000:])
        return " | ".join(t.strip() for t in texts if t.strip())


def _top_level_zones(zones: dict[str, str]) -> dict[str, str]:
    """An empty zone for each top-level domain the zones sit under and no zone serves.

    The DMARC DNS Tree Walk (RFC 9989 §4.10) asks up to ``_dmarc.<tld>``; a recursive
    resolver answers NXDOMAIN there, while NSD would answer REFUSED for a name in no
    zone it serves, which the gateway rightly reads as a DNS failure (temperror).  NSD
    answers each name from the closest zone it serves, so the child zones still win.
    """
    served = {z.rstrip(".").lower() for z in zones}
    tlds = {z.rpartition(".")[2] for z in served if "." in z}
    return {tld: "" for tld in sorted(tlds - served)}


class SilentDNS:
    """A 'nameserver' that never answers: UDP read and dropped, TCP never replied to."""

    def __init__(self) -> None:
        self.host = "127.0.0.1"
        self.port = free_port()
        self._udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._udp.bind((self.host, self.port))
        # Queries pile up in the socket buffer, unread: the client sees a timeout.
        self._tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._tcp.bind((self.host, self.port))
        self._tcp.listen(16)  # connections complete in the backlog but get no reply

    def close(self) -> None:
        self._udp.close()
        self._tcp.close()

    def __enter__(self) -> SilentDNS:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- pytest fixtures -----------------------------------------------------------
@pytest.fixture
def authdns_factory(tmp_path: Path) -> Iterator:
    """Call with {zone: text} to get a running :class:`AuthDNS`; all are stopped at teardown."""
    servers: list[AuthDNS] = []

    def make(zones: dict[str, str]) -> AuthDNS:
        server = AuthDNS(zones, tmp_path / f"dns{len(servers)}")
        servers.append(server)
        return server.start()

    try:
        yield make
    finally:
        for server in servers:
            server.stop()


@pytest.fixture(scope="module")
def authdns_module_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    """Like ``authdns_factory`` but shared by a whole test module (start NSD once)."""
    servers: list[AuthDNS] = []

    def make(zones: dict[str, str]) -> AuthDNS:
        server = AuthDNS(zones, tmp_path_factory.mktemp("authdns"))
        servers.append(server)
        return server.start()

    try:
        yield make
    finally:
        for server in servers:
            server.stop()


@pytest.fixture
def silent_dns() -> Iterator[SilentDNS]:
    """A (host, port) nameserver that never answers, closed at teardown."""
    with SilentDNS() as s:
        yield s


@pytest.fixture
def stopped_dns_port() -> int:
    """A loopback port where no nameserver listens (queries meet port unreachable)."""
    return free_port()
