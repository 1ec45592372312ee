"""An authentication cache in front of any account source, as Dovecot's auth cache.

What is kept (never a password, never a stored hash):

* **Successes**, one entry per login: a keyed digest of the password that
  succeeded, the :class:`Identity`, and an expiry (``ttl``).  A later AUTH is
  answered from memory only with the *same* password digest, before expiry.
  A different password always goes to the source; if the source accepts it, it
  replaces the entry, so the old password stops working from the cache at once.
* **Failures**, per (login, password digest), for a short ``negative_ttl``:
  a brute-force loop or a client retrying a stale password is answered from
  memory, and the backend is spared.  A failure for the password held in the
  success entry removes that entry (the source says it is no longer right).
* **Temporary failures are never cached.**

Password changes.  A source that can cheaply tell the current version of a
login's stored credentials implements :class:`Stamped` (``sql`` and ``ldap`` in
compare mode: the hash column/attribute, fingerprinted).  Then every entry
carries that stamp and an entry whose stamp differs from the source's current
one is ignored: a changed password is *never* accepted from the cache, and the
cache saves the expensive part (argon2/bcrypt verification), not the query.
Sources that only answer yes/no (``dovecot``, ``ldap`` bind) cannot tell; there
an old password keeps working until ``ttl`` runs out or the new password is used
once, exactly as with Dovecot's own cache (``auth_cache_ttl``).  Keep ``ttl`` short
for those, or call :meth:`CachedSource.forget` when the ISP changes a password.

The digest is BLAKE2b keyed with a random per-process secret: fast (about a
microsecond), useless to anyone who reads the process memory without the key,
and different on every start.

Bounded: each table is an LRU of at most ``max_entries``.  The clock is
injectable (monotonic seconds) so tests can move time.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from gateway.accounts.source import AccountSource, AuthAnswer, Identity, Outcome

Clock = Callable[[], float]


class SourceUnavailable(Exception):
    """The source cannot answer now (down, slow, refused us): TEMPFAIL."""


@runtime_checkable
class Stamped(Protocol):
    async def stamp(self, login: str) -> str | None:
        """A fingerprint of ``login``'s stored credentials, None when there is no
        such login.  Cheap (one indexed query).  Raises :class:`SourceUnavailable`."""
        ...


@dataclass(slots=True)
class _Success:
    digest: bytes
    identity: Identity
    stamp: str | None
    expires: float


@dataclass(slots=True)
class _Failure:
    stamp: str | None
    expires: float


@dataclass
class CacheStats:
    hits: int = 0
    negative_hits: int = 0
    misses: int = 0


class CachedSource:
    """Wraps an :class:`AccountSource`; the same interface, answers from memory when it may."""

    def __init__(
        self,
        source: AccountSource,
        *,
        ttl: float = 300.0,
        negative_ttl: float = 30.0,
        max_entries: int = 100_000,
        clock: Clock = time.monotonic,
    ):
        self.source = source
        self.name = f"{source.name}+cache"
        self._ttl = ttl
        self._negative_ttl = negative_ttl
        self._max = max_entries
        self._clock = clock
        self._key = os.urandom(32)
        self._ok: OrderedDict[str, _Success] = OrderedDict()
        self._bad: OrderedDict[tuple[str, bytes], _Failure] = OrderedDict()
        # Identical look-ups in flight share one trip to the source.
        self._inflight: dict[tuple[str, bytes], asyncio.Future[AuthAnswer]] = {}
        self._waiters: dict[tuple[str, bytes], int] = {}
        self.stats = CacheStats()

    def _digest(self, login: str, password: str) -> bytes:
        h = hashlib.blake2b(key=self._key, digest_size=32)
        h.update(login.encode("utf-8", "surrogatepass"))
        h.update(b"\0")
        h.update(password.encode("utf-8", "surrogatepass"))
        return h.digest()

    async def authenticate(self, login: str, password: str) -> AuthAnswer:
        digest = self._digest(login, password)
        stamp: str | None = None
        if isinstance(self.source, Stamped):
            try:
                stamp = await self.source.stamp(login)
            except SourceUnavailable:
                return AuthAnswer.tempfail()
        now = self._clock()
        ok = self._ok.get(login)
        if ok is not None and ok.digest == digest and ok.stamp == stamp and now < ok.expires:
            self._ok.move_to_end(login)
            self.stats.hits += 1
            return AuthAnswer(Outcome.OK, ok.identity)
        bad = self._bad.get((login, digest))
        if bad is not None and bad.stamp == stamp and now < bad.expires:
            self.stats.negative_hits += 1
            return AuthAnswer.invalid()
        self.stats.misses += 1
        key = (login, digest)
        pending = self._inflight.get(key)
        if pending is None:
            pending = asyncio.ensure_future(self._ask(login, password, digest, stamp))
            self._inflight[key] = pending
            self._waiters[key] = 0
            pending.add_done_callback(lambda done: self._settled(key, done))
        self._waiters[key] += 1
        try:
            # shield: one caller's AUTH timeout must not cancel the look-up the others wait for.
            return await asyncio.shield(pending)
        except asyncio.CancelledError:
            # ... but when the last one has given up, nobody needs it: a look-up left to
            # run would keep its place in the verifiers' queue after its AUTH had its 454.
            if self._waiters.get(key) == 1 and not pending.done():
                pending.cancel()
            raise
        finally:
            if key in self._waiters:
                self._waiters[key] -= 1

    def known_good(self, login: str, password: str) -> bool:
        """Would this AUTH be answered OK from memory, without a hash check?  Only for
        sources that cannot change a password behind the cache's back (no stamp)."""
        if isinstance(self.source, Stamped):
            return False
        ok = self._ok.get(login)
        return (ok is not None and ok.digest == self._digest(login, password)
                and self._clock() < ok.expires)

    def _settled(self, key: tuple[str, bytes], done: asyncio.Future[AuthAnswer]) -> None:
        self._inflight.pop(key, None)
        self._waiters.pop(key, None)
        if not done.cancelled():
            done.exception()  # retrieved: every waiter may have timed out and gone

    async def _ask(self, login: str, password: str, digest: bytes, stamp: str | None) -> AuthAnswer:
        answer = await self.source.authenticate(login, password)
        now = self._clock()
        if answer.outcome is Outcome.OK and answer.identity is not None:
            self._bad.pop((login, digest), None)
            if self._ttl > 0:
                self._ok[login] = _Success(digest, answer.identity, stamp, now + self._ttl)
                self._ok.move_to_end(login)
                while len(self._ok) > self._max:
                    self._ok.popitem(last=False)
        elif answer.outcome is Outcome.INVALID:
            held = self._ok.get(login)
            if held is not None and held.digest == digest:
                del self._ok[login]  # the source no longer takes this password
            if self._negative_ttl > 0:
                self._bad[(login, digest)] = _Failure(stamp, now + self._negative_ttl)
                self._bad.move_to_end((login, digest))
                while len(self._bad) > self._max:
                    self._bad.popitem(last=False)
        return answer

    def forget(self, login: str) -> None:
        """Drop everything cached for ``login`` (after the ISP changed its password)."""
        self._ok.pop(login, None)
        for key in [k for k in self._bad if k[0] == login]:
            del self._bad[key]

    def clear(self) -> None:
        self._ok.clear()
        self._bad.clear()

    def __len__(self) -> int:
        return len(self._ok) + len(self._bad)

    def replace_directory(self, directory) -> None:
        """Hot reload: customers may have moved, so cached identities are dropped."""
        replace = getattr(self.source, "replace_directory", None)
        if replace is not None:
            replace(directory)
        self.clear()

    async def close(self) -> None:
        await self.source.close()
