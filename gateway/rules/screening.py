"""MX screening decisions, over plain data: who the client is, what the lists said,
what the counters say.  No sockets, no clock, no DNS (gateway/checks/screening.py
asks; gateway/smtp/screening.py applies what is decided here).

The verdict on a listed client is given at RCPT, not at connect: mail to
abuse@ and postmaster@ still gets in (RFC 5321 §4.5.1, RFC 2142), and the
refusal names the list, as postscreen does.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping

from gateway import replies
from gateway.config.screening import CustomerScreening, DnsblSite, Network, ScreeningSettings
from gateway.replies import Verdict
from gateway.values.screening import ClientFacts, Iprev, Listing, ZoneAnswer

ACCEPT = Verdict.ok()


def dnsbl_query_name(client_ip: str, zone: str) -> str:
    """RFC 5782 §2.1 (IPv4: octets reversed) and §2.4 (IPv6: nibbles reversed)."""
    address = ipaddress.ip_address(client_ip)
    return f"{address.reverse_pointer.rsplit('.', 2)[0]}.{zone}"


def score_client(client_ip: str, sites: Iterable[DnsblSite], answers: Mapping[str, ZoneAnswer],
                 iprev: Iprev | None = None) -> ClientFacts:
    """postscreen_dnsbl_sites: each site whose answer matches its codes adds its
    weight once; a site without codes counts any answer.  A failed look-up adds
    nothing (it is named on the log line instead)."""
    score, listings = 0, []
    for site in sites:
        answer = answers.get(site.zone)
        if answer is None or not answer.codes:
            continue
        for code in answer.codes:
            if not site.codes or any(code in r for r in site.codes):
                score += site.weight
                listings.append(Listing(site.zone, site.weight, str(ipaddress.IPv4Address(code))))
                break
    failed = tuple(sorted(z for z, a in answers.items() if a.failed))
    return ClientFacts(client_ip, score, tuple(listings), failed, iprev)


def is_in(client_ip: str, networks: Iterable[Network]) -> bool:
    try:
        address = ipaddress.ip_address(client_ip)
    except ValueError:
        return False
    if address.version == 6 and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # ::ffff:192.0.2.1 is 192.0.2.1
    return any(address in net for net in networks)


def client_network(client_ip: str) -> str:
    """The /24 (IPv4) or /64 (IPv6) the client is in: one customer's share."""
    address = ipaddress.ip_address(client_ip)
    prefix = 24 if address.version == 4 else 64
    return str(ipaddress.ip_network(f"{client_ip}/{prefix}", strict=False))


def is_allowlisted(settings: ScreeningSettings, client_ip: str, facts: ClientFacts | None) -> bool:
    """The ISP's own networks, or a score at the allowlist threshold (a DNSWL):
    no limits and no refusals apply."""
    if is_in(client_ip, settings.allowlist):
        return True
    at = settings.dnsbl.allowlist_at
    return at is not None and facts is not None and facts.score <= at


def decide_connection_rate(settings: ScreeningSettings, recent: int) -> Verdict:
    """``recent``: this address's connections in the last minute, this one included."""
    limit = settings.limits.connections_per_minute
    if limit is not None and recent > limit:
        return Verdict.refuse(replies.CLIENT_CONNECTION_RATE, "screening.connections_per_minute",
                              recent=recent, limit=limit)
    return ACCEPT


def decide_concurrency(settings: ScreeningSettings, address_ok: bool, network_ok: bool,
                       network: str) -> Verdict:
    """The slot taken (or not) for the address and for its /24 or /64."""
    limits = settings.limits
    if not address_ok:
        return Verdict.refuse(replies.CLIENT_CONNECTIONS, "screening.connections_per_address",
                              limit=limits.connections_per_address)
    if not network_ok:
        return Verdict.refuse(replies.CLIENT_NETWORK_CONNECTIONS, "screening.connections_per_24",
                              network=network, limit=limits.connections_per_24)
    return ACCEPT


def decide_message(settings: ScreeningSettings, recent: int) -> Verdict:
    """At MAIL: ``recent`` messages from this address in the last minute, this one included."""
    limit = settings.limits.messages_per_minute
    if limit is not None and recent > limit:
        return Verdict.refuse(replies.CLIENT_MESSAGE_RATE, "screening.messages_per_minute",
                              recent=recent, limit=limit)
    return ACCEPT


def decide_recipient(settings: ScreeningSettings, client_ip: str, facts: ClientFacts | None, *,
                     is_role: bool, pregreeted: bool, recent_recipients: int,
                     customer: CustomerScreening | None = None) -> Verdict:
    """At RCPT, for one recipient.  ``customer``: the recipient's customer may be
    stricter (a lower threshold, FCrDNS required), never looser: its settings only
    ever add a refusal to the gateway's."""
    if is_role or is_in(client_ip, settings.allowlist):
        return ACCEPT
    allowlisted = is_allowlisted(settings, client_ip, facts)
    limit = settings.limits.recipients_per_minute
    if not allowlisted and limit is not None and recent_recipients > limit:
        return Verdict.refuse(replies.CLIENT_RECIPIENT_RATE, "screening.recipients_per_minute",
                              recent=recent_recipients, limit=limit)
    if pregreeted:
        return Verdict.refuse(replies.PREGREET, "screening.pregreet", client=client_ip)
    if is_in(client_ip, settings.dynamic_ranges):
        return Verdict.refuse(replies.DYNAMIC_RANGE.with_text(
            f"Client [{client_ip}] is in our customers' dynamic range: "
            f"{replies.DYNAMIC_RANGE.text}"), "screening.dynamic_range", client=client_ip)
    if facts is None:
        return ACCEPT
    refuse_at = settings.dnsbl.refuse_at
    if customer is not None and customer.dnsbl_refuse_at is not None:
        refuse_at = min(refuse_at, customer.dnsbl_refuse_at)
    if facts.listings and facts.score >= refuse_at:
        # The list that weighed most names the refusal.
        worst = max(facts.listings, key=lambda li: li.weight)
        return Verdict.refuse(replies.DNSBL_LISTED.with_text(
            f"Service unavailable; client [{client_ip}] listed by {worst.zone}"),
            "screening.dnsbl", score=facts.score, threshold=refuse_at,
            listed=[f"{li.zone}:{li.code}" for li in facts.listings])
    if (customer is not None and customer.require_fcrdns and not allowlisted
            and facts.iprev is not None and facts.iprev.result in ("fail", "permerror")):
        # temperror is our DNS's trouble, not the client's: never a refusal.
        return Verdict.refuse(replies.NO_FCRDNS, "screening.fcrdns", iprev=facts.iprev.result)
    return ACCEPT
