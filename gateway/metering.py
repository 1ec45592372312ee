"""Metering: the few calls the submission handler makes, facts → store → rules → reply.

The rules (gateway/rules/quota.py, lockout.py, compromise.py) decide; the store
counts; this class carries the facts between them, so a hook reads as one call.
Where each call goes in the conversation (docs/quotas.md, "Wiring"):

    AUTH, before the password check   auth_begin(ip, login, now)        → 454 4.7.0 when locked
                                                                          (the attempt counts from here)
    AUTH failed                       auth_failed(attempt, now)         → seconds to wait, then 535
    AUTH not checked (timeout, down)  auth_abandoned(attempt)           → 454 4.7.0
    AUTH succeeded                    auth_succeeded(attempt); open_session(acct, cid, now)
    MAIL                              begin(txid, cid)  (SIZE=: rules.quota.decide_size)
    RCPT, before the downstream       check_recipient(acct, tx, domain, now)
                                      (the first one also: suspended? the slot renewed)
    RCPT refused by the downstream    recipient_refused(tx, now)
    after DATA (downstream answered)  finish(acct, tx, delivered, now)
    RSET / disconnect mid-transaction abort(tx, now);  disconnect: close_session(acct, cid)

Each message costs one store round trip at each RCPT and one at the end of DATA
(Store.meter): the first RCPT's also reads the suspension and renews the session's
slot (MeterStep.begin), and the compromise facts come back with the charge or the
commit (docs/quotas.md, "Round trips").  So a suspended account is refused at
RCPT, as Postfix's restrictions are by default (smtpd_delay_reject), not at MAIL.

A store that cannot be reached never lets mail through unmetered: the answer is
``451 4.3.0`` (QUOTA_STORE_UNAVAILABLE) at RCPT and ``454 4.7.0`` at AUTH.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from gateway import replies
from gateway.config.quota import QuotaSettings
from gateway.replies import Verdict
from gateway.rules import compromise, lockout, quota
from gateway.rules.quota import HOUR, AccountQuota, QuotaDecision
from gateway.store.base import (
    Charge,
    Event,
    MessageBegin,
    MeterResult,
    MeterStep,
    SeriesAdd,
    SeriesSum,
    Store,
    StoreUnavailable,
    Suspension,
)

log = logging.getLogger("portcullis.quota")

# How long a held charge lives without a commit: longer than any transaction
# (DATA timeout + downstream deadline); a crashed process frees its holds after it.
HOLD_LEASE = 1800.0
# A connection slot lives this long unless renewed (at a transaction's first RCPT,
# once a quarter of it has passed since the slot was taken or last renewed: every
# transaction renewing it was two statements and two rows written a message).
SESSION_LEASE = 1800.0
RENEW_AFTER = SESSION_LEASE / 4


@dataclass(slots=True)
class MeteredTransaction:
    """Per-transaction metering state; keep it on the envelope."""

    txid: str
    # The session's slot, renewed by the transaction's first step in the store.
    lease_id: str | None = None
    message_hold: str = ""
    recipient_holds: list[str] = field(default_factory=list)
    accepted: int = 0
    refused_downstream: int = 0
    # The message counters went with an accepted recipient (the first): they stay,
    # held with the message, even when the downstream then refuses that recipient.
    message_charged: bool = False
    # Recipient holds named so far (each a new name, a released one's included).
    holds_named: int = 0
    finished: bool = False
    # A check-and-charge went to the store (it may have held, even if it failed),
    # for this login ...
    asked: bool = False
    login: str = ""
    # ... and the first that came back read the suspension and renewed the slot.
    begun: bool = False
    # What that step found: the account is suspended, and every recipient of the
    # transaction is answered so (refused, deferred or held), nothing charged.
    suspended: QuotaDecision | None = None

    def __post_init__(self) -> None:
        self.message_hold = f"{self.txid}:m"

    @property
    def holds(self) -> list[str]:
        return [self.message_hold, *self.recipient_holds]


@dataclass(frozen=True, slots=True)
class Usage:
    name: str
    used: int
    limit: int | None


@dataclass(frozen=True, slots=True)
class AccountStatus:
    login: str
    customer: str
    usage: tuple[Usage, ...]
    connections: int
    suspension: Suspension | None
    shadow: bool


@dataclass(frozen=True, slots=True)
class AuthAttempt:
    """One AUTH between auth_begin and its outcome; counted as a failure meanwhile."""

    verdict: Verdict
    client_ip: str
    keys: lockout.LockoutKeys
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    # Failures per (ip, login) in the window, this attempt included.
    counts: tuple[int, int] = (0, 0)
    # Counted in the store until its outcome (False: a password the cache knows as right).
    reserved: bool = True

    @property
    def counted(self) -> bool:
        return self.verdict.accept and self.reserved


# The compromise signals' recipients of the last hour, from three counters (each
# recipient in exactly one of them):
#   recipients_per_hour   charged at RCPT and kept: sent, or in a transaction still open
#   downstream_refused    refused by the downstream (at RCPT or at DATA), counted when
#                         the transaction ends, however it ends
#   not_sent              attempted and neither: refused by a quota, or accepted in a
#                         transaction that ended without DATA's answer (RSET, a local
#                         refusal, a hang-up)
# so attempted = all three and tried downstream = the first two.  Counters of their
# own for "attempted" and "tried" were two rows more per message (issue 16).
def _not_sent(login: str, amount: int = 1) -> Charge:
    return Charge(f"acct:{login}:not_sent", HOUR, None, amount=amount, name="not_sent")


def _downstream_refused(login: str, amount: int = 1) -> Charge:
    return Charge(f"acct:{login}:downstream_refused", HOUR, None, amount=amount, name="downstream_refused")


@functools.lru_cache(maxsize=4096)
def _signal_counters(login: str) -> tuple[Charge, ...]:
    """The counters the compromise rules read, the same at every step of a login's
    mail: built once, not three objects a step (issue 16)."""
    return (Charge(f"acct:{login}:recipients_per_hour", HOUR, None), _downstream_refused(login),
            _not_sent(login))


class Metering:
    def __init__(self, store: Store, settings: QuotaSettings):
        self.store = store
        self.settings = settings
        # Open sessions' slots (their lease ids): when each was last taken or renewed.
        self._renewed: dict[str, float] = {}

    # --- AUTH ----------------------------------------------------------------------
    async def auth_begin(self, client_ip: str, login: str, now: float,
                         known_good: bool = False, wait: float = 0.0) -> AuthAttempt:
        """Count the attempt before its password is checked, or refuse it (locked, or
        as many failures and attempts in flight as the limit): one atomic step.

        ``known_good``: the account cache holds this login and password as right, so
        no hash is checked and nothing is reserved; a lock still refuses it (many
        simultaneous sessions of one mail client must not lock their own account)."""
        s = self.settings.lockout
        keys = lockout.lockout_keys(client_ip, login)
        attempt = AuthAttempt(Verdict.refuse(replies.AUTH_TEMPFAIL), client_ip, keys)
        if known_good:
            try:
                until = await self.store.locked_until(keys.both, now)
            except StoreUnavailable as exc:
                log.error("lockout state unavailable: %s", exc)
                return attempt
            verdict = lockout.decide_auth_attempt(until is None, until, None, now)
            return AuthAttempt(verdict, client_ip, keys, attempt.id, reserved=False)
        limits = lockout.attempt_limits(keys, s)
        ends, pause = time.monotonic() + wait, 0.05
        try:
            while True:
                found = await self.store.reserve_attempt(limits, attempt.id, s.window, now)
                # At the limit but not locked: attempts in flight hold places that a
                # right password will give back (one mail client opening a dozen
                # sessions at once); wait for one, within ``wait``.  Wrong ones lock
                # the login at the limit, and then the waiting ends at once.
                if found.accepted or found.locked_until is not None or time.monotonic() + pause > ends:
                    break
                await asyncio.sleep(pause)
                pause = min(pause * 2, 0.4)
        except StoreUnavailable as exc:
            log.error("lockout state unavailable: %s", exc)
            return attempt
        verdict = lockout.decide_auth_attempt(found.accepted, found.locked_until, found.full_until, now)
        ip_n, login_n = found.counts
        return AuthAttempt(verdict, client_ip, keys, attempt.id, (ip_n, login_n))

    async def auth_failed(self, attempt: AuthAttempt, now: float) -> float:
        """The password was wrong: the attempt stays a failure; lock what it brought to
        its threshold.  Returns the delay before 535."""
        s = self.settings.lockout
        if not attempt.counted:
            return s.failure_delay
        ip_n, login_n = attempt.counts
        try:
            await self.store.fail_attempt(attempt.id, attempt.keys.both)
            outcome = lockout.after_failure(attempt.keys, ip_n, login_n, s, now)
            for key, until in outcome.locks:
                await self.store.lock(key, until, now)
                # The login is not logged as such: it may be a password typed in the wrong field.
                await self.store.log_event(Event(now, "lockout", attempt.client_ip, {
                    "key_kind": key.split(":", 1)[0], "ip": attempt.client_ip, "until": until,
                    "ip_failures": ip_n, "login_failures": login_n}))
                log.warning("auth lockout %s until %.0f (ip=%s)", key.split(":", 1)[0], until,
                            attempt.client_ip)
            return outcome.delay
        except StoreUnavailable as exc:
            log.error("could not count a failed login: %s", exc)
            return s.failure_delay

    async def auth_succeeded(self, attempt: AuthAttempt) -> None:
        """The attempt's place is given back; failures already counted stay until they
        leave the window.  Clearing them here let a right password, arriving in the
        middle of a storm of guesses, hand the guessers fresh places: 40 parallel
        sessions then checked up to twice the limit of wrong passwords."""
        if not attempt.verdict.accept or not attempt.reserved:
            return
        try:
            await self.store.give_back_attempt(attempt.id, attempt.keys.both)
        except StoreUnavailable as exc:  # it counts as a failure until the window ends
            log.error("could not give back a login attempt: %s", exc)

    async def auth_abandoned(self, attempt: AuthAttempt) -> None:
        """The password was never checked (source down, timeout): nothing to count."""
        if not attempt.counted:
            return
        try:
            await self.store.give_back_attempt(attempt.id, attempt.keys.both)
        except StoreUnavailable as exc:  # it counts as a failure until the window ends
            log.error("could not clear failed logins: %s", exc)

    # --- sessions --------------------------------------------------------------------
    async def open_session(self, acct: AccountQuota, lease_id: str, now: float) -> Verdict:
        try:
            ok = await self.store.acquire_slot(f"conn:{acct.login}", lease_id,
                                               acct.limits.concurrent_connections, now, SESSION_LEASE)
        except StoreUnavailable as exc:
            log.error("connection count unavailable: %s", exc)
            return Verdict.refuse(replies.AUTH_TEMPFAIL)
        if ok:
            self._renewed[lease_id] = now
        if ok or acct.shadow:
            if not ok:
                log.info("shadow: would refuse concurrent_connections login=%s", acct.login)
            return Verdict.ok(replies.AUTH_OK)
        return Verdict.refuse(replies.ACCOUNT_BUSY)

    async def close_session(self, acct: AccountQuota, lease_id: str) -> None:
        self._renewed.pop(lease_id, None)
        try:
            await self.store.release_slot(f"conn:{acct.login}", lease_id)
        except StoreUnavailable as exc:  # the lease runs out by itself
            log.error("could not release a connection slot: %s", exc)

    # --- MAIL ------------------------------------------------------------------------
    def begin(self, txid: str, lease_id: str | None = None) -> MeteredTransaction:
        """A transaction of the session whose slot is ``lease_id``: no store call yet."""
        return MeteredTransaction(txid, lease_id)

    # --- RCPT ------------------------------------------------------------------------
    async def check_recipient(self, acct: AccountQuota, tx: MeteredTransaction, domain: str,
                              now: float) -> QuotaDecision:
        """The recipient's check-and-charge; the transaction's first also asks whether
        the account is suspended (550 5.7.1, or as its ``when_suspended`` says)."""
        if tx.suspended is not None:
            return tx.suspended
        count = quota.decide_recipient_count(acct, tx.accepted)
        if not count.accept:
            return count
        first = not tx.message_charged
        hold = f"{tx.txid}:r{tx.holds_named}"
        tx.holds_named += 1
        charges = quota.recipient_charges(acct, domain, first, tx.message_hold, hold)
        # One round trip: the check-and-charge; refused, the attempt is counted all the
        # same (in shadow mode, what we let through counts it), and the compromise
        # facts come back for the assessment.
        if_refused = tuple(c.unlimited() for c in charges) if acct.shadow else (_not_sent(acct.login),)
        reads, sums = self._signal_reads(acct, now)
        renew = tx.lease_id
        if renew is not None and now - self._renewed.get(renew, -SESSION_LEASE) < RENEW_AFTER:
            renew = None  # renewed lately: the step only reads the suspension
        begin = None if tx.begun else MessageBegin(acct.login, f"conn:{acct.login}", renew, SESSION_LEASE)
        tx.asked = True
        tx.login = acct.login
        try:
            found = await self.store.meter(MeterStep(
                begin=begin, charges=charges, lease=HOLD_LEASE,
                if_refused=if_refused, read=reads, sums=sums, read_when_refused=True), now)
            tx.begun = True
            if begin is not None and begin.lease_id is not None and begin.lease_id in self._renewed:
                self._renewed[begin.lease_id] = now
            if found.suspension is not None:  # every mode, shadow included: nothing was charged
                tx.suspended = quota.decide_suspended(found.suspension, acct.limits.when_suspended)
                return tx.suspended
            result = found.charged
            decision = quota.decide_charge(acct, result)
            if not result.accepted and decision.would_refuse is None:
                # The ceiling crossed by refused attempts: the suspension goes back with
                # the decision, for the handler to put on record and notify.
                suspension = await self._assess(acct, found, now)
                if suspension is not None:
                    decision = replace(decision, suspension=suspension)
        except StoreUnavailable as exc:
            log.error("quota store unavailable: %s", exc)
            return QuotaDecision(Verdict.refuse(replies.QUOTA_STORE_UNAVAILABLE), limit="store")
        if decision.accept and decision.held is None:  # held mail is charged at release
            tx.recipient_holds.append(hold)
            tx.accepted += 1
            tx.message_charged = True
        if decision.would_refuse is not None or count.would_refuse is not None:
            return decision if decision.would_refuse is not None else count
        return decision

    async def recipient_refused(self, tx: MeteredTransaction, now: float) -> None:
        """The downstream refused the recipient just accepted by check_recipient: it costs nothing."""
        if not tx.recipient_holds:
            return
        hold = tx.recipient_holds.pop()
        tx.accepted -= 1
        tx.refused_downstream += 1
        try:
            await self.store.release([hold], now)
        except StoreUnavailable as exc:  # the hold's lease runs out by itself
            log.error("could not release a recipient hold: %s", exc)

    # --- after DATA --------------------------------------------------------------------
    async def finish(self, acct: AccountQuota, tx: MeteredTransaction, delivered: bool,
                     now: float) -> Suspension | None:
        """The downstream answered DATA: charge what it accepted, nothing if it refused.
        Returns the suspension this message triggered, if any."""
        if tx.finished:
            return None
        tx.finished = True
        if tx.suspended is not None:  # nothing was charged, nothing is counted
            return None
        login = acct.login
        committed = delivered and tx.accepted > 0
        refused = tx.refused_downstream + (0 if delivered else tx.accepted)
        series = (SeriesAdd(f"sent:{login}", tx.accepted),
                  SeriesAdd(f"messages:{login}", 1, bucket=86400)) if committed else ()
        # A count of nothing is left out: no row, nothing to prune (a delivered
        # message has no refusals, and a counter never written reads 0).
        counts = (_downstream_refused(login, refused),) if refused else ()
        reads, sums = self._signal_reads(acct, now)
        try:
            # One round trip: settle the holds, count, add to the series, read the facts.
            found = await self.store.meter(MeterStep(
                settle=tuple(tx.holds), commit=committed, counts=counts, series=series,
                read=reads, sums=sums), now)
            return await self._assess(acct, found, now)
        except StoreUnavailable as exc:
            log.error("could not settle txid=%s: %s", tx.txid, exc)
            return None

    async def abort(self, tx: MeteredTransaction, now: float) -> None:
        """RSET, disconnect or a local refusal before the downstream took the message."""
        if tx.finished:
            return
        tx.finished = True
        if not tx.asked or tx.suspended is not None:  # nothing was held
            return
        # Its recipients were attempted: the ones the downstream accepted are not sent,
        # and its refusals count as at the end of DATA (a client that probes addresses
        # with RCPT and leaves is what the refusal signal is for).  One trip releases
        # and counts.
        counts: list[Charge] = []
        if tx.accepted:
            counts.append(_not_sent(tx.login, tx.accepted))
        if tx.refused_downstream:
            counts.append(_downstream_refused(tx.login, tx.refused_downstream))
        try:
            await self.store.meter(MeterStep(settle=tuple(tx.holds), counts=tuple(counts)), now)
        except StoreUnavailable as exc:
            log.error("could not release txid=%s: %s", tx.txid, exc)

    async def charge_released(self, acct: AccountQuota, recipients: Sequence[str], now: float) -> None:
        """A held message was released and delivered to ``recipients``: it is charged
        now, as a delivered message would have been, past the limits if need be
        (the abuse desk decided; nothing is refused at this point).  Its recipients
        were counted as not sent when it was held, so within that hour the compromise
        ceiling counts them twice, as attempted and as sent."""
        charges: list[Charge] = []
        for i, rcpt in enumerate(recipients):
            charges += [replace(c, hold=None, limit=None) for c in quota.recipient_charges(
                acct, rcpt.rpartition("@")[2], i == 0, "", "")]
        login = acct.login
        await self.store.meter(MeterStep(
            counts=tuple(charges),
            series=(SeriesAdd(f"sent:{login}", len(recipients)),
                    SeriesAdd(f"messages:{login}", 1, bucket=86400))), now)

    # --- compromise --------------------------------------------------------------------
    async def record_complaint(self, acct: AccountQuota, now: float, evidence: dict) -> Suspension | None:
        """An abuse report matched to the account (ARF or forwarded message)."""
        reads, sums = self._signal_reads(acct, now)
        found = await self.store.meter(MeterStep(
            series=(SeriesAdd(f"complaints:{acct.login}", 1, bucket=86400),), read=reads, sums=sums), now)
        await self.store.log_event(Event(now, "complaint", acct.login, evidence))
        return await self._assess(acct, found, now)

    def _signal_sums(self, login: str, now: float) -> tuple[SeriesSum, ...]:
        c = self.settings.compromise
        since = now - c.complaint_days * 86400
        return (SeriesSum(f"sent:{login}", now - c.baseline_days * 86400, now - HOUR),
                SeriesSum(f"complaints:{login}", since, now, bucket=86400),
                SeriesSum(f"messages:{login}", since, now, bucket=86400))

    def _signal_reads(self, acct: AccountQuota, now: float
                      ) -> tuple[tuple[Charge, ...], tuple[SeriesSum, ...]]:
        """What the compromise rules read, asked of the store with the step's own
        round trip (nothing when they are off)."""
        if not self.settings.compromise.enabled:
            return (), ()
        return _signal_counters(acct.login), self._signal_sums(acct.login, now)

    def _signals_from(self, login: str, found: MeterResult) -> compromise.Signals:
        sent, refused, not_sent = found.usage
        baseline, complaints, messages = found.sums
        return compromise.Signals(login, sent + refused + not_sent, sent, baseline,
                                  self.settings.compromise.baseline_days * 24.0,
                                  sent + refused, refused, complaints, messages)

    async def signals(self, login: str, now: float) -> compromise.Signals:
        found = await self.store.meter(MeterStep(read=_signal_counters(login),
                                                 sums=self._signal_sums(login, now)), now)
        return self._signals_from(login, found)

    async def _assess(self, acct: AccountQuota, found: MeterResult, now: float) -> Suspension | None:
        """Decide on the facts the step's round trip brought back; only a suspension
        (rare) costs another call."""
        if not self.settings.compromise.enabled or not found.usage:
            return None
        suspension = compromise.assess(self._signals_from(acct.login, found), self.settings.compromise, now)
        if suspension is None:
            return None
        if acct.shadow:
            await self.store.log_event(Event(now, "would-suspend", acct.login,
                                             {"reason": suspension.reason, **suspension.evidence}))
            log.warning("shadow: would suspend login=%s reason=%s", acct.login, suspension.reason)
            return None
        if await self.store.suspend(suspension):
            await self.store.log_event(Event(now, "suspended", acct.login,
                                             {"reason": suspension.reason, **suspension.evidence}))
            log.warning("suspended login=%s reason=%s evidence=%s", acct.login, suspension.reason,
                        dict(suspension.evidence))
            return suspension
        return None

    # --- housekeeping -------------------------------------------------------------------
    async def sweep(self, now: float) -> int:
        """A slice of the store's dead rows out (Store.sweep): failed logins count for
        the lockout window."""
        return await self.store.sweep(now, self.settings.lockout.window)

    # --- operators ----------------------------------------------------------------------
    async def suspend(self, login: str, now: float, reason: str = "suspended by an operator",
                      by: str = "operator") -> bool:
        login = login.lower()
        done = await self.store.suspend(Suspension(login, now, reason, {"by": by}))
        if done:
            await self.store.log_event(Event(now, "suspended", login, {"reason": reason, "by": by}))
        return done

    async def unsuspend(self, login: str, now: float, by: str = "operator", reason: str = "") -> bool:
        login = login.lower()
        done = await self.store.unsuspend(login)
        if done:
            await self.store.log_event(Event(now, "unsuspended", login,
                                             {"by": by} | ({"reason": reason} if reason else {})))
        return done

    async def status(self, acct: AccountQuota, now: float) -> AccountStatus:
        # Every counter the account's mail is charged to (the customer's aggregate
        # ones only where set).
        counters = quota.rate_counters(acct)
        used = await self.store.usage(counters, now)
        return AccountStatus(
            acct.login, acct.customer,
            tuple(Usage(c.name, u, c.limit) for c, u in zip(counters, used, strict=True)),
            await self.store.slots_in_use(f"conn:{acct.login}", now),
            await self.store.suspension(acct.login), acct.shadow)
