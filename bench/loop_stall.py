"""How long one big prune holds the SQLite store's event loop, with and without its
time budget on the loop, printed as a table.

    python -m bench.loop_stall [--messages 2000 20000] [--rounds 3]

An account sends ``--messages`` messages in a day, its five counters charged for
each (gateway/rules/quota.py's recipient_charges, as bench/quota.py builds them),
and comes back a day later: its first charge prunes the day's rows.  The store
runs that write on the event loop when the write lock is free (gateway/store/
sqlite.py).  A ticker on the loop (every millisecond) measures the loop's worst
gap while the charge runs, and the charge's own time, in two stores in the same
run:

    budget     the store as shipped: a batch on the loop past _LOOP_BUDGET is
               rolled back and run by the store's thread
    no budget  the same store with the budget out of reach: the reference, what
               the loop waited before the budget

The garbage collector is off while the charge runs: a full collection of the
process's heap stalls the loop whichever thread allocates.  The log is not
checkpointed during the bench: a checkpoint that completed while the account was
away would send its charge to the store's thread for the log's fresh start
(gateway/store/wal_index.py), in both stores, and hide what the budget does.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.quota import _accounts
from gateway.rules.quota import recipient_charges
from gateway.store import sqlite as sqlite_store
from gateway.store import wal_checkpoint

T0 = 1_800_000_000.0
DAY = 86400.0


async def _stall(path: Path, messages: int) -> tuple[float, float]:
    """(the loop's worst gap, the charge's time) in seconds."""
    store = sqlite_store.SQLiteStore(str(path))
    account = _accounts(1, aggregate=False)[0]
    try:
        for start in range(0, messages, 100):
            await asyncio.gather(*(
                store.charge(recipient_charges(account, f"d{i % 50}.example", True, None, None),
                             T0 + i * (DAY / 2) / messages)
                for i in range(start, min(messages, start + 100))))
        gaps: list[float] = []

        async def tick() -> None:
            last = time.monotonic()
            while True:
                await asyncio.sleep(0.001)
                gaps.append(time.monotonic() - last)
                last = time.monotonic()

        ticker = asyncio.ensure_future(tick())
        await asyncio.sleep(0.05)
        gaps.clear()
        gc.disable()
        try:
            started = time.monotonic()
            found = await store.charge(recipient_charges(account, "x.example", True, None, None),
                                       T0 + 2 * DAY)
            took = time.monotonic() - started
        finally:
            gc.enable()
        await asyncio.sleep(0.005)
        ticker.cancel()
        assert found.accepted and found.used[0] == 0, found  # every row of the day pruned
        return max(gaps), took
    finally:
        await store.close()


def _measure(messages: int, budget: float) -> tuple[float, float]:
    shipped = sqlite_store._LOOP_BUDGET
    sqlite_store._LOOP_BUDGET = budget
    folder = Path(tempfile.mkdtemp(prefix="portcullis-stall-"))
    try:
        return asyncio.run(_stall(folder / "state.db", messages))
    finally:
        sqlite_store._LOOP_BUDGET = shipped
        shutil.rmtree(folder, ignore_errors=True)


def main() -> int:
    wal_checkpoint.CHECKPOINT_BYTES = 1 << 40  # never reached: see the docstring
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, nargs="+", default=[2000, 20000])
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    rows = []
    for messages in args.messages:
        with_budget: list[tuple[float, float]] = []
        without: list[tuple[float, float]] = []
        for _ in range(args.rounds):  # interleaved: the two stores meet the same machine
            with_budget.append(_measure(messages, sqlite_store._LOOP_BUDGET))
            without.append(_measure(messages, 1e9))
        rows.append((messages, with_budget, without))
    print(f"The first charge of an account back after a day, its day's rows pruned; "
          f"median of {args.rounds} round(s); loop budget {sqlite_store._LOOP_BUDGET * 1000:g} ms\n")
    print(f"{'messages':>9}  {'worst gap, budget':>18}  {'no budget':>10}  {'ratio':>6}  "
          f"{'charge, budget':>15}  {'no budget':>10}")
    for messages, with_budget, without in rows:
        gap = statistics.median(g for g, _ in with_budget)
        gap_ref = statistics.median(g for g, _ in without)
        took = statistics.median(t for _, t in with_budget)
        took_ref = statistics.median(t for _, t in without)
        print(f"{messages:>9}  {gap * 1000:>15.1f} ms  {gap_ref * 1000:>7.1f} ms  {gap / gap_ref:>6.2f}  "
              f"{took * 1000:>12.1f} ms  {took_ref * 1000:>7.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
