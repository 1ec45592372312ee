"""Who logged in, and what an account source answered, as plain values.

Account sources (gateway/accounts/) make them; the sender rules
(gateway/rules/senders.py) and the SMTP handlers read them.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


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
