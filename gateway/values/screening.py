"""What screening found out about an MX client: plain values, no I/O.

Gathered once per connection (gateway/checks/screening.py), read by the pure
rules (gateway/rules/screening.py) and printed on the connection's log line.
"""

from __future__ import annotations

from dataclasses import dataclass

# The store event of a refusal from the ISP's own dynamic ranges (one per RCPT),
# counted by address by `portcullis screening dynamic`.
DYNAMIC_EVENT = "screening.dynamic_range"


@dataclass(frozen=True, slots=True)
class CodeRange:
    """Inclusive range of DNSBL answers (IPv4 addresses as integers)."""

    first: int
    last: int

    def __contains__(self, address: int) -> bool:
        return self.first <= address <= self.last


@dataclass(frozen=True, slots=True)
class ZoneAnswer:
    """One DNS list's answer for the client: its A records as integers.
    Empty: not listed (NXDOMAIN) or the look-up failed (``failed``)."""

    zone: str
    codes: tuple[int, ...] = ()
    failed: bool = False  # a DNS failure adds nothing to the score


@dataclass(frozen=True, slots=True)
class Listing:
    zone: str
    weight: int
    code: str  # the answer that matched, as a dotted quad


@dataclass(frozen=True, slots=True)
class Iprev:
    """RFC 8601 §3: the iprev result and the name that confirmed it."""

    result: str  # pass | fail | temperror | permerror
    name: str = ""  # the forward-confirmed PTR name (pass), else ""


@dataclass(frozen=True, slots=True)
class ClientFacts:
    """Everything the connect-time look-ups found about one client address."""

    client_ip: str
    score: int = 0
    listings: tuple[Listing, ...] = ()
    dns_failed: tuple[str, ...] = ()  # zones whose look-up failed (nothing added)
    iprev: Iprev | None = None  # None: fcrdns is off

    @property
    def summary(self) -> str:
        """For the log line: ``score=4 listed=zen.spamhaus.org:127.0.0.4 iprev=pass``."""
        parts = [f"dnsbl_score={self.score}"]
        if self.listings:
            parts.append("listed=" + ",".join(f"{li.zone}:{li.code}" for li in self.listings))
        if self.dns_failed:
            parts.append("dnsbl_failed=" + ",".join(self.dns_failed))
        if self.iprev is not None:
            parts.append(f"iprev={self.iprev.result}")
        return " ".join(parts)
