"""Quota checks per second on each store backend, printed as a table.

    python -m bench.quota [--seconds 3] [--concurrency 16]

A "check" is what one RCPT costs on the submission path: one atomic
check-and-charge of every rate limit of the account and its customer (8 counters),
held, and later committed with the message.  A private redis-server is started on
loopback for the Redis row; the SQLite row uses a file in a temporary folder.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from gateway.config.quota import CustomerQuotas, QuotaSettings
from gateway.metering import Metering
from gateway.rules.quota import account_quota
from gateway.store.base import Store
from gateway.store.redis import RedisStore
from gateway.store.sqlite import SQLiteStore
from tests.support.redis_server import RedisServer


async def measure(store: Store, seconds: float, concurrency: int, accounts: int = 50) -> tuple[int, float]:
    cust = CustomerQuotas.model_validate({"customer": {"messages_per_hour": 10**9, "recipients_per_day": 10**9}})
    big = {"messages_per_hour": 10**9, "messages_per_day": 10**9, "recipients_per_hour": 10**9,
           "recipients_per_day": 10**9, "recipient_domains_per_hour": 10**9,
           "recipients_per_message": 10**9}
    from gateway.config.quota import QuotaLimits

    gw = QuotaLimits.model_validate(big)
    accts = [account_quota(f"user{i}@acme.example", "acme", gw, cust, None) for i in range(accounts)]
    m = Metering(store, QuotaSettings.model_validate({"compromise": {"enabled": False}}))
    done = 0
    deadline = time.perf_counter() + seconds
    now = time.time()

    async def worker(w: int) -> None:
        nonlocal done
        i = 0
        while time.perf_counter() < deadline:
            a = accts[(w + i) % len(accts)]
            tx = m.begin(f"w{w}.{i}")
            d = await m.check_recipient(a, tx, f"d{i % 20}.example", now + i * 1e-3)
            assert d.accept, d
            await m.finish(a, tx, True, now + i * 1e-3)
            done += 1
            i += 1

    start = time.perf_counter()
    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    return done, time.perf_counter() - start


async def raw_checks(store: Store, seconds: float, concurrency: int) -> tuple[int, float]:
    """Only the atomic check-and-charge, no commit or series: the floor of a RCPT."""
    from gateway.rules.quota import AccountQuota, Limits, recipient_charges

    a = AccountQuota("raw@acme.example", "acme", Limits(messages_per_hour=10**9, recipients_per_hour=10**9))
    done = 0
    deadline = time.perf_counter() + seconds
    now = time.time()

    async def worker(w: int) -> None:
        nonlocal done
        i = 0
        while time.perf_counter() < deadline:
            r = await store.charge(recipient_charges(a, "d.example", True, f"m{w}.{i}", f"r{w}.{i}"),
                                   now + i * 1e-3)
            assert r.accepted
            done += 1
            i += 1

    start = time.perf_counter()
    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    return done, time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--concurrency", type=int, default=16)
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as d:
        server = RedisServer().start()
        try:
            for name, make in (("sqlite", lambda: SQLiteStore(Path(d) / "bench.db")),
                               ("redis", lambda: RedisStore(server.url, prefix="bench:"))):
                for what, fn in (("check-and-charge", raw_checks), ("RCPT+commit (metering)", measure)):
                    async def run(fn=fn, make=make):
                        store = make()
                        try:
                            return await fn(store, args.seconds, args.concurrency)
                        finally:
                            await store.close()

                    n, secs = asyncio.run(run())
                    rows.append((name, what, n, n / secs))
        finally:
            server.stop()
    print(f"{'backend':<8} {'operation':<26} {'count':>8} {'per second':>12}")
    for name, what, n, rate in rows:
        print(f"{name:<8} {what:<26} {n:>8} {rate:>12.0f}")


if __name__ == "__main__":
    main()
