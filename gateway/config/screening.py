"""The ``screening:`` section of the gateway file: cheap tests on the MX before the
expensive ones, in the manner of Postfix's postscreen (docs/screening.md).

Absent, nothing is screened and nothing costs anything.  Every part is optional::

    screening:
      dnsbl:
        sites:
          - zone: zen.spamhaus.org
            weight: 3
            codes: [127.0.0.2-127.0.0.9]     # SBL, CSS, XBL
          - zone: zen.spamhaus.org
            weight: 1
            codes: [127.0.0.10-127.0.0.11]   # PBL
          - zone: list.dnswl.org
            weight: -5
            codes: [127.0.2.1-127.0.20.3]     # not 127.0.0.255 (over quota)
        refuse_at: 3        # score >= this: 554 5.7.1 at RCPT
        allowlist_at: -1    # score <= this: the client bypasses the per-client limits
      dynamic_ranges: [198.51.100.0/24, 2001:db8:100::/40]
      allowlist: [192.0.2.0/28]          # the ISP's relays, partners: never screened
      limits:
        connections_per_address: 10      # concurrent; exact across workers (store)
        connections_per_24: 30           # concurrent per /24 (IPv4) / per /64 (IPv6)
        connections_per_minute: 60       # new, per address; per worker process
        messages_per_minute: 60          # per address; per worker process
        recipients_per_minute: 300       # per address; per worker process
      greeting:
        delay: 6            # seconds; 0 (the default) sends the 220 at once
      fcrdns: true          # PTR + forward look-up once per connection (iprev)

``codes`` lists the answers that count for a site: single addresses
(``127.0.0.2``) or inclusive ranges (``127.0.0.2-127.0.0.9``).  Empty: any answer.
"""

from __future__ import annotations

import ipaddress
from typing import Annotated

from pydantic import Field, ValidationInfo, field_validator

from gateway.config.base import Strict
from gateway.values.domains import normalise_domain
from gateway.values.screening import CodeRange

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _parse_networks(value: object) -> tuple[Network, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)):
        raise ValueError("must be a list of networks, as in [198.51.100.0/24]")
    out = []
    for item in value:
        try:
            out.append(ipaddress.ip_network(str(item), strict=False))
        except ValueError:
            raise ValueError(f"{item!r} is not an IP network (192.0.2.0/24, 2001:db8::/32)") from None
    return tuple(out)


def _parse_code(item: object) -> CodeRange:
    text = str(item).strip()
    low, dash, high = text.partition("-")
    try:
        first = ipaddress.IPv4Address(low.strip())
        last = ipaddress.IPv4Address(high.strip()) if dash else first
    except ValueError:
        raise ValueError(f"{text!r} is not a return code (127.0.0.2) or a range "
                         "(127.0.0.10-127.0.0.11)") from None
    if int(last) < int(first):
        raise ValueError(f"{text!r}: the range ends before it starts")
    return CodeRange(int(first), int(last))


class DnsblSite(Strict):
    zone: str
    # Negative for an allowlist (a DNSWL): its listing lowers the score.
    weight: Annotated[int, Field(ge=-100, le=100)] = 1
    codes: tuple[CodeRange, ...] = ()

    @field_validator("zone")
    @classmethod
    def _zone(cls, value: str) -> str:
        zone = normalise_domain(value)
        if "." not in zone:
            raise ValueError(f"{value!r} is not a DNS zone (zen.spamhaus.org)")
        return zone

    @field_validator("codes", mode="before")
    @classmethod
    def _codes(cls, value: object) -> tuple[CodeRange, ...]:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ValueError("must be a list of return codes, as in [127.0.0.2-127.0.0.9]")
        return tuple(c if isinstance(c, CodeRange) else _parse_code(c) for c in value)


class Dnsbl(Strict):
    sites: tuple[DnsblSite, ...] = ()
    # postscreen_dnsbl_threshold: the summed weights at which the client is refused.
    refuse_at: Annotated[int, Field(ge=1)] = 1
    # postscreen_dnsbl_allowlist_threshold: at or below it, the limits do not apply.
    allowlist_at: int | None = None

    @field_validator("allowlist_at")
    @classmethod
    def _below_refuse(cls, value: int | None, info: ValidationInfo) -> int | None:
        refuse_at = info.data.get("refuse_at")
        if value is not None and refuse_at is not None and value >= refuse_at:
            raise ValueError(f"must be below refuse_at ({refuse_at})")
        return value

    @property
    def zones(self) -> tuple[str, ...]:
        """Each zone once: a zone with several weighted code ranges is asked once."""
        return tuple(dict.fromkeys(s.zone for s in self.sites))


class ClientLimits(Strict):
    # Concurrent connections: exact across worker processes (slots in the store).
    connections_per_address: Annotated[int, Field(ge=1)] | None = None
    connections_per_24: Annotated[int, Field(ge=1)] | None = None  # /24 IPv4, /64 IPv6
    # Rates over the last 60 seconds: counted in each worker process (approximate:
    # with N workers a client may get up to N times the figure).
    connections_per_minute: Annotated[int, Field(ge=1)] | None = None
    messages_per_minute: Annotated[int, Field(ge=1)] | None = None
    recipients_per_minute: Annotated[int, Field(ge=1)] | None = None

    @property
    def any_concurrent(self) -> bool:
        return self.connections_per_address is not None or self.connections_per_24 is not None


class Greeting(Strict):
    # postscreen_greet_wait: "220-" at once, the rest after this; a client that
    # talks before the end of the greeting is refused at RCPT.  0: plain 220.
    delay: Annotated[float, Field(ge=0, le=30)] = 0.0


class ScreeningSettings(Strict):
    dnsbl: Dnsbl = Dnsbl()
    # The ISP's own customer ranges (what it publishes in the PBL): direct-to-MX
    # mail from them is refused at RCPT and pointed at 587/465.
    dynamic_ranges: tuple[Network, ...] = ()
    # Never screened: the ISP's own relays, partners.
    allowlist: tuple[Network, ...] = ()
    limits: ClientLimits = ClientLimits()
    greeting: Greeting = Greeting()
    # Forward-confirmed reverse DNS, once per connection (RFC 8601 §3: iprev).
    fcrdns: bool = False

    @field_validator("dynamic_ranges", "allowlist", mode="before")
    @classmethod
    def _networks(cls, value: object) -> tuple[Network, ...]:
        return _parse_networks(value)

    @property
    def needs_dns(self) -> bool:
        return bool(self.dnsbl.sites) or self.fcrdns


class CustomerScreening(Strict):
    """A customer's ``inbound.screening``: stricter than the gateway's, never looser.

    Each field can only add refusals: a lower refuse threshold is used only when it
    is lower than the gateway's (rules/screening.py takes the minimum)."""

    dnsbl_refuse_at: Annotated[int, Field(ge=1)] | None = None
    # Refuse mail from clients whose reverse DNS is not forward-confirmed.
    require_fcrdns: bool = False
