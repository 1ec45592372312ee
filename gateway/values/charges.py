"""What a limit, a lockout and a suspension are, as plain values.

The rules (gateway/rules/quota.py, lockout.py, compromise.py) decide with them and
the store (gateway/store/) keeps them; neither needs the other to name them.
Window semantics are the store's: gateway/store/base.py.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any


@dataclass(frozen=True, slots=True)
class Charge:
    """One limit to check and, if every limit of the request fits, to charge.

    ``key`` names the counter and must always be used with the same ``window``.
    With ``member`` set, the limit is on *distinct* members seen in the window
    (distinct recipient domains per hour); ``amount`` is then ignored.
    With ``hold`` set, the charge is a reservation: it counts at once, becomes
    permanent on :meth:`Store.commit` and vanishes on :meth:`Store.release` or when
    its lease runs out (a crashed process leaks nothing for longer than the lease).
    ``limit=None`` counts without ever refusing (shadow mode, the compromise counters).
    """

    key: str
    window: float
    limit: int | None
    amount: int = 1
    member: str | None = None
    hold: str | None = None
    # A name for logs and replies: "messages_per_hour", "customer recipients_per_day"...
    name: str = ""

    def unlimited(self) -> Charge:
        return replace(self, limit=None)


@dataclass(frozen=True, slots=True)
class ChargeResult:
    accepted: bool
    # Usage of each charge's counter before this request, in request order
    # (distinct members for a member charge).
    used: tuple[int, ...]
    # The first charge that did not fit, and when it would (seconds from now);
    # None when it can never fit (amount larger than the limit).
    refused: Charge | None = None
    retry_after: float | None = None


@dataclass(frozen=True, slots=True)
class AttemptReservation:
    """What :meth:`Store.reserve_attempt` found (rules/lockout.py reads it)."""

    accepted: bool
    # Per key: failures in the window, attempts in flight included (this one too
    # when it was accepted).
    counts: tuple[int, ...]
    # Refused: the latest end of a lock on one of the keys ...
    locked_until: float | None = None
    # ... or, for a key that holds its limit, when enough of its entries leave the
    # window for one more attempt.
    full_until: float | None = None


@dataclass(frozen=True, slots=True)
class Suspension:
    login: str
    since: float
    reason: str
    evidence: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Event:
    ts: float
    kind: str  # "suspended", "unsuspended", "lockout", "complaint", ...
    subject: str  # the login or IP address it is about
    data: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class SeriesAdd:
    """Add ``amount`` to the bucket of ``key`` that holds ``now``."""

    key: str
    amount: int
    bucket: int = 3600
    retention: float = 31 * 86400


@dataclass(frozen=True, slots=True)
class SeriesSum:
    """The sum of the buckets of ``key`` that start in [since, until]."""

    key: str
    since: float
    until: float
    bucket: int = 3600


@dataclass(frozen=True, slots=True)
class MessageBegin:
    """A transaction's first step in the store: is ``login`` suspended?  And the
    session's slot ``slot_key`` renewed until now + ``ttl`` (when ``lease_id`` is given,
    as :meth:`Store.acquire_slot` with no limit)."""

    login: str
    slot_key: str
    lease_id: str | None
    ttl: float


@dataclass(frozen=True, slots=True)
class MeterStep:
    """Everything one SMTP step asks of the store, done in one round trip and in this
    order: begin, settle holds, check-and-charge, count, add to series, read.

    At a transaction's first RCPT: ``begin``; a suspended login's step stops there
    and writes nothing else (:attr:`MeterResult.suspension`).  At RCPT: ``charges``
    (atomic, as :meth:`Store.charge`), ``if_refused`` recorded without a limit when
    they do not fit, and the compromise facts read only then
    (``read_when_refused``).  At the end of DATA: ``settle`` (commit or release),
    ``counts`` (unlimited charges), ``series`` and the compromise facts."""

    begin: MessageBegin | None = None
    charges: tuple[Charge, ...] = ()
    lease: float = 900.0
    if_refused: tuple[Charge, ...] = ()
    settle: tuple[str, ...] = ()
    commit: bool = False
    counts: tuple[Charge, ...] = ()
    series: tuple[SeriesAdd, ...] = ()
    # Usage of counters (as Store.usage) and sums of series, read after the writes.
    read: tuple[Charge, ...] = ()
    sums: tuple[SeriesSum, ...] = ()
    read_when_refused: bool = False


@dataclass(frozen=True, slots=True)
class MeterResult:
    charged: ChargeResult
    # Empty when nothing was read (read_when_refused and the charges fitted).
    usage: tuple[int, ...] = ()
    sums: tuple[int, ...] = ()
    # The step's begin found the login suspended: nothing else was done.
    suspension: Suspension | None = None
