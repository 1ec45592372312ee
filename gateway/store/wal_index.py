"""Whether the next write to a SQLite file will start its write-ahead log afresh.

The writer that finds the whole log checkpointed (every frame copied back into the
database) starts the log over from its first frame.  With ``synchronous = NORMAL``
that writer syncs the log's new header to disk, and if the log had grown past
``journal_size_limit`` it also truncates the file, both inside its COMMIT.  In the
submission path, with write batches on the event loop (gateway/store/sqlite.py),
that was a 96 ms stall of every session of a worker (strace of a one-worker
gateway under bench.submission's load: an fdatasync, then an ftruncate of the log
back to 64 MiB, on the loop's thread).  So before a batch runs on the loop, the
store looks here and, when a fresh start is due, gives the batch to its thread.

It reads two fields of the WAL-index header that every connection to the file
shares in ``<file>-shm`` (https://www.sqlite.org/walformat.html, "The WAL-Index
File Format", in the host's byte order): ``mxFrame``, the last valid frame of the
log, and ``nBackfill``, the last frame checkpointed.  A fresh start is due when
they are equal: the log holds nothing the database lacks.  The fields are read
without SQLite's locks, so the answer is a hint: another process's checkpoint
that completes just after the look lets one batch make the fresh start on the
loop, as every batch did before.

The file is read with ``pread`` on a descriptor of our own that is never closed.
SQLite holds POSIX advisory locks on ``-shm``, and closing *any* descriptor of a
file drops every such lock the process holds on it: a close here let another
process take SQLite's "first connection" lock, reset the file under this one's
mapping, and kill it with SIGBUS (tests/test_store_sqlite_group_commit.py's two
processes, one run in five).  A mapping of our own could fault the same way when
the file shrinks; ``pread`` only reads short.  One descriptor per ``-shm`` file
(per inode: a file made anew gets a new one) for the life of the process.
"""

from __future__ import annotations

import logging
import os
import struct
import threading

log = logging.getLogger("portcullis.store")

# WalIndexHdr.mxFrame (the first copy of the header) and WalCkptInfo.nBackfill.
_U32 = struct.Struct("=I")
_MX_FRAME_AT = 16
_BACKFILL_AT = 96
_READ = _BACKFILL_AT + _U32.size

# "<file>-shm" -> (device, inode, descriptor): never closed (see above).
_OPEN: dict[str, tuple[int, int, int]] = {}
_OPENING = threading.Lock()


class WalIndex:
    """A read-only look at one SQLite file's WAL-index header."""

    def __init__(self, fd: int):
        self._fd = fd

    @classmethod
    def open(cls, path: str) -> WalIndex | None:
        """The look at ``path``'s ``-shm`` file, or None (logged) if it cannot be had:
        every write batch may then make a fresh start of the log on the loop."""
        name = path + "-shm"
        with _OPENING:
            try:
                st = os.stat(name)
                known = _OPEN.get(name)
                if known is None or known[:2] != (st.st_dev, st.st_ino):
                    fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC)
                    opened = os.fstat(fd)
                    _OPEN[name] = (opened.st_dev, opened.st_ino, fd)
                return cls(_OPEN[name][2])
            except OSError as exc:
                log.warning("SQLite store %s: cannot read its WAL index (%s); a write may "
                            "wait for the disk on the event loop when the log starts afresh", path, exc)
                return None

    def fresh_start_due(self) -> bool:
        """Whether the whole log is checkpointed, so the next writer starts it over."""
        try:
            head = os.pread(self._fd, _READ, 0)
        except OSError:
            return False
        if len(head) < _READ:  # a file being made anew: no fresh start to foresee
            return False
        return _U32.unpack_from(head, _MX_FRAME_AT)[0] == _U32.unpack_from(head, _BACKFILL_AT)[0]
