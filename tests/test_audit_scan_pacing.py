"""The scan's manners: one host's tests are spaced by its rate, the whole scan by the
global rate, and what a server says never reaches the letter as control characters."""

from __future__ import annotations

import asyncio

import pytest

from gateway.audit import report, scan


async def _recording_servers(count: int, host: str = "127.0.0.1"):
    """Servers that note when each connection came and hang up at once."""
    seen: dict[int, list[float]] = {}
    servers = []
    loop = asyncio.get_running_loop()
    for _ in range(count):
        def note(reader, writer, _seen=seen):
            _seen.setdefault(writer.get_extra_info("sockname")[1], []).append(loop.time())
            writer.close()

        server = await asyncio.start_server(note, host, 0)
        servers.append(server)
    return servers, seen


def _first_contacts(seen: dict[int, list[float]]) -> list[float]:
    return sorted(times[0] for times in seen.values())


@pytest.mark.asyncio
async def test_one_host_is_never_tested_faster_than_its_rate(tmp_path):
    servers, seen = await _recording_servers(4)
    ports = tuple(s.sockets[0].getsockname()[1] for s in servers)
    plan = scan.ScanPlan(("127.0.0.1",), ports, ())
    settings = scan.ScanSettings(concurrency=4, rate=1000, host_rate=5, connect_timeout=1,
                                 reply_timeout=1, helo="audit.test")
    try:
        run = await scan.run_scan(plan, settings, tmp_path / "scan.jsonl")
    finally:
        for s in servers:
            s.close()
    assert len(run.records) == 4
    starts = _first_contacts(seen)
    gaps = [b - a for a, b in zip(starts, starts[1:], strict=False)]
    assert len(gaps) == 3 and min(gaps) >= 0.18, gaps  # 1/5 s, less timer slack


@pytest.mark.asyncio
async def test_the_global_rate_spaces_tests_across_hosts(tmp_path):
    servers, seen = [], {}
    for i in (2, 3, 4):
        more, more_seen = await _recording_servers(1, f"127.0.0.{i}")
        servers += more
        seen.update({(i, port): times for port, times in more_seen.items()})
    # Each server is on its own host; scan each host on every server's port.
    ports = tuple(s.sockets[0].getsockname()[1] for s in servers)
    plan = scan.ScanPlan(("127.0.0.2", "127.0.0.3", "127.0.0.4"), ports, ())
    settings = scan.ScanSettings(concurrency=8, rate=4, host_rate=1000, connect_timeout=1,
                                 reply_timeout=1, helo="audit.test")
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        run = await scan.run_scan(plan, settings, tmp_path / "scan.jsonl")
    finally:
        for s in servers:
            s.close()
    assert len(run.records) == 9
    # Nine tests at four per second: the last starts no sooner than 2 s in.
    assert loop.time() - started >= 1.9


def test_the_letter_shows_no_control_characters_from_a_server():
    record = {
        "host": "192.0.2.7", "port": 25, "kind": "relay", "status": "open",
        "time": "2026-12-07T00:00:00+00:00", "software": "",
        "greeting": "220 mx \x1b[2J\x1b]0;owned\x07 ESMTP", "open": ["percent hack"],
        "proven": None, "proofs": [],
        "findings": [{"test": "percent hack", "verdict": "OPEN",
                      "evidence": ["C: MAIL FROM:<>", "S: 250 ok \x1b[31m"]}],
    }
    letter = report.format_host_report("192.0.2.7", [record])
    assert "\x1b" not in letter and "\x07" not in letter
    assert "S: 250 ok ?[31m" in letter
    # The software is unknown: the advice for each common mail server.
    assert all(f"- {name}:" in letter for name in ("Postfix", "Exim", "Sendmail", "Microsoft Exchange"))
