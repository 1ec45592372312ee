"""Checkpointing the SQLite store's write-ahead log off the commit path.

SQLite's automatic checkpoint runs inside the COMMIT that pushes the WAL past 1000
pages: that commit copies the log into the database file and syncs it, while
every store call queued behind it waits.  At half the peak submission rate that
put the write batches' p99 at 5-6 ms against 0.2 ms at p50, and each message
makes three store calls (issue 16; with the automatic checkpoint off, the
batches' p99 was 0.7-1.4 ms).

So the store's connection turns the automatic checkpoint off, and this thread,
with a connection of its own, looks at the log's size a few times a second and
checkpoints it PASSIVE once it is past the same 4 MB: PASSIVE never waits
for a writer or a reader, so the store's thread goes on committing meanwhile
(sqlite3 lets go of the GIL while SQLite works).  Another process's checkpointer
at work at the same time answers busy, and this one tries again at its next look.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading

log = logging.getLogger("portcullis.store")

# SQLite's own threshold for its automatic checkpoint, 1000 pages of its default
# 4 KiB, kept in bytes (the state file's pages are smaller: sqlite.PAGE_SIZE).
CHECKPOINT_BYTES = 1000 * 4096
# How often the log's size is looked at.
LOOK_EVERY = 0.1
# After a checkpoint the log is written again from its start; a file grown past
# this under a burst is cut back to it then (PRAGMA journal_size_limit).
WAL_SIZE_LIMIT = 64 * 1024 * 1024


class Checkpointer:
    """A daemon thread checkpointing one SQLite file's WAL while the store is open."""

    def __init__(self, path: str):
        self._path = path
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sqlite-checkpoint", daemon=True)
        self.checkpoints = 0  # for tests: how many ran

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def _run(self) -> None:
        try:
            db = sqlite3.connect(self._path, isolation_level=None, timeout=0)
        except sqlite3.Error as exc:
            log.error("SQLite store %s: cannot open a connection to checkpoint its log: %s",
                      self._path, exc)
            return
        try:
            while not self._stop.wait(LOOK_EVERY):
                try:
                    size = os.stat(self._path + "-wal").st_size
                except OSError:
                    continue  # no log yet (or just removed at another process's close)
                if size < CHECKPOINT_BYTES:
                    continue
                try:
                    db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                    self.checkpoints += 1
                except sqlite3.OperationalError as exc:
                    if "locked" not in str(exc) and "busy" not in str(exc):
                        log.warning("SQLite store %s: checkpoint failed: %s", self._path, exc)
        finally:
            db.close()
