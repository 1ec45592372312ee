"""``portcullis audit scan RANGE...``: every host and port of the named ranges, audited.

Each (host, port) is one job: a TCP connect with a short deadline, and when something
answers, the relay battery (relay ports) or the proxy methods (proxy ports), under one
overall deadline.  Jobs run on a bounded pool of workers; a global rate caps how many
jobs start per second, and one host never has two jobs at once nor more than its own
rate.  Each finished job is one JSON line, written and flushed as it finishes, so a
scan that is stopped can be resumed: the jobs already in the file are skipped.

Only the addresses in the ranges are contacted; proxies are only asked to reach the
auditor's listener, relays only to mail the prove domain.
"""

from __future__ import annotations

import asyncio
import csv
import io
import ipaddress
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from gateway.audit import records
from gateway.audit.listener import AuditListener
from gateway.audit.proxy import audit_proxy
from gateway.audit.relay import DEFAULT_THIRD_PARTY, audit_relay
from gateway.audit.relay_proof import prove_relay

IMPLICIT_TLS_PORTS = (465,)  # RFC 8314 §3.3: TLS from the first byte


@dataclass(frozen=True, slots=True)
class Job:
    host: str
    port: int
    kind: str  # "relay" or "proxy"


@dataclass(frozen=True)
class ScanPlan:
    hosts: tuple[str, ...]
    relay_ports: tuple[int, ...]
    proxy_ports: tuple[int, ...]

    def jobs(self) -> list[Job]:
        # Port by port across all hosts: one host's jobs are spread over the whole scan.
        ports = [(p, "relay") for p in self.relay_ports] + [(p, "proxy") for p in self.proxy_ports]
        return [Job(h, p, kind) for p, kind in ports for h in self.hosts]


@dataclass(frozen=True)
class ScanSettings:
    concurrency: int = 32
    rate: float = 20.0  # jobs started per second, over the whole scan
    host_rate: float = 1.0  # jobs started per second on any one host
    connect_timeout: float = 3.0
    reply_timeout: float = 10.0
    job_deadline: float = 120.0  # one host and port, everything included
    grace: float = 2.0  # proxy tests: how long to wait for a late arrival
    helo: str = "localhost"
    target_domain: str | None = None
    third_party_domain: str = DEFAULT_THIRD_PARTY
    prove: bool = False  # relays: send a tagged message to third_party_domain
    prove_wait: float = 60.0


@dataclass(frozen=True)
class Estimate:
    jobs: int
    if_silent: float  # seconds when nothing answers (every connect times out)
    if_all_answer: float  # seconds when everything answers and takes its whole deadline


def estimate(plan: ScanPlan, settings: ScanSettings, skipped: int = 0) -> Estimate:
    jobs = max(0, len(plan.jobs()) - skipped)
    by_rate = jobs / settings.rate
    hosts = max(1, len(plan.hosts))
    by_host = math.ceil(jobs / hosts) / settings.host_rate
    waves = math.ceil(jobs / settings.concurrency)
    return Estimate(
        jobs,
        max(by_rate, by_host, waves * settings.connect_timeout),
        max(by_rate, by_host, waves * (settings.connect_timeout + settings.job_deadline)),
    )


def describe_plan(plan: ScanPlan, settings: ScanSettings, skipped: int = 0) -> str:
    """The dry run: what would be probed and how long it would take."""
    e = estimate(plan, settings, skipped)
    hosts = plan.hosts
    shown = ", ".join(hosts[:3]) + (f", ... {hosts[-1]}" if len(hosts) > 4 else
                                    "".join(f", {h}" for h in hosts[3:]))
    lines = [
        f"would probe {len(hosts)} addresses: {shown or 'none'}",
        f"relay ports: {_ports(plan.relay_ports)}   proxy ports: {_ports(plan.proxy_ports)}",
        f"{e.jobs} host:port pairs" + (f" ({skipped} already done, skipped)" if skipped else ""),
        f"at most {settings.concurrency} at once, {settings.rate:g} new per second, "
        f"{settings.host_rate:g} per second on one host",
        f"time: about {_duration(e.if_silent)} if nothing answers, "
        f"up to {_duration(e.if_all_answer)} if everything answers and is slow",
    ]
    return "\n".join(lines) + "\n"


def _ports(ports: tuple[int, ...]) -> str:
    return ",".join(map(str, ports)) or "none"


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}min"
    return f"{seconds / 3600:.1f}h"


# --- resuming ------------------------------------------------------------------------

def read_records(path: Path) -> list[dict]:
    """The records of an earlier run; a torn last line (the scan was killed) is dropped."""
    if not path.exists():
        return []
    found = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and "host" in record and "port" in record:
            found.append(record)
    return found


def _ends_torn(path: Path) -> bool:
    """A run killed mid-line leaves a last line without its line break."""
    if not path.exists() or path.stat().st_size == 0:
        return False
    with path.open("rb") as f:
        f.seek(-1, 2)
        return f.read(1) != b"\n"


def done_jobs(found: list[dict]) -> set[tuple[str, int]]:
    return {(r["host"], r["port"]) for r in found}


# --- pacing ----------------------------------------------------------------------------

class _Pacer:
    """Global and per-host start rates; one job per host at a time."""

    def __init__(self, rate: float, host_rate: float):
        self.interval, self.host_interval = 1 / rate, 1 / host_rate
        self.next_start = 0.0
        self.host_next: dict[str, float] = {}
        self.host_locks: dict[str, asyncio.Lock] = {}
        self.lock = asyncio.Lock()

    def host_lock(self, host: str) -> asyncio.Lock:
        return self.host_locks.setdefault(host, asyncio.Lock())

    async def wait_turn(self, host: str) -> None:
        loop = asyncio.get_running_loop()
        async with self.lock:  # the global slot is taken in order
            now = loop.time()
            start = max(now, self.next_start)
            self.next_start = start + self.interval
        await asyncio.sleep(max(0.0, start - now))
        host_wait = self.host_next.get(host, 0.0) - loop.time()
        if host_wait > 0:
            await asyncio.sleep(host_wait)
        self.host_next[host] = loop.time() + self.host_interval


# --- running ---------------------------------------------------------------------------

@dataclass
class ScanRun:
    records: list[dict] = field(default_factory=list)  # this run's, in finishing order
    skipped: int = 0


async def _answers(host: str, port: int, within: float) -> str:
    """'' when something accepts a TCP connection, else why not."""
    try:
        async with asyncio.timeout(within):
            _, writer = await asyncio.open_connection(host, port)
    except TimeoutError:
        return f"no answer within {within:g}s"
    except OSError as exc:
        return exc.strerror or str(exc)
    writer.close()
    return ""


async def audit_job(job: Job, settings: ScanSettings, listener: AuditListener | None,
                    reach: tuple[str, int] | None) -> dict:
    when = records.now_iso()
    silent = await _answers(job.host, job.port, settings.connect_timeout)
    if silent:
        return records.silent_record(job.host, job.port, job.kind, silent, when)
    try:
        async with asyncio.timeout(settings.job_deadline):
            if job.kind == "proxy":
                if listener is None:
                    raise ValueError("proxy tests need the audit listener")
                audit = await audit_proxy(job.host, job.port, listener, reach=reach,
                                          reply_timeout=settings.reply_timeout,
                                          grace=settings.grace)
                return records.proxy_record(audit, when)
            tls = job.port in IMPLICIT_TLS_PORTS
            relay = await audit_relay(
                job.host, job.port, helo=settings.helo, target_domain=settings.target_domain,
                third_party_domain=settings.third_party_domain, implicit_tls=tls,
                reply_timeout=settings.reply_timeout, deadline=settings.job_deadline,
            )
            if settings.prove and listener is not None and relay.is_open:
                relay = await prove_relay(relay, listener, helo=settings.helo, implicit_tls=tls,
                                          reply_timeout=settings.reply_timeout,
                                          wait=settings.prove_wait)
            return records.relay_record(relay, when)
    except TimeoutError:
        record = records.silent_record(job.host, job.port, job.kind, "", when)
        return {**record, "status": records.ERROR,
                "error": f"stopped after {settings.job_deadline:g}s"}


async def run_scan(
    plan: ScanPlan,
    settings: ScanSettings,
    out: Path,
    *,
    listener: AuditListener | None = None,
    reach: tuple[str, int] | None = None,
    progress: Callable[[dict], None] | None = None,
) -> ScanRun:
    """Run every job not already in ``out`` (JSON Lines, appended as each finishes)."""
    # Reading an earlier run's file may take a while: not on the loop.
    done = done_jobs(await asyncio.to_thread(read_records, out))
    pending = [j for j in plan.jobs() if (j.host, j.port) not in done]
    run = ScanRun(skipped=len(plan.jobs()) - len(pending))
    queue = iter(pending)
    pacer = _Pacer(settings.rate, settings.host_rate)
    torn = await asyncio.to_thread(_ends_torn, out)
    with out.open("a", encoding="utf-8") as sink:
        if torn:  # a run killed mid-line: end that line, or the next record joins it
            sink.write("\n")

        async def worker() -> None:
            for job in queue:  # one shared iterator: each job is taken once
                async with pacer.host_lock(job.host):
                    await pacer.wait_turn(job.host)
                    record = await audit_job(job, settings, listener, reach)
                sink.write(json.dumps(record, ensure_ascii=False) + "\n")
                sink.flush()
                run.records.append(record)
                if progress is not None:
                    progress(record)

        await asyncio.gather(*(worker() for _ in range(min(settings.concurrency, len(pending)))))
    return run


# --- the summary and the CSV ---------------------------------------------------------------

CSV_FIELDS = ("host", "port", "kind", "status", "software", "open", "proven", "error")


def summary_rows(found: list[dict]) -> list[dict]:
    """What answered, sorted by address and port (the silent ones are only counted)."""
    return sorted((r for r in found if r["status"] != records.NO_ANSWER),
                  key=lambda r: (_sort_key(r["host"]), r["port"]))


def _sort_key(host: str) -> tuple:
    try:
        address = ipaddress.ip_address(host)
        return (address.version, int(address))
    except ValueError:
        return (9, host)


def format_summary(found: list[dict]) -> str:
    rows = [("host", "port", "kind", "status", "software", "open tests")]
    for r in summary_rows(found):
        opened = ", ".join(r.get("open") or []) or r.get("error", "")
        if r.get("proven"):
            opened = f"PROVEN ({len(r['proven'])}): " + opened
        rows.append((r["host"], str(r["port"]), r["kind"], r["status"], r.get("software", ""),
                     opened[:70]))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    counts = {s: sum(1 for r in found if r["status"] == s)
              for s in (records.OPEN, records.CLOSED, records.ERROR, records.NO_ANSWER)}
    lines += ["", f"{len(found)} host:port pairs: {counts[records.OPEN]} open, "
              f"{counts[records.CLOSED]} closed, {counts[records.ERROR]} errors, "
              f"{counts[records.NO_ANSWER]} did not answer"]
    return "\n".join(lines) + "\n"


def format_csv(found: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for r in sorted(found, key=lambda r: (_sort_key(r["host"]), r["port"])):
        proven = r.get("proven")
        writer.writerow({
            "host": r["host"], "port": r["port"], "kind": r["kind"], "status": r["status"],
            "software": r.get("software", ""), "open": ";".join(r.get("open") or []),
            "proven": "" if proven is None else ";".join(proven), "error": r.get("error", ""),
        })
    return buffer.getvalue()
