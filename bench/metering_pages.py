"""Which of the SQLite store's tables and indexes a submitted message's metering writes.

    python -m bench.metering_pages [--messages 400] [--warmup 300]

A COMMIT appends every page its transaction changed to the write-ahead log, each
page in two writes (a frame header, then the page), and checksums it: its cost
grows with the pages a message dirties.  So the number of those pages, and in
which B-trees, says where a change of the store's layout would save most.

It meters ``--warmup`` then ``--messages`` messages as bench/quota.py's
"message" operation does (one account, the defaults of bench/submission.py's
gateway rows: quotas and compromise signals), one at a time, with the store's
log checkpointer held back so that the log keeps every frame; the log is
emptied after the warm-up.  Then it reads the log's frame headers (the page
number of each, and which frames end a transaction) and names each page's
B-tree with SQLite's dbstat table.  It prints the pages a message and a
transaction, and the pages a message in each table or index.  A diagnosis,
not a target: measure a change with bench/quota.py and bench/submission.py.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import sqlite3
import struct
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.quota import one_operation
from gateway.store.sqlite import SQLiteStore
from gateway.store.wal_checkpoint import Checkpointer

WAL_HEADER = 32
FRAME_HEADER = 24


async def meter(path: str, warmup: int, messages: int) -> bytes:
    """The log's bytes after ``messages`` metered messages (the warm-up's checkpointed
    away)."""
    store = SQLiteStore(path)
    # Present but never started: the store starts none of its own, and the log
    # keeps every frame written.
    store._checkpointer = Checkpointer(path)
    try:
        op = one_operation("message", store, time.time())
        for i in range(warmup):
            await op(0, i)
        side = sqlite3.connect(path)
        side.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        side.close()
        for i in range(warmup, warmup + messages):
            await op(0, i)
        # Read before close(), which checkpoints the log away.
        return await asyncio.to_thread(Path(path + "-wal").read_bytes)
    finally:
        await store.close()


def frames(log: bytes) -> list[tuple[int, bool]]:
    """(page number, ends a transaction) of each frame (the WAL format, sqlite.org/fileformat)."""
    page_size = struct.unpack(">I", log[8:12])[0]
    out = []
    at = WAL_HEADER
    while at + FRAME_HEADER + page_size <= len(log):
        page, size_after_commit = struct.unpack(">II", log[at:at + 8])
        out.append((page, size_after_commit != 0))
        at += FRAME_HEADER + page_size
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=400)
    parser.add_argument("--warmup", type=int, default=300)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="portcullis-pages-") as tmp:
        path = str(Path(tmp) / "state.db")
        log = asyncio.run(meter(path, args.warmup, args.messages))
        written = frames(log)
        db = sqlite3.connect(path)
        owner = dict(db.execute("SELECT pageno, name FROM dbstat").fetchall())
        db.close()
    commits = sum(1 for _, last in written if last)
    by_tree = collections.Counter(owner.get(page, "(freed since)") for page, _ in written)
    n = args.messages
    print(f"\nMetering {n} messages one at a time (SQLite store, bench/quota.py's \"message\"): "
          f"{len(written)} pages written to the log in {commits} transactions")
    print(f"  {len(written) / n:.1f} pages a message, {len(written) / max(commits, 1):.1f} a "
          f"transaction, two writes each (frame header, page)\n")
    print(f"{'table or index':<28} {'pages a message':>16}")
    for name, count in by_tree.most_common():
        print(f"{name:<28} {count / n:>16.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
