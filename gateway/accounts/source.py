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

import enum
from dataclasses import dataclass
from typing import Protocol


class Outcome(enum.Enum):
    OK = "ok"
    INVALID = "invalid"  # wrong password or unknown login: never say which
    TEMPFAIL = "tempfail"  # the source could not answer


@dataclass(frozen=True, slots=True)
class Identity:
    """An authenticated account, as the rules see it."""

    login: str
    customer: str
    # Exact addresses and *@domain patterns (lower-case) this account may send as,
    # as the source knows them; the rules add the customer's YAML aliases.
    senders: frozenset[str]


@dataclass(frozen=True, slots=True)
class AuthAnswer:
    outcome: Outcome
    identity: Identity | None = None

    @classmethod
    def invalid(cls) -> AuthAnswer:
        return cls(Outcome.INVALID)

    @classmethod
    def tempfail(cls) -> AuthAnswer:
        return cls(Outcome.TEMPFAIL)


class AccountSource(Protocol):
    name: str

    async def authenticate(self, login: str, password: str) -> AuthAnswer:
        """Check a login and password.  Must not raise for a wrong password or a
        missing login; may return TEMPFAIL when the backing store is unavailable."""
        ...

    async def close(self) -> None: ...
