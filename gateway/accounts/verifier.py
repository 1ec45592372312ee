"""The password verifiers: a bounded number of hash checks at once, a queue in front.

An argon2id check (``m=65536``, the RFC 9106 profile ``portcullis passwd`` writes)
takes 64 MiB and about 0.15 s of CPU.  Run without a bound (one thread per AUTH,
or asyncio's default pool) an AUTH storm of 100 connections held hundreds of MB
at once and stalled every other check behind it.  Here at most ``concurrency``
checks run, each in one of as many threads; the others wait their turn in an
asyncio queue (a semaphore), where waiting costs nothing but time and can be
given up (the AUTH's own deadline cancels it, and the client hears 454 4.7.0).

Peak memory for hashes: ``concurrency`` × 64 MiB per worker process.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import Future, ThreadPoolExecutor

from gateway.accounts import passwords

DEFAULT_CONCURRENCY = 2


class PasswordVerifier:
    def __init__(self, concurrency: int = DEFAULT_CONCURRENCY):
        self.concurrency = concurrency
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="password")
        self._slots: asyncio.Semaphore | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.waiting = 0  # AUTHs queued for a verifier now (for tests and metrics)

    async def verify(self, stored: str | None, password: str) -> bool:
        """:func:`passwords.verify` in a verifier thread, after waiting for a free one."""
        loop = asyncio.get_running_loop()
        if self._slots is None or self._loop is not loop:  # an asyncio.Semaphore serves one loop
            self._slots, self._loop = asyncio.Semaphore(self.concurrency), loop
        slots = self._slots
        self.waiting += 1
        try:
            await slots.acquire()
        finally:
            self.waiting -= 1
        try:
            job: Future[bool] = self._pool.submit(passwords.verify, stored, password)
        except BaseException:
            slots.release()
            raise

        def done(_: Future[bool]) -> None:
            # The slot is free only when the hash is: a caller that stopped waiting
            # (its AUTH timed out) cannot make room for a fifth 64 MiB check.
            try:
                loop.call_soon_threadsafe(slots.release)
            except RuntimeError:  # the loop is closed: nobody waits any more
                pass

        job.add_done_callback(done)
        return await asyncio.wrap_future(job)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
