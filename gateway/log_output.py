"""The log's way out: records are written by a thread of their own, in batches.

``logging.StreamHandler`` formats each record and writes it to stderr in the
thread that logged it: for the gateway, the event loop.  Each transaction's line
cost the loop its formatting and a write(2) (3% of the event loop's samples on
the submission path, `python -m bench.profile_submission`), and a log reader that
falls behind (a container runtime, journald under load, a full disk behind a
pipe) fills the pipe's 64 KiB and then blocks that write: every session of the
worker stopped with it, for as long as the reader lagged.

:class:`BatchedLogHandler` only queues the record on the loop (its text fixed
at once if it has arguments, so a later change to them cannot alter it).  Its
writer thread, started in each process on the first record (after a fork the
child starts its own), gathers what arrives for :data:`BATCH_SECONDS` and
formats and writes it, :data:`WRITE_LINES` lines a write: lines reach the log
within about that time, a warning or an error at once.  When the writer is
blocked, the queue holds up to :data:`QUEUE_LIMIT` records (``limits.log_backlog``);
beyond that a record is dropped and counted (the metric
``portcullis_log_lines_dropped_total``), and once writing works again one line
says how many were lost.  Mail never waits for the log (docs/operations.md, "Logs").

``flush()`` (``logging.shutdown()`` at exit; a worker before it exits) waits
for the writer up to :data:`FLUSH_SECONDS`: a blocked log never keeps a
process from stopping.
"""

from __future__ import annotations

import collections
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import TextIO

# How long the writer gathers records before it writes them.
BATCH_SECONDS = 0.05
# Records waiting to be written, at most; more are dropped (and counted) while
# the writer is blocked.  About 3 MB of transaction lines, 10 s of a busy worker.
QUEUE_LIMIT = 10_000
# Lines formatted and written at a time: the writer holds the GIL while it
# formats, and lets it go at each write.
WRITE_LINES = 64
# How long flush() waits for the writer.
FLUSH_SECONDS = 5.0


class BatchedLogHandler(logging.Handler):
    """A StreamHandler whose writing happens in a thread of its own (see the module)."""

    def __init__(self, stream: TextIO | None = None, *, batch_seconds: float = BATCH_SECONDS,
                 queue_limit: int = QUEUE_LIMIT) -> None:
        super().__init__()
        self.stream = stream if stream is not None else sys.stderr
        self.batch_seconds = batch_seconds
        self.queue_limit = queue_limit
        # Called once for each record dropped, in the thread that logged it.
        self.on_drop: Callable[[], None] | None = None
        self._fresh()
        os.register_at_fork(after_in_child=self._fresh)

    def _fresh(self) -> None:
        """Nothing queued, no writer: at start, and in a forked child (its parent
        writes what was queued when it forked)."""
        self._pending: collections.deque[logging.LogRecord] = collections.deque()
        self._wake = threading.Event()  # something is queued
        self._urgent = threading.Event()  # write it now (a warning, flush, close)
        self._progress = threading.Condition(threading.Lock())
        self._queued = 0  # records queued so far (this process)
        self._written = 0  # records the writer has taken off the queue and written
        self._dropped = 0  # records dropped since the last line that said so
        # Guards _dropped: the writer must not take the handler's own lock, which
        # logging.shutdown() holds while it flushes and closes.
        self._drop_lock = threading.Lock()
        self._closing = False
        self._thread: threading.Thread | None = None

    # --- the logging thread's side -------------------------------------------------
    def emit(self, record: logging.LogRecord) -> None:
        # Handler.handle holds self.lock: emit runs one at a time.
        if record.args:
            # Fixed now, as logging.handlers.QueueHandler does: the arguments may change.
            record.msg, record.args = record.getMessage(), None
        if len(self._pending) >= self.queue_limit or self._closing:
            with self._drop_lock:
                self._dropped += 1
            if self.on_drop is not None:
                self.on_drop()
            return
        self._pending.append(record)
        self._queued += 1
        if self._thread is None:
            self._start()
        if record.levelno >= logging.WARNING:
            self._urgent.set()
        if not self._wake.is_set():
            self._wake.set()

    def _start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="log-writer", daemon=True)
        self._thread.start()

    def flush(self) -> None:
        """Wait until what is queued now is written (up to FLUSH_SECONDS)."""
        target, writer = self._queued, self._thread
        if writer is None or not writer.is_alive() or threading.current_thread() is writer:
            return
        self._urgent.set()
        self._wake.set()
        with self._progress:
            self._progress.wait_for(lambda: self._written >= target, FLUSH_SECONDS)

    def close(self) -> None:
        self.flush()
        self._closing = True
        writer = self._thread
        if writer is not None and writer.is_alive() and threading.current_thread() is not writer:
            self._urgent.set()
            self._wake.set()
            writer.join(1.0)
        super().close()

    # --- the writer's side --------------------------------------------------------------
    def _run(self) -> None:
        pending = self._pending
        while True:
            self._wake.wait()
            # Gather a batch, unless a warning, a flush or close wants it out now.
            self._urgent.wait(self.batch_seconds)
            # Cleared before the queue is emptied: a record queued from here on sets
            # _wake again, so none waits for the next one.
            self._wake.clear()
            self._urgent.clear()
            while pending:
                lines: list[str] = []
                taken = 0
                while pending and taken < WRITE_LINES:
                    record = pending.popleft()
                    taken += 1
                    try:
                        lines.append(self.format(record) + "\n")
                    except Exception:
                        self.handleError(record)
                self._write("".join(lines))
                with self._progress:
                    self._written += taken
                    self._progress.notify_all()
            with self._drop_lock:
                dropped, self._dropped = self._dropped, 0
            if dropped:
                self._write(self.format(logging.makeLogRecord({
                    "name": "portcullis.log", "levelno": logging.WARNING, "levelname": "WARNING",
                    "msg": f"{dropped} log lines were dropped: the log output was blocked and "
                           f"{self.queue_limit} lines were waiting", "created": time.time()})) + "\n")
            if self._closing:
                return

    def _write(self, text: str) -> None:
        if not text:
            return
        try:
            self.stream.write(text)
            self.stream.flush()
        except Exception:
            # As StreamHandler: a log that cannot be written must not stop anything.
            self.handleError(logging.makeLogRecord({"msg": "log output failed"}))


def watch_backlog(limit: int, on_drop: Callable[[], None]) -> None:
    """The root logger's batched handlers hold up to ``limit`` records and call
    ``on_drop`` for each they drop (limits.log_backlog, the dropped-lines metric)."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, BatchedLogHandler):
            handler.queue_limit = limit
            handler.on_drop = on_drop


def flush_logs() -> None:
    """What every handler of the root logger has queued, written (up to their
    FLUSH_SECONDS each): before a process ends with os._exit()."""
    for handler in logging.getLogger().handlers:
        handler.flush()
