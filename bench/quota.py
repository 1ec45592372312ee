"""What metering costs per message on each store backend, printed as a table.

    python -m bench.quota [--seconds 3] [--concurrency 20] [--rounds 1] [--baseline CHECKOUT]

Three operations, each against a fresh store (SQLite in a temporary folder, a
private redis-server on loopback):

    check-and-charge   one atomic check-and-charge of the rate limits a RCPT touches
                       (the floor of a RCPT), nothing else
    RCPT+commit        one RCPT's metering and its commit after DATA, compromise off;
                       the customer sets two aggregate limits (messages per hour,
                       recipients per day)
    message            what a submitted message costs with the defaults (as
                       bench/submission.py's gateway rows): the suspension check
                       (and the session's slot, taken when the task starts, as at
                       AUTH, renewed when the gateway renews it) and the
                       check-and-hold of every limit at RCPT, the commit, the series
                       and the compromise facts after DATA; 20 accounts of one
                       customer that sets no aggregate limit
    message, 2 processes
                       the same from two processes sharing the store, half the
                       tasks and half the accounts each: what ``--workers auto``
                       costs on two cores (SQLite: two connections taking turns at
                       one file's write lock)

For each: operations per second with ``--concurrency`` tasks, and the CPU per
operation: this process (the event loop and SQLite's thread) plus redis-server's,
and redis-server's alone with the commands the scripts ran there per operation
(what one Redis shared by every gateway spends: the cluster's capacity,
docs/operations.md).
``--baseline CHECKOUT`` runs the same measurements with another checkout's
``gateway`` package (e.g. a git worktree of an older commit) in the same run,
rows interleaved, and adds the ratios.  The bench shares the machine's cores
with redis-server: compare rows of one run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import redis

HERE = Path(__file__).resolve().parent.parent
# A child measuring another checkout puts that checkout first (see --baseline).
sys.path.insert(0, os.environ.get("PORTCULLIS_BENCH_CODE") or str(HERE))

from gateway.config.quota import CustomerQuotas, QuotaLimits, QuotaSettings  # noqa: E402
from gateway.metering import Metering  # noqa: E402
from gateway.rules.quota import AccountQuota, Limits, account_quota, recipient_charges  # noqa: E402
from gateway.store.base import Store  # noqa: E402
from gateway.store.redis import RedisStore  # noqa: E402
from gateway.store.sqlite import SQLiteStore  # noqa: E402
from tests.support.redis_server import RedisServer  # noqa: E402

BIG = 10**9
OPERATIONS = ("check-and-charge", "RCPT+commit", "message", "message, 2 processes")


def _accounts(n: int, aggregate: bool = True) -> list[AccountQuota]:
    """``n`` accounts of one customer, every limit out of reach; ``aggregate``: the
    customer sets two aggregate limits of its own (counted only when set)."""
    cust = CustomerQuotas.model_validate(
        {"customer": {"messages_per_hour": BIG, "recipients_per_day": BIG}} if aggregate else {})
    gw = QuotaLimits.model_validate({k: BIG for k in (
        "messages_per_hour", "messages_per_day", "recipients_per_hour", "recipients_per_day",
        "recipient_domains_per_hour", "recipients_per_message")})
    return [account_quota(f"user{i:02d}@acme.example", "acme", gw, cust, None) for i in range(n)]


async def _drive(seconds: float, concurrency: int, one) -> int:
    done = 0
    deadline = time.perf_counter() + seconds

    async def worker(w: int) -> None:
        nonlocal done
        i = 0
        while time.perf_counter() < deadline:
            await one(w, i)
            done += 1
            i += 1

    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    return done


def one_operation(name: str, store: Store, now: float):
    """The coroutine function one operation runs, given (task, iteration)."""
    if name == "check-and-charge":
        raw = AccountQuota("raw@acme.example", "acme", Limits(messages_per_hour=BIG, recipients_per_hour=BIG))

        async def charge(w: int, i: int) -> None:
            r = await store.charge(recipient_charges(raw, "d.example", True, f"m{w}.{i}", f"r{w}.{i}"),
                                   now + i * 1e-3)
            assert r.accepted
        return charge
    accts = _accounts(20)
    if name == "RCPT+commit":
        m = Metering(store, QuotaSettings.model_validate({"compromise": {"enabled": False}}))

        async def rcpt_commit(w: int, i: int) -> None:
            a, t = accts[(w + i) % len(accts)], now + i * 1e-3
            tx = m.begin(f"w{w}.{i}")
            d = await m.check_recipient(a, tx, f"d{i % 20}.example", t)
            assert d.accept, d
            await m.finish(a, tx, True, t)
        return rcpt_commit
    # Compromise detection on, its thresholds out of reach, and no customer aggregate
    # limit: as bench/submission.py's gateway rows.
    accts = _accounts(20, aggregate=False)
    full = Metering(store, QuotaSettings.model_validate(
        {"compromise": {"ceiling_recipients_per_hour": BIG, "spike_minimum": BIG}}))

    # A checkout from before the suspension check moved into the first RCPT's round
    # trip (--baseline) still asks at MAIL, in a round trip of its own.
    asks_at_mail = hasattr(full, "check_mail")

    async def message(w: int, i: int) -> None:
        a, t = accts[w % len(accts)], now + i * 1e-3
        if asks_at_mail:
            decision = await full.check_mail(a, 5120, t, f"lease{w}")  # type: ignore[attr-defined]
            assert decision.accept, decision
            tx = full.begin(f"w{w}.{i}")
        else:
            if i == 0:  # each task is a session: its slot taken once, at AUTH
                assert (await full.open_session(a, f"lease{w}", t)).accept
            tx = full.begin(f"w{w}.{i}", f"lease{w}")
        d = await full.check_recipient(a, tx, "dest.example", t)
        assert d.accept, d
        await full.finish(a, tx, True, t)
    return message


def _cpu(pid: int | None = None) -> float:
    if pid is None:
        return time.process_time()
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def redis_commands(client: redis.Redis) -> int:
    """The commands scripts ran in Redis since its last CONFIG RESETSTAT (INFO
    commandstats, less the scripts themselves and the bench's own commands)."""
    return sum(v["calls"] for name, v in client.info("commandstats").items()
               if name.split("_", 1)[1].split("|")[0] not in ("evalsha", "config", "info", "hello", "script"))


def _one_process(path: str, url: str | None, first: int, tasks: int, seconds: float,
                 start: Any, results: Any) -> None:
    """One of the two processes of "message, 2 processes": warm up, wait for the
    other, then meter messages of accounts ``first`` .. ``first + tasks - 1``."""
    async def run() -> tuple[int, float]:
        store: Store = SQLiteStore(path) if url is None else RedisStore(url, prefix="bench:")
        try:
            one = one_operation("message", store, time.time())

            async def mine(w: int, i: int) -> None:
                await one(first + w, i)
            await _drive(min(0.5, seconds / 4), tasks, mine)
            start.wait()
            ours = _cpu()
            n = await _drive(seconds, tasks, mine)
            return n, _cpu() - ours
        finally:
            await store.close()

    results.put(asyncio.run(run()))


def _measure_two(backend: str, seconds: float, concurrency: int) -> dict:
    """The "message, 2 processes" row: the processes' CPU and redis-server's."""
    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory() as d:
        server = RedisServer().start() if backend == "redis" else None
        try:
            url = server.url if server is not None else None
            start, results = ctx.Barrier(3), ctx.Queue()
            half = concurrency // 2
            procs = [ctx.Process(target=_one_process, args=(str(Path(d) / "bench.db"), url, first, tasks,
                                                            seconds, start, results))
                     for first, tasks in ((0, half), (half, concurrency - half))]
            for proc in procs:
                proc.start()
            pid = server.proc.pid if server is not None and server.proc is not None else None
            client = redis.Redis.from_url(server.url) if server is not None else None
            start.wait(timeout=60)
            if client is not None:
                client.config_resetstat()
            theirs, began = (_cpu(pid) if pid else 0.0), time.perf_counter()
            done = [results.get(timeout=seconds + 60) for _ in procs]
            wall = time.perf_counter() - began
            theirs = (_cpu(pid) if pid else 0.0) - theirs
            commands = redis_commands(client) if client is not None else 0
            if client is not None:
                client.close()
            for proc in procs:
                proc.join(timeout=30)
        finally:
            if server is not None:
                server.stop()
    n = sum(k for k, _ in done)
    return {"backend": backend, "operation": "message, 2 processes", "rate": n / wall,
            "cpu": (sum(c for _, c in done) + theirs) / n, "redis_cpu": theirs / n, "commands": commands / n}


def measure(backend: str, operation: str, seconds: float, concurrency: int) -> dict:
    """One row from a fresh store: operations per second and CPU per operation."""
    if operation == "message, 2 processes":
        return _measure_two(backend, seconds, concurrency)
    with tempfile.TemporaryDirectory() as d:
        server = RedisServer().start() if backend == "redis" else None
        try:
            async def run() -> tuple[int, float, float, float, int]:
                store: Store = (SQLiteStore(Path(d) / "bench.db") if server is None
                                else RedisStore(server.url, prefix="bench:"))
                try:
                    one = one_operation(operation, store, time.time())
                    await _drive(min(0.5, seconds / 4), concurrency, one)  # warm: scripts, caches
                    pid = server.proc.pid if server is not None and server.proc is not None else None
                    client = redis.Redis.from_url(server.url) if server is not None else None
                    if client is not None:
                        client.config_resetstat()
                    ours, theirs = _cpu(), (_cpu(pid) if pid else 0.0)
                    start = time.perf_counter()
                    n = await _drive(seconds, concurrency, one)
                    wall = time.perf_counter() - start
                    theirs = (_cpu(pid) if pid else 0.0) - theirs
                    commands = 0
                    if client is not None:
                        commands = redis_commands(client)
                        client.close()
                    return n, wall, _cpu() - ours + theirs, theirs, commands
                finally:
                    await store.close()

            n, wall, cpu, redis_cpu, commands = asyncio.run(run())
        finally:
            if server is not None:
                server.stop()
    return {"backend": backend, "operation": operation, "rate": n / wall, "cpu": cpu / n,
            "redis_cpu": redis_cpu / n, "commands": commands / n}


def _child(code: Path, args: argparse.Namespace, backend: str, operation: str) -> dict:
    """The row measured by a fresh interpreter with ``code``'s gateway package first."""
    env = dict(os.environ, PORTCULLIS_BENCH_CODE=str(code))
    out = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--row", backend, operation,
                          "--seconds", str(args.seconds), "--concurrency", str(args.concurrency)],
                         env=env, capture_output=True, text=True, cwd=str(code))
    if out.returncode:
        raise SystemExit(f"{code}: {backend} {operation} failed:\n{out.stderr}")
    return json.loads(out.stdout.splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--concurrency", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--baseline", type=Path, metavar="CHECKOUT")
    ap.add_argument("--row", nargs=2, metavar=("BACKEND", "OPERATION"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.row:
        print(json.dumps(measure(args.row[0], args.row[1], args.seconds, args.concurrency)))
        return
    codes = [("this", HERE)] + ([("baseline", args.baseline.resolve())] if args.baseline else [])
    seen: dict[tuple[str, str, str], list[dict]] = {}
    for _ in range(args.rounds):
        for backend in ("sqlite", "redis"):
            for operation in OPERATIONS:
                for label, code in codes:
                    row = _child(code, args, backend, operation)
                    seen.setdefault((backend, operation, label), []).append(row)
                    print(f"  {label} {backend} {operation}: {row['rate']:.0f}/s", file=sys.stderr, flush=True)

    def med(rows: list[dict], key: str) -> float:
        return statistics.median(r[key] for r in rows)

    print(f"\nMetering per operation, {args.concurrency} tasks, {args.seconds:g} s a row, "
          f"median of {args.rounds} round(s); CPU: this process + redis-server\n")
    head = (f"{'backend':<8} {'operation':<21} {'per second':>11} {'CPU/op':>9} {'redis-server':>12} "
            f"{'commands':>8}")
    if args.baseline:
        head += f" {'baseline/s':>11} {'CPU/op':>9} {'commands':>8} {'rate ×':>7} {'CPU ×':>7}"
    print(head)
    for backend in ("sqlite", "redis"):
        for operation in OPERATIONS:
            this = seen[(backend, operation, "this")]
            server = (f"{1e6 * med(this, 'redis_cpu'):>9.0f} us {med(this, 'commands'):>8.0f}"
                      if backend == "redis" else f"{'':>21}")
            line = (f"{backend:<8} {operation:<21} {med(this, 'rate'):>11.0f} "
                    f"{1e6 * med(this, 'cpu'):>6.0f} us {server}")
            if args.baseline:
                base = seen[(backend, operation, "baseline")]
                commands = f"{med(base, 'commands'):>8.0f}" if backend == "redis" else f"{'':>8}"
                line += (f" {med(base, 'rate'):>11.0f} {1e6 * med(base, 'cpu'):>6.0f} us {commands} "
                         f"{med(this, 'rate') / med(base, 'rate'):>7.2f} "
                         f"{med(this, 'cpu') / med(base, 'cpu'):>7.2f}")
            print(line)
    if args.baseline:
        print(f"\nbaseline: {args.baseline} (same run); rate ×: this / baseline, CPU ×: this / baseline")


if __name__ == "__main__":
    main()
