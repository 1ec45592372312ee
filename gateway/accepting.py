"""Workers take connections in turn from one listening socket they share.

With one SO_REUSEPORT socket per worker, the kernel hashes each new connection to
a worker, whatever that worker already carries.  Mail clients keep their sessions
open, so a few dozen sessions spread unevenly: in bench/submission.py, 20
sessions landed 15 on one worker and 5 on the other, and the busy one set the
pace while the other idled (issue 16: `--workers auto` barely beat one worker).

So the workers share one socket per address, and each takes a connection only
while it carries no more sessions than the least-loaded worker: each worker
publishes its count of open sessions in a table of shared memory (one slot per
worker, made by the supervisor before it forks), and one that is ahead steps
aside.  All are woken for a new connection; the one behind takes it.  A worker
that stepped aside looks again after ``STEP_ASIDE``; if it is still ahead and a
connection has been waiting at each of ``FORCE_AFTER`` looks in a row, it takes
every connection waiting, so a stalled worker delays clients by about
``STEP_ASIDE * FORCE_AFTER``, never strands them.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import mmap
import socket
import ssl
from collections.abc import Callable, Sequence
from typing import Any

log = logging.getLogger("portcullis.accepting")

# How long a worker that is ahead leaves new connections to the others, and after how
# many such pauses in a row with connections still waiting it takes them anyway.
STEP_ASIDE = 0.002
FORCE_AFTER = 5
# At most this many connections taken in one go when forcing (asyncio's backlog loop).
FORCED_BATCH = 64
# A slot whose worker is gone (restarting): never the least loaded.
GONE = 2**62
# Errors accept() gives under resource exhaustion: pause as asyncio does, then go on.
_EXHAUSTED = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
EXHAUSTED_PAUSE = 1.0


def takes_next(mine: int, loads: Sequence[int]) -> bool:
    """May the worker carrying ``mine`` sessions take the next connection, the
    workers carrying ``loads`` (every slot, its own included)?  Only if none carries
    fewer: ties take it together, and whoever accepts first has it."""
    return mine <= min(loads)


class LoadTable:
    """Open sessions per worker, in memory shared by the supervisor's forked workers."""

    def __init__(self, slots: int):
        # Anonymous and shared: the workers fork after it exists, and see each other's writes.
        self._memory = mmap.mmap(-1, 8 * slots)
        self._loads = memoryview(self._memory).cast("q")
        for slot in range(slots):
            self._loads[slot] = GONE  # until its worker has started

    def publish(self, slot: int, sessions: int) -> None:
        self._loads[slot] = sessions

    def gone(self, slot: int) -> None:
        """The slot's worker exited: the others stop waiting for it to catch up."""
        self._loads[slot] = GONE

    def loads(self) -> list[int]:
        return self._loads.tolist()


class Share:
    """This worker's place in the table: what its listeners need to take turns."""

    def __init__(self, table: LoadTable, slot: int):
        self.table, self.slot = table, slot

    def publish(self, sessions: int) -> None:
        self.table.publish(self.slot, sessions)

    def takes_next(self, sessions: int) -> bool:
        return takes_next(sessions, self.table.loads())


class TurnTakingServer:
    """Accepts from a listening socket shared with the other workers, in turn (above).

    Duck-types what SMTPListeners uses of asyncio.Server: close(), wait_closed(),
    is_serving()."""

    def __init__(self, sock: socket.socket, factory: Callable[[], asyncio.Protocol], *,
                 share: Share, sessions: Callable[[], int],
                 ssl_context: ssl.SSLContext | None = None, ssl_handshake_timeout: float | None = None):
        self._sock = sock
        self._factory = factory
        self._share = share
        self._sessions = sessions
        self._ssl = ssl_context
        self._handshake_timeout = ssl_handshake_timeout
        self._loop = asyncio.get_running_loop()
        self._reading = False
        self._serving = False
        self._later: asyncio.TimerHandle | None = None
        # Looks in a row at which this worker was ahead with a connection waiting.
        self._passed = 0
        self._starting: set[asyncio.Task[Any]] = set()

    def start(self) -> None:
        self._serving = True
        self._watch()

    def _watch(self) -> None:
        if self._serving and not self._reading:
            self._loop.add_reader(self._sock.fileno(), self._ready)
            self._reading = True

    def _unwatch(self) -> None:
        if self._reading:
            self._loop.remove_reader(self._sock.fileno())
            self._reading = False

    def _ready(self) -> None:
        if self._share.takes_next(self._sessions()):
            self._passed = 0
            self._accept()
            return
        self._passed += 1
        if self._passed > FORCE_AFTER:
            # Left waiting at every look: the others are not taking them; this one does.
            self._passed = 0
            for _ in range(FORCED_BATCH):
                if not self._accept(drain=True):
                    break
            return
        # Another worker carries fewer: leave this one to it, look again soon.
        self._unwatch()
        self._later = self._loop.call_later(STEP_ASIDE, self._resume)

    def _accept(self, drain: bool = False) -> bool:
        """Take one waiting connection.  False when accepting must pause, or (with
        ``drain``) when none was waiting."""
        try:
            conn, _peer = self._sock.accept()
        except (BlockingIOError, InterruptedError):
            return not drain  # none waiting: another worker took it
        except ConnectionAbortedError:
            return True  # the client gave up: on to the next
        except OSError as exc:
            if exc.errno in _EXHAUSTED:
                log.error("cannot accept connections (%s); trying again in %.0f s",
                          exc.strerror or exc, EXHAUSTED_PAUSE)
                self._unwatch()
                self._later = self._loop.call_later(EXHAUSTED_PAUSE, self._resume)
                return False
            raise
        conn.setblocking(False)
        task = self._loop.create_task(self._connect(conn))
        self._starting.add(task)
        task.add_done_callback(self._starting.discard)
        return True

    def _resume(self) -> None:
        self._later = None
        self._watch()

    async def _connect(self, conn: socket.socket) -> None:
        made: list[asyncio.Protocol] = []

        def factory() -> asyncio.Protocol:
            made.append(self._factory())
            return made[-1]

        try:
            await self._loop.connect_accepted_socket(
                factory, conn, ssl=self._ssl, ssl_handshake_timeout=self._handshake_timeout)
        except (OSError, TimeoutError) as exc:  # ssl.SSLError is an OSError
            # What asyncio's own server does: a client that failed its TLS handshake
            # or left at once is no error of ours (the transport is closed).  The
            # protocol, never made, hears of it now rather than at its deadline, so
            # this worker's count of open sessions is right at once.
            log.debug("incoming connection dropped before it started: %r", exc)
            conn.close()
            for protocol in made:
                failed = getattr(protocol, "handshake_failed", None)
                if failed is not None:
                    failed()
        except asyncio.CancelledError:
            conn.close()
            raise

    def is_serving(self) -> bool:
        return self._serving

    def close(self) -> None:
        """Stop accepting; connections already taken go on."""
        self._serving = False
        self._unwatch()
        if self._later is not None:
            self._later.cancel()
            self._later = None

    async def wait_closed(self) -> None:
        if self._starting:
            await asyncio.wait(list(self._starting), timeout=5)
