"""Who may log in: the one interface every account source implements.

A source answers, for a login and a password, one of three things:
the password is right (and here is the account: its customer and the sender
addresses it may use), it is wrong (or the login does not exist: the two are
indistinguishable on purpose), or the source cannot tell right now (down, slow):
a temporary failure that becomes ``454 4.7.0``, never a pass and never a ``535``.

Sources are asynchronous.  Slow work (hash verification, network) must not block
the event loop.
"""

from __future__ import annotations

from typing import Protocol

# What a source answers (defined on the ground floor, named here for the sources).
from gateway.values.identity import AuthAnswer, Identity, Outcome

__all__ = ["AccountSource", "AuthAnswer", "Identity", "Outcome"]


class AccountSource(Protocol):
    name: str

    async def authenticate(self, login: str, password: str) -> AuthAnswer:
        """Check a login and password.  Must not raise for a wrong password or a
        missing login; may return TEMPFAIL when the backing store is unavailable."""
        ...

    async def close(self) -> None: ...
