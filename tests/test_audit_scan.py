"""`portcullis audit scan`: a loopback range with a mix of real servers (tinyproxy, Squid,
Dante, two Postfix), JSON Lines as it goes, CSV and summary at the end, a resumed scan
that skips what was done, the per-host letter, and nothing outside the range touched."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import socketserver
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from gateway.audit import report, scan
from gateway.audit.listener import AuditListener
from gateway.audit.targets import hosts_in, parse_ports, parse_ranges
from tests.support.ports import free_port
from tests.support.postfix import PostfixInstance, postfix_available
from tests.support.proxies import DANTED, SQUID, TINYPROXY, Dante, Squid, TinyProxy, available

pytestmark = pytest.mark.skipif(
    not (postfix_available() and all(available(b) for b in (TINYPROXY, SQUID, DANTED))),
    reason="needs postfix, tinyproxy, squid and danted from Debian, run as root",
)

RANGES = ["127.0.0.2/31", "127.0.0.4/31", "127.0.0.6/31"]  # .2 to .7
OUTSIDE = "127.0.0.8"
TARGET = "target.example"


class _Counting(socketserver.BaseRequestHandler):
    def handle(self):
        self.server.hits.append(self.client_address)


class Trap:
    """A listener outside the range on every port the scan uses: it must hear nothing."""

    def __init__(self, ports):
        self.servers = []
        for port in ports:
            server = socketserver.ThreadingTCPServer((OUTSIDE, port), _Counting)
            server.hits = []
            threading.Thread(target=server.serve_forever, daemon=True).start()
            self.servers.append(server)

    @property
    def hits(self):
        return [hit for s in self.servers for hit in s.hits]

    def close(self):
        for s in self.servers:
            s.shutdown()
            s.server_close()


@pytest.fixture(scope="module")
def lab():
    relay_port = free_port()
    proxy_ports = (free_port(), free_port(), free_port())
    postfix_extra = {"smtpd_error_sleep_time": "0", "smtpd_soft_error_limit": "100",
                     "smtpd_hard_error_limit": "100",
                     "smtpd_relay_restrictions": "permit_mynetworks, reject_unauth_destination"}
    started = []
    try:
        for server in (
            TinyProxy("127.0.0.2", proxy_ports[0], open=True),
            Squid("127.0.0.3", proxy_ports[1], open=False),
            Dante("127.0.0.4", proxy_ports[2], open=True),
            PostfixInstance(relay_port, "[127.0.0.1]:9", relay_domains=[TARGET], address="127.0.0.5",
                            extra={**postfix_extra, "mynetworks": "127.0.0.0/8"}),
            PostfixInstance(relay_port, "[127.0.0.1]:9", relay_domains=[TARGET], address="127.0.0.6",
                            extra={**postfix_extra, "mynetworks": "192.0.2.0/24"}),
        ):
            started.append(server.start())
        trap = Trap((relay_port, *proxy_ports))
        started.append(trap)
        yield {"relay_port": relay_port, "proxy_ports": proxy_ports, "trap": trap}
    finally:
        for server in reversed(started):
            server.stop() if hasattr(server, "stop") else server.close()


def plan_for(lab) -> scan.ScanPlan:
    return scan.ScanPlan(tuple(hosts_in(parse_ranges(RANGES))), (lab["relay_port"],),
                         lab["proxy_ports"])


SETTINGS = scan.ScanSettings(concurrency=8, rate=500, host_rate=100, connect_timeout=1,
                             reply_timeout=1.5, job_deadline=30, grace=0.3, helo="audit.test",
                             target_domain=TARGET)


def status_of(found, host, port):
    return next(r for r in found if r["host"] == host and r["port"] == port)


def test_scan_of_a_loopback_range_finds_each_open_server_and_writes_lines_csv_and_summary(lab, tmp_path):
    out, csv_path = tmp_path / "scan.jsonl", tmp_path / "scan.csv"
    tiny, squid, dante = lab["proxy_ports"]
    relay = lab["relay_port"]
    listen = f"127.0.0.1:{free_port()}"
    done = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "audit", "scan", *RANGES,
         "--relay-ports", str(relay), "--proxy-ports", f"{tiny},{squid},{dante}",
         "--listen", listen, "--out", str(out), "--csv", str(csv_path),
         "--concurrency", "8", "--rate", "500", "--host-rate", "100", "--connect-timeout", "1",
         "--timeout", "1.5", "--grace", "0.3", "--helo", "audit.test", "--target-domain", TARGET],
        capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stdout + done.stderr  # something is open

    lines = out.read_text().splitlines()
    found = [json.loads(line) for line in lines]
    assert len(found) == 6 * 4 and len({(r["host"], r["port"]) for r in found}) == 24
    assert {r["host"] for r in found} == {f"127.0.0.{i}" for i in range(2, 8)}

    tp = status_of(found, "127.0.0.2", tiny)
    assert tp["status"] == "open" and tp["software"] == "tinyproxy"
    assert set(tp["open"]) == {"http-connect", "http-post", "http-get"}
    connect = next(f for f in tp["findings"] if f["test"] == "http-connect")
    assert connect["evidence"][0].startswith("C: CONNECT 127.0.0.1:")
    assert any("EHLO pcaudit" in line for line in connect["listener_saw"])

    sq = status_of(found, "127.0.0.3", squid)
    assert sq["status"] == "closed" and sq["software"] == "Squid" and sq["open"] == []

    socks = status_of(found, "127.0.0.4", dante)
    assert socks["status"] == "open" and set(socks["open"]) == {"socks4", "socks5"}

    open_relay = status_of(found, "127.0.0.5", relay)
    assert open_relay["status"] == "open" and open_relay["software"] == "Postfix"
    assert "third-party sender to third party" in open_relay["open"]
    closed_relay = status_of(found, "127.0.0.6", relay)
    assert closed_relay["status"] == "closed" and closed_relay["open"] == []

    silent = [r for r in found if r["status"] == "no answer"]
    assert len(silent) == 24 - 5
    assert status_of(found, "127.0.0.7", relay)["status"] == "no answer"

    # Only the named range: the trap at 127.0.0.8, on every port scanned, heard nothing.
    assert lab["trap"].hits == []

    rows = list(csv.DictReader(io.StringIO(csv_path.read_text())))
    assert len(rows) == 24 and list(rows[0]) == list(scan.CSV_FIELDS)
    by_key = {(r["host"], int(r["port"])): r for r in rows}
    assert by_key[("127.0.0.4", dante)]["open"] == "socks4;socks5"
    assert by_key[("127.0.0.6", relay)]["status"] == "closed"

    summary = done.stdout
    assert "24 host:port pairs: 3 open, 2 closed, 0 errors, 19 did not answer" in summary
    assert any(line.split()[:4] == ["127.0.0.5", str(relay), "relay", "open"]
               for line in summary.splitlines())
    assert "127.0.0.7" not in summary  # the silent ones are only counted


@pytest.mark.asyncio
async def test_a_resumed_scan_skips_what_was_done(lab, tmp_path):
    out = tmp_path / "scan.jsonl"
    plan = plan_for(lab)
    async with AuditListener("127.0.0.1", 0) as listener:
        first = await scan.run_scan(plan, SETTINGS, out, listener=listener)
    assert first.skipped == 0 and len(first.records) == 24
    # The scan is stopped after ten results, in the middle of writing the eleventh.
    lines = out.read_text().splitlines()
    out.write_text("\n".join(lines[:10]) + "\n" + lines[10][: len(lines[10]) // 2])
    kept = {(r["host"], r["port"]) for r in map(json.loads, lines[:10])}
    async with AuditListener("127.0.0.1", 0) as listener:
        second = await scan.run_scan(plan, SETTINGS, out, listener=listener)
    assert second.skipped == 10
    redone = {(r["host"], r["port"]) for r in second.records}
    assert len(redone) == 14 and not (redone & kept)
    found = scan.read_records(out)
    assert {(r["host"], r["port"]) for r in found} == {(j.host, j.port) for j in plan.jobs()}
    assert len(found) == 24  # the torn line is dropped, nothing is counted twice
    # A third run has nothing left to do.
    third = await scan.run_scan(plan, SETTINGS, out)
    assert third.skipped == 24 and third.records == []


def test_the_report_tells_each_customer_what_is_open_and_how_to_close_it(lab, tmp_path):
    out = tmp_path / "scan.jsonl"

    async def run():
        async with AuditListener("127.0.0.1", 0) as listener:
            await scan.run_scan(plan_for(lab), SETTINGS, out, listener=listener)

    asyncio.run(run())
    found = scan.read_records(out)
    assert report.hosts_with_findings(found) == ["127.0.0.2", "127.0.0.4", "127.0.0.5"]
    letter = report.format_host_report("127.0.0.2", found)
    assert f"port {lab['proxy_ports'][0]}: an open proxy, run by tinyproxy" in letter
    assert "C: CONNECT 127.0.0.1:" in letter and "Our own server then received" in letter
    assert "tinyproxy: In /etc/tinyproxy/tinyproxy.conf" in letter
    assert "Squid:" not in letter  # the software is known: only its advice
    relay_letter = report.format_host_report("127.0.0.5", found, markdown=True)
    assert relay_letter.startswith("# Security check of 127.0.0.5")
    assert "an open mail relay, run by Postfix" in relay_letter
    assert "smtpd_relay_restrictions" in relay_letter
    assert "C: RCPT TO:<relaytest@third-party.example>" in relay_letter
    # Dante does not name itself: the letter gives the advice for every common proxy.
    socks_letter = report.format_host_report("127.0.0.4", found)
    assert all(f"- {name}:" in socks_letter for name in ("Squid", "tinyproxy", "Dante"))
    assert "Nothing open" in report.format_host_report("127.0.0.6", found)

    letters = tmp_path / "letters"
    done = subprocess.run([sys.executable, "-m", "gateway.cli", "audit", "report", str(out),
                           "--dir", str(letters)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in letters.iterdir()) == ["127.0.0.2.txt", "127.0.0.4.txt",
                                                         "127.0.0.5.txt"]


def test_dry_run_prints_the_plan_and_touches_nothing(lab, tmp_path):
    out = tmp_path / "scan.jsonl"
    done = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "audit", "scan", "127.0.0.8/32", "127.0.0.2/31",
         "--relay-ports", str(lab["relay_port"]), "--listen", "127.0.0.1:1", "--out", str(out),
         "--dry-run"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "would probe 3 addresses: 127.0.0.8, 127.0.0.2, 127.0.0.3" in done.stdout
    assert "21 host:port pairs" in done.stdout  # 3 addresses x (1 relay + 6 proxy ports)
    assert "time: about" in done.stdout
    assert lab["trap"].hits == [] and not out.exists()


# --- the plan, as data ------------------------------------------------------------------

def test_ranges_ports_and_exclusions():
    hosts = hosts_in(parse_ranges(["192.0.2.0/30", "192.0.2.1"]), parse_ranges(["192.0.2.2/32"]))
    assert hosts == ["192.0.2.1"]  # network, broadcast and the excluded one left out, no repeats
    assert hosts_in(parse_ranges(["192.0.2.4/31"])) == ["192.0.2.4", "192.0.2.5"]
    assert parse_ports("25,465,587") == (25, 465, 587)
    assert parse_ports("8000-8002,8000") == (8000, 8001, 8002)
    assert parse_ports("none") == ()


@pytest.mark.parametrize("bad", ["192.0.2.1/24", "10.0.0.0/8", "not-an-address"])
def test_ranges_that_are_typos_or_too_wide_are_refused(bad):
    with pytest.raises(ValueError):
        hosts_in(parse_ranges([bad]))


@pytest.mark.parametrize("bad", ["0", "65536", "25,x", "30-20"])
def test_bad_port_lists_are_refused(bad):
    with pytest.raises(ValueError):
        parse_ports(bad)


def test_estimate_is_bounded_by_the_rates_and_the_timeouts():
    plan = scan.ScanPlan(tuple(f"192.0.2.{i}" for i in range(1, 101)), (25,), (8080,))
    settings = scan.ScanSettings(concurrency=10, rate=2, host_rate=1, connect_timeout=3,
                                 job_deadline=60)
    e = scan.estimate(plan, settings)
    assert e.jobs == 200
    assert e.if_silent == 200 / 2  # the global rate is the bound here
    assert e.if_all_answer == 20 * (3 + 60)  # 20 waves of 10, each up to its deadline
    assert scan.estimate(plan, settings, skipped=150).jobs == 50
    fast = scan.ScanSettings(concurrency=10, rate=1000, host_rate=1000, connect_timeout=3)
    assert scan.estimate(plan, fast).if_silent == 20 * 3  # now the connect timeouts are


def test_cli_refuses_a_range_with_host_bits_in_one_line(tmp_path):
    done = subprocess.run([sys.executable, "-m", "gateway.cli", "audit", "scan", "192.0.2.1/24",
                           "--proxy-ports", "none", "--out", str(tmp_path / "x.jsonl")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    assert "192.0.2.1/24" in done.stderr and not Path(tmp_path / "x.jsonl").exists()
