"""Brute-force defence: failed AUTH counted per client IP and per login.

Pure decisions; the store counts (``note_failure``) and remembers locks.

* Past ``ip_failures`` failures from one address (an IPv6 client counts per /64,
  which one machine usually holds whole) or ``login_failures`` for one login within
  ``window`` seconds, that address or login is locked for ``duration``: AUTH gets
  ``454 4.7.0`` without the password being checked.
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


def decide_auth_attempt(locked_until: float | None, now: float) -> Verdict:
    """Before checking a password: refuse while the IP or the login is locked."""
    if locked_until is None or locked_until <= now:
        return Verdict.ok(replies.AUTH_OK)
    minutes = max(1, math.ceil((locked_until - now) / 60))
    return Verdict.refuse(replies.AUTH_LOCKED_OUT.with_text(
        f"Too many failed login attempts; try again in {minutes} minutes"))


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
