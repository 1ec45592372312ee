"""The one interface to shared state: limits, lockouts, suspensions, events.

Two backends implement it (``sqlite.py``, ``redis.py``); the rest of the gateway
sees only this class.  Every method takes ``now`` (seconds since the epoch) from
the caller: the store keeps no clock, so tests can slide windows by passing a
later ``now``, and several gateways agree as long as their clocks do (NTP).

Window semantics (docs/quotas.md, "Windows"): a limit of N per W seconds is an
exact *sliding log*.  Every charge is recorded with its time ``t``; at time
``now`` it counts while ``t > now - W`` and stops counting at ``t + W`` exactly.
A charge is accepted when everything counted plus its amount is at most N.  There
is no fixed window, so no burst of 2N across a boundary.

Any failure to reach or use the backing store raises :class:`StoreUnavailable`;
callers answer ``451 4.3.0``, never pass mail unmetered.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

# The values the store keeps (defined on the ground floor, named here for its callers).
from gateway.values.charges import (
    AttemptReservation,
    Charge,
    ChargeResult,
    Event,
    MessageBegin,
    MeterResult,
    MeterStep,
    SeriesAdd,
    SeriesSum,
    Suspension,
)
from gateway.values.dmarc_reports import TakenReport

__all__ = [
    "AttemptReservation", "Charge", "ChargeResult", "Event", "MessageBegin", "MeterResult", "MeterStep",
    "SeriesAdd", "SeriesSum", "Store", "StoreUnavailable", "Suspension", "TakenReport",
    "retry_after_for",
]


class StoreUnavailable(Exception):
    """The store could not be reached or did not answer in time."""


@dataclass(frozen=True, slots=True)
class JournalEntry:
    """One decision on record for ``portcullis explain``: a transaction that was
    refused, held or suspended its account (``id`` is its txid), or a connection
    that was refused something (``id`` is its cid).  ``record`` is plain JSON data:
    the fields of its log line, the facts and the steps (gateway/smtp/records.py)."""

    id: str
    cid: str
    ts: float
    kind: str  # "transaction" | "connection"
    record: Mapping[str, Any] = field(default_factory=dict)


class Store(abc.ABC):
    """Shared state.  Every method may raise StoreUnavailable."""

    # --- limits --------------------------------------------------------------
    @abc.abstractmethod
    async def charge(self, charges: Sequence[Charge], now: float, lease: float = 900.0) -> ChargeResult:
        """Atomically: if every charge fits its limit, record all of them; else none.

        Atomic across every process sharing the store, so concurrent sessions of
        one account can never exceed a limit together.  ``lease`` is how long
        held charges live without a commit."""

    @abc.abstractmethod
    async def commit(self, holds: Iterable[str], now: float) -> None:
        """Make held charges permanent (the downstream accepted them)."""

    @abc.abstractmethod
    async def release(self, holds: Iterable[str], now: float) -> None:
        """Drop held charges (refused downstream, or the transaction ended)."""

    @abc.abstractmethod
    async def usage(self, charges: Sequence[Charge], now: float) -> tuple[int, ...]:
        """What each counter holds now (same counting as charge), without charging."""

    # --- concurrent connections ---------------------------------------------
    @abc.abstractmethod
    async def acquire_slot(self, key: str, lease_id: str, limit: int | None, now: float, ttl: float) -> bool:
        """Take one of ``limit`` slots until ``now + ttl`` (renew by calling again
        with the same lease_id).  Expired leases free their slot by themselves."""

    @abc.abstractmethod
    async def release_slot(self, key: str, lease_id: str) -> None: ...

    @abc.abstractmethod
    async def slots_in_use(self, key: str, now: float) -> int: ...

    # --- failed logins and lockouts -----------------------------------------
    # An AUTH attempt is counted as a failure *before* its password is checked, and
    # given back if the password proves right: so the check and the count are one
    # atomic step, and N simultaneous attempts can never check more than the limit.
    @abc.abstractmethod
    async def reserve_attempt(self, limits: Sequence[tuple[str, int]], attempt: str, window: float,
                              now: float) -> AttemptReservation:
        """Atomically, across every process sharing the store: unless one of the keys
        is locked, or already holds its limit of entries (failures and attempts in
        flight) within ``window``, count the attempt under every key, tagged ``attempt``."""

    @abc.abstractmethod
    async def fail_attempt(self, attempt: str, keys: Sequence[str]) -> None:
        """The password was wrong: the attempt's entries stay, as settled failures."""

    @abc.abstractmethod
    async def give_back_attempt(self, attempt: str, keys: Sequence[str]) -> None:
        """The password was right, or was never checked: the attempt's entries go.
        Settled failures stay until they leave the window: a right password must not
        free places for guesses racing it (issue 14, defect 2)."""

    @abc.abstractmethod
    async def lock(self, key: str, until: float, now: float) -> None:
        """Refuse the key until ``until`` (an earlier end never shortens a lock)."""

    @abc.abstractmethod
    async def locked_until(self, keys: Sequence[str], now: float) -> float | None:
        """The latest lock end among the keys still locked at ``now``, or None."""

    # --- suspensions ---------------------------------------------------------
    @abc.abstractmethod
    async def suspend(self, suspension: Suspension) -> bool:
        """Suspend the login; False if it already was (the first evidence is kept)."""

    @abc.abstractmethod
    async def unsuspend(self, login: str) -> bool:
        """Lift a suspension; False if there was none."""

    @abc.abstractmethod
    async def suspension(self, login: str) -> Suspension | None: ...

    @abc.abstractmethod
    async def suspensions(self) -> list[Suspension]: ...

    # --- events --------------------------------------------------------------
    @abc.abstractmethod
    async def log_event(self, event: Event) -> None: ...

    @abc.abstractmethod
    async def events(self, subject: str | None = None, limit: int = 100) -> list[Event]:
        """Newest first."""

    # --- the decision journal ---------------------------------------------------
    # Bounded by count and by age (store.journal in the gateway file): each write
    # drops what is past either bound, so the journal never grows without limit.
    @abc.abstractmethod
    async def journal_add(self, entries: Sequence[JournalEntry], max_entries: int, max_age: float) -> None:
        """Keep ``entries`` (one store call, however many); drop entries older than
        the newest one's ``ts - max_age``, and the oldest beyond ``max_entries``."""

    @abc.abstractmethod
    async def journal_find(self, key: str) -> list[JournalEntry]:
        """The entry whose id is ``key`` and, when ``key`` is a connection id, every
        entry of that connection; oldest first."""

    # --- series: coarse per-bucket counters for baselines and rates ----------
    @abc.abstractmethod
    async def add_to_series(
        self, key: str, amount: int, now: float, bucket: int = 3600, retention: float = 31 * 86400
    ) -> None:
        """Add to the bucket holding ``now`` (buckets of ``bucket`` seconds)."""

    @abc.abstractmethod
    async def read_series(self, key: str, since: float, now: float, bucket: int = 3600) -> int:
        """Sum of the buckets that start in [since, now]."""

    # --- one round trip per SMTP step (docs/quotas.md, "Round trips") -----------------
    # The defaults compose the calls above, one round trip each: the reference the
    # backends' one-trip versions are tested against (tests/test_store_meter.py).
    async def meter(self, step: MeterStep, now: float) -> MeterResult:
        """Begin, settle, check-and-charge, count, add to series and read, as ``step``
        says.  The backends do it in one transaction / one script, so it is also atomic."""
        if step.begin is not None:
            begin = step.begin
            suspension = await self.suspension(begin.login)
            if begin.lease_id is not None:
                await self.acquire_slot(begin.slot_key, begin.lease_id, None, now, begin.ttl)
            if suspension is not None:
                return MeterResult(ChargeResult(False, ()), suspension=suspension)
        if step.settle:
            await (self.commit if step.commit else self.release)(step.settle, now)
        charged = ChargeResult(True, ())
        if step.charges:
            charged = await self.charge(step.charges, now, step.lease)
            if not charged.accepted and step.if_refused:
                await self.charge(step.if_refused, now, step.lease)
        if step.counts:
            await self.charge(step.counts, now)
        for add in step.series:
            await self.add_to_series(add.key, add.amount, now, add.bucket, add.retention)
        if step.read_when_refused and charged.accepted:
            return MeterResult(charged)
        usage = await self.usage(step.read, now) if step.read else ()
        sums = tuple([await self.read_series(s.key, s.since, s.until, s.bucket) for s in step.sums])
        return MeterResult(charged, usage, sums)

    @abc.abstractmethod
    async def sweep(self, now: float, failure_window: float) -> int:
        """Remove a slice of what can never count again: rows of keys nothing charges
        any more (a deleted account's), past their window; failed logins older than
        ``failure_window``; locks and slots that ran out.  Nothing that counts at
        ``now`` changes.  Called every few seconds (gateway/serve.py); returns the
        rows removed."""

    @abc.abstractmethod
    async def close(self) -> None: ...

    # --- DMARC aggregate report counts (docs/dmarc-reports.md) -------------------------
    # Counts add up per (period, policy domain, row) from every worker and node; a
    # report run *takes* a closed period's counts out of the running counts into a
    # report of its own in one atomic step, so each count is in exactly one report:
    # counts that arrive after the take stay behind for the next report.

    @abc.abstractmethod
    async def dmarc_add(self, counts: Sequence[tuple[int, str, str, int]]) -> None:
        """Add each (period, policy domain, row key, count), in one store call; counts of
        periods older than ``RETENTION`` before the oldest added go (never reported)."""

    @abc.abstractmethod
    async def dmarc_periods(self, before: int) -> list[tuple[int, str]]:
        """(period, policy domain) of the running counts whose period began before ``before``."""

    @abc.abstractmethod
    async def dmarc_take(self, period: int, domain: str, now: float) -> str | None:
        """Move the counts of (period, domain) into a new report (state "taken");
        its id, or None when there were none."""

    @abc.abstractmethod
    async def dmarc_unsent(self) -> list[TakenReport]:
        """Reports taken but not finished (taken, or sending when a run stopped)."""

    @abc.abstractmethod
    async def dmarc_claim(self, report_id: str, now: float, stale: float) -> bool:
        """Mark a report "sending" before it is sent: True for the run that may send it
        (it was taken, or its last run claimed it more than ``stale`` seconds ago)."""

    @abc.abstractmethod
    async def dmarc_release(self, report_id: str) -> None:
        """Give a claimed report back unsent ("taken" again): it could not go out now
        (DNS failure, a 4xx), and the next run may try at once."""

    @abc.abstractmethod
    async def dmarc_finish(self, report_id: str, state: str, now: float, keep: float = 31 * 86400) -> None:
        """Mark a report sent (or failed, skipped): it is never sent again.  Finished
        reports older than ``keep`` seconds are dropped."""


def retry_after_for(entries: Sequence[tuple[float, int]], used: int, amount: int,
                    limit: int, window: float, now: float) -> float | None:
    """When enough of the oldest entries (ts, amount) will have slid out for
    ``amount`` more to fit: the one rule both backends follow (Redis in Lua)."""
    if amount > limit:
        return None
    need = used + amount - limit
    dropped = 0
    for ts, n in sorted(entries):
        dropped += n
        if dropped >= need:
            return max(0.0, ts + window - now)
    return None

