"""Brute-force defence: failed AUTH counted per client IP and per login.

Pure decisions; the store counts (``reserve_attempt``) and remembers locks.

* Every attempt counts as a failure from *before* its password is checked until
  the password proves right (then it is given back).  The store checks and counts
  in one atomic step, so simultaneous attempts (many connections, several worker
  processes) can never check more than ``login_failures`` passwords of one login:
  the rest are refused like a locked login.
* Past ``ip_failures`` failures from one address (an IPv6 client counts per /64,
  which one machine usually holds whole) or ``login_failures`` for one login within
  ``window`` seconds, that address or login is locked for ``duration``: AUTH gets
  ``454 4.7.0`` without the password being checked (a right one included: that is
  what a lockout means).
* Failures are counted per login whether or not the login exists, and the reply
  is the same for a locked address, a locked login, an existing or an unknown
  one: nothing tells an attacker which logins are real.
* A failed attempt is answered after ``failure_delay``; a successful one at once.
"""

from __future__ import annotations

import ipaddress
import math
from dataclasses import dataclass

from gateway import replies
from gateway.config.quota import LockoutSettings
from gateway.replies import Verdict


@dataclass(frozen=True, slots=True)
class LockoutKeys:
    ip: str
    login: str

    @property
    def both(self) -> tuple[str, str]:
        return (self.ip, self.login)


def lockout_keys(client_ip: str, login: str) -> LockoutKeys:
    try:
        addr = ipaddress.ip_address(client_ip)
    except ValueError:
        ip = client_ip
    else:
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        ip = str(ipaddress.ip_network(f"{addr}/64", strict=False)) if addr.version == 6 else str(addr)
    return LockoutKeys(f"authfail-ip:{ip}", f"authfail-login:{login.strip().lower()}")


def attempt_limits(keys: LockoutKeys, settings: LockoutSettings) -> tuple[tuple[str, int], ...]:
    """What the store may count an attempt under, and each key's limit."""
    return ((keys.ip, settings.ip_failures), (keys.login, settings.login_failures))


def decide_auth_attempt(accepted: bool, locked_until: float | None, full_until: float | None,
                        now: float) -> Verdict:
    """Before checking a password: did the store count this attempt (``accepted``),
    or is the IP or login locked (until ``locked_until``) or at its limit of failures
    and attempts in flight (until ``full_until``)?  Both refusals read the same, for
    a real and an invented login alike."""
    if accepted:
        return Verdict.ok(replies.AUTH_OK)
    until = max((t for t in (locked_until, full_until) if t is not None), default=now)
    minutes = max(1, math.ceil((until - now) / 60))
    # The store says whether a lock or the attempts in flight stopped it, not whether
    # the address or the login did: the rule name says as much as is known.
    locked = locked_until is not None and locked_until > now
    return Verdict.refuse(replies.AUTH_LOCKED_OUT.with_text(
        f"Too many failed login attempts; try again in {minutes} minutes"),
        "lockout.locked" if locked else "lockout.attempts_in_flight", minutes=minutes)


def verification_budget(source_timeout: float, command_timeout: float, failure_delay: float) -> float:
    """How long an AUTH may wait for its password check (the queue in front of the
    verifiers included) and still be answered before the command timeout: the
    failure delay and a margin for the store's calls come after it.  aiosmtpd's
    command timeout runs during the AUTH command and closes the connection without a
    reply; past this budget the client hears ``454 4.7.0`` instead."""
    margin = min(1.0, command_timeout / 4)
    return max(0.1, min(source_timeout, command_timeout - failure_delay - margin))


@dataclass(frozen=True, slots=True)
class FailureOutcome:
    # (key, lock end) for each key that crossed its threshold with this failure.
    locks: tuple[tuple[str, float], ...]
    # Seconds to wait before answering 535.
    delay: float


def after_failure(keys: LockoutKeys, ip_failures: int, login_failures: int,
                  settings: LockoutSettings, now: float) -> FailureOutcome:
    """Given the failures counted in the window (this one included), what to lock."""
    locks = []
    if ip_failures >= settings.ip_failures:
        locks.append((keys.ip, now + settings.duration))
    if login_failures >= settings.login_failures:
        locks.append((keys.login, now + settings.duration))
    return FailureOutcome(tuple(locks), settings.failure_delay)
