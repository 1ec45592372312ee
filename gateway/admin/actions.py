"""Every action the abuse desk takes, once: the CLI (accounts_commands.py,
held_commands.py, ops/explain via cli.py) and the admin API and console call these.

They take what they act on (the metering, the hold store, the downstreams, ``now``)
and return plain values; printing, JSON and HTML are the callers' business.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from gateway.config.content import HoldSettings
from gateway.config.default_policy import DefaultPolicy
from gateway.config.directory import Directory
from gateway.config.quota import QuotaSettings
from gateway.downstream.base import Downstream
from gateway.metering import AccountStatus, Metering
from gateway.ops import explain
from gateway.ops.notify import Notifier, suspension_incident
from gateway.rules.quota import AccountQuota, quota_for_known_login
from gateway.store.base import Event, JournalEntry, Store, StoreUnavailable
from gateway.store.held import (
    ExpiryDecision,
    HeldBusy,
    HeldMail,
    HeldMessage,
    HeldNotFound,
    ReleaseResult,
)

log = logging.getLogger("portcullis.held")

# A login as the accounts sources know it: an address or a bare name, no controls,
# no spaces.  Anything else is refused before it reaches the store.
_LOGIN = re.compile(r"^[^\s\x00-\x1f\x7f/\\]{1,254}$")
# Reasons are written to the store, the logs and the audit journal: one line of text.
MAX_REASON = 200


class NoDownstream(Exception):
    """The config has no downstream for the held message's direction."""


def valid_login(login: str) -> str | None:
    """The login lower-cased, or None when it cannot be one."""
    return login.lower() if _LOGIN.match(login) else None


def clean_reason(reason: str) -> str:
    """One printable line, bounded: no line break may reach a log line or a header."""
    return " ".join("".join(c if c.isprintable() else " " for c in reason).split())[:MAX_REASON]


# --- accounts ------------------------------------------------------------------

def account_for(directory: Directory, settings: QuotaSettings, login: str,
                default: DefaultPolicy | None = None,
                default_customer: str = "default") -> AccountQuota:
    """The account's limits as a session would meter them, also for an account only
    the ISP's database knows (rules/quota.quota_for_known_login)."""
    return quota_for_known_login(directory, settings.quotas, login, default or DefaultPolicy(),
                                 default_customer)


async def known_logins(metering: Metering, directory: Directory) -> list[str]:
    """Every account of the directory, and every suspended login (a login the
    directory no longer has may still be suspended)."""
    suspended = [s.login for s in await metering.store.suspensions()]
    return sorted(set(directory.accounts) | set(suspended))


async def account_status(metering: Metering, directory: Directory, login: str,
                         now: float, default: DefaultPolicy | None = None,
                         default_customer: str = "default") -> AccountStatus:
    return await metering.status(account_for(directory, metering.settings, login.lower(),
                                             default, default_customer), now)


async def recent_events(store: Store, login: str, limit: int = 20) -> list[Event]:
    return await store.events(login.lower(), limit)


async def suspend_account(metering: Metering, login: str, now: float,
                          reason: str = "suspended by an operator", by: str = "operator",
                          notifier: Notifier | None = None,
                          directory: Directory | None = None) -> bool:
    """False when it already was (the first evidence is kept).  A suspension made
    here is notified like any other: the account holder, the abuse desk, the webhook."""
    reason = clean_reason(reason) or "suspended by an operator"
    done = await metering.suspend(login, now, reason, by=by)
    if done and notifier is not None:
        found = directory.account(login.lower()) if directory is not None else None
        await notifier.notify(suspension_incident(
            login.lower(), found[0].customer if found is not None else None, reason, {}, now,
            None, by=by), now)
    return done


async def unsuspend_account(metering: Metering, login: str, now: float, by: str = "operator",
                            reason: str = "") -> bool:
    """False when it was not suspended."""
    return await metering.unsuspend(login, now, by=by, reason=clean_reason(reason))


# --- held mail -----------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class HeldFilter:
    login: str | None = None
    customer: str | None = None
    reason: str | None = None
    # Held at least this many seconds ago.
    older_than: float | None = None

    def matches(self, held: HeldMessage, customer: str | None, now: float) -> bool:
        return ((self.login is None or (held.login or "").lower() == self.login.lower())
                and (self.customer is None or customer == self.customer)
                and (self.reason is None or held.reason == self.reason)
                and (self.older_than is None or now - held.held_at >= self.older_than))


def customer_of(directory: Directory, held: HeldMessage) -> str | None:
    """The customer a held message belongs to: its login's, or (inbound) its first
    recipient's domain's."""
    if held.login:
        found = directory.account(held.login)
        if found is not None:
            return found[0].customer
    for address in (held.sender, *held.recipients):
        domain = address.rpartition("@")[2]
        policy = directory.customer_for_domain(domain) if domain else None
        if policy is not None:
            return policy.customer
    return None


async def list_held(store: HeldMail, directory: Directory | None = None,
                    where: HeldFilter = HeldFilter(), now: float = 0.0) -> list[HeldMessage]:
    held = await store.list()
    if where == HeldFilter():
        return held
    return [h for h in held
            if where.matches(h, customer_of(directory, h) if directory else None, now)]


async def show_held(store: HeldMail, held_id: str) -> tuple[HeldMessage, bytes]:
    """Raises HeldNotFound (also for an id that is not ours: never a path)."""
    return await store.get(held_id), await store.message(held_id)


async def release_held(store: HeldMail, held_id: str, downstreams: Mapping[str, Downstream | None],
                       force: bool = False, metering: Metering | None = None,
                       directory: Directory | None = None, now: float = 0.0,
                       by: str = "an operator") -> ReleaseResult:
    """Raises HeldNotFound, HeldBusy, or NoDownstream.

    With ``metering`` and ``directory``, a submitted message is charged to its
    account's quota for what was delivered: held mail is charged when released,
    not when held (docs/abuse.md)."""
    held = await store.get(held_id)
    downstream = downstreams.get(held.direction)
    if downstream is None:
        raise NoDownstream(held.direction)
    result = await store.release(held_id, downstream, force=force)
    now = now or time.time()
    if result.delivered and held.login and held.direction == "outbound" \
            and metering is not None and directory is not None:
        await _charge(metering, directory, held, result.delivered, now)
    await record_held_decision(metering, held, "released" if result.ok else "release failed", by, now,
                               f"delivered {len(result.delivered)}, deferred {len(result.deferred)}, "
                               f"refused {len(result.refused)}")
    return result


async def release_account(store: HeldMail, login: str, downstreams: Mapping[str, Downstream | None],
                          metering: Metering | None, directory: Directory | None, now: float,
                          by: str = "an operator") -> list[tuple[HeldMessage, ReleaseResult | str]]:
    """Every held message of ``login``, released (the abuse desk's one command after a
    suspension or a hold run turns out to be the customer's own mail): each charged
    and journaled as a single release; one that cannot go now stays held, and says why."""
    done: list[tuple[HeldMessage, ReleaseResult | str]] = []
    for held in await store.list():
        if (held.login or "").lower() != login.lower() or held.state != "held":
            continue
        try:
            done.append((held, await release_held(store, held.id, downstreams, metering=metering,
                                                  directory=directory, now=now, by=by)))
        except (HeldNotFound, HeldBusy):
            done.append((held, "released or deleted meanwhile"))
        except NoDownstream:
            done.append((held, f"no {held.direction} downstream to release to"))
    return done


async def _charge(metering: Metering, directory: Directory, held: HeldMessage,
                  delivered: Sequence[str], now: float) -> None:
    try:
        await metering.charge_released(account_for(directory, metering.settings, held.login or ""),
                                       delivered, now)
    except StoreUnavailable as exc:  # it went out: say it was not charged, never raise
        log.error("held %s: released to %d but not charged to %s: %s", held.id, len(delivered),
                  held.login, exc)


async def record_held_decision(metering: Metering | None, held: HeldMessage, decision: str,
                               by: str, now: float, detail: str = "") -> None:
    """Every decision on held mail, with who made it: a log line, an event on the
    account (``accounts status``) and an entry in the journal under the held
    transaction's id (``portcullis explain``).  Without a store: the log line only."""
    record = {"decision": decision, "by": by, "held_id": held.id, "reason": held.reason,
              "login": held.login, "detail": detail}
    log.warning("held %s (%s, login=%s): %s by %s%s", held.id, held.reason, held.login or "-",
                decision, by, f": {detail}" if detail else "")
    if metering is None:
        return
    try:
        if held.login:
            await metering.store.log_event(Event(now, f"held {decision}", held.login, record))
        journal = metering.settings.store.journal
        await metering.store.journal_add([JournalEntry(held.txid or held.id, "", now, "held", record)],
                                         journal.max_entries, journal.max_age)
    except StoreUnavailable as exc:  # said, never silent
        log.error("held %s: %s by %s not journalled: %s", held.id, decision, by, exc)


async def delete_held(store: HeldMail, held_id: str, by: str = "an operator",
                      metering: Metering | None = None, now: float = 0.0) -> HeldMessage:
    held = await store.delete(held_id, why=f"deleted by {by}")
    await record_held_decision(metering, held, "deleted", by, now or time.time())
    return held


async def expire_held(store: HeldMail, settings: HoldSettings,
                      downstreams: Mapping[str, Downstream | None], now: float,
                      metering: Metering | None = None,
                      directory: Directory | None = None) -> list[ExpiryDecision]:
    """Expiry is a decision too: journaled as made by ``hold.max_age``; what it
    releases is charged like any release."""
    before = {h.id: h for h in await store.list()}
    decisions = await store.expire(now, settings.max_age, settings.at_max_age, downstreams)
    for d in decisions:
        held = before.get(d.id)
        if held is None:
            continue
        if d.delivered and held.login and held.direction == "outbound" \
                and metering is not None and directory is not None:
            await _charge(metering, directory, held, d.delivered, now)
        await record_held_decision(metering, held, f"expired ({d.action})",
                                   "policy hold.max_age", now, d.detail)
    return decisions


# --- decisions -----------------------------------------------------------------

async def decision_trail(store: Store, text: str) -> tuple[str | None, Sequence[JournalEntry]]:
    """The id found in ``text`` (a bounce line, a Received header, the bare id) and
    its journal entries; (None, []) when there is no id in it."""
    wanted = explain.parse_id(text)
    if wanted is None:
        return None, []
    return wanted, await explain.find(store, wanted)
