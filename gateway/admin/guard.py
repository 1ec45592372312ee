"""Who is calling the admin listener: the client address, refusals per address
(rate-limited), and the console's sessions with their CSRF tokens.

Kept in the memory of the one process that serves the admin listener (serve.py
runs it in the first worker only), so a restart logs everyone out: on purpose.
"""

from __future__ import annotations

import hmac
import secrets
from collections import deque
from dataclasses import dataclass

from gateway.admin.tokens import Caller

WINDOW = 60.0
_MAX_ADDRESSES = 10_000
_MAX_SESSIONS = 1000


class Refusals:
    """Refused attempts (no token, a wrong token, a read-only token changing
    something, a bad CSRF token) per client address over the last minute."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._seen: dict[str, deque[float]] = {}

    def _recent(self, client: str, now: float) -> deque[float]:
        times = self._seen.get(client)
        if times is None:
            if len(self._seen) >= _MAX_ADDRESSES:
                self._seen.clear()  # a flood of addresses: start over, not grow
            times = self._seen[client] = deque()
        while times and times[0] <= now - WINDOW:
            times.popleft()
        return times

    def blocked_for(self, client: str, now: float) -> float:
        """Seconds until this client may try again (0: it may now)."""
        times = self._recent(client, now)
        return times[0] + WINDOW - now if len(times) >= self.limit else 0.0

    def add(self, client: str, now: float) -> None:
        self._recent(client, now).append(now)


@dataclass(frozen=True, slots=True)
class Session:
    id: str
    caller: Caller
    csrf: str
    expires: float


class Sessions:
    def __init__(self, lifetime: float) -> None:
        self.lifetime = lifetime
        self._by_id: dict[str, Session] = {}

    def open(self, caller: Caller, now: float) -> Session:
        self._by_id = {k: s for k, s in self._by_id.items() if s.expires > now}
        if len(self._by_id) >= _MAX_SESSIONS:
            oldest = min(self._by_id.values(), key=lambda s: s.expires)
            del self._by_id[oldest.id]
        session = Session(secrets.token_urlsafe(32), caller, secrets.token_urlsafe(32),
                          now + self.lifetime)
        self._by_id[session.id] = session
        return session

    def get(self, session_id: str | None, now: float) -> Session | None:
        session = self._by_id.get(session_id or "")
        if session is None:
            return None
        if session.expires <= now:
            del self._by_id[session.id]
            return None
        return session

    def close(self, session_id: str) -> None:
        self._by_id.pop(session_id, None)

    @staticmethod
    def csrf_ok(session: Session, sent: str | None) -> bool:
        return sent is not None and hmac.compare_digest(session.csrf.encode(), sent.encode())
