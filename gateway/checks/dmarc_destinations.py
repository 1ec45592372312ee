"""Where a DMARC aggregate report may go: the record's ``rua=`` mailto: addresses,
each outside the domain's authority verified as RFC 9990 "Verifying External
Destinations" says.

Only ``mailto:`` URIs are used (the one method RFC 9990 defines).  A destination
host whose Organizational Domain differs from the policy domain's gets a TXT query
at ``<policy domain>._report._dmarc.<destination host>``; without a ``v=DMARC1``
record there, the address is dropped.  A ``rua=`` in that record replaces the
address if it names the same host, and otherwise drops it (step 9 and the text
after it).  DNS failures are kept apart: the report waits for the next run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import unquote

from gateway.checks.dmarc import find_record
from gateway.checks.dmarc_record import is_dmarc_text, parse_record
from gateway.checks.dns import DnsTempError, Resolver

# RFC 1035 §2.3.4: a name is at most 253 characters in text form (step 4).
_MAX_NAME = 253


@dataclass(frozen=True, slots=True)
class Destinations:
    addresses: tuple[str, ...] = ()
    dropped: tuple[str, ...] = field(default=())  # "uri: why", for the log
    temperror: str = ""  # DNS failed: try the report again later


def mailto_address(uri: str) -> str | None:
    """The address of a ``mailto:`` URI (RFC 6068), without ``?headers``; None for other schemes."""
    if not uri.lower().startswith("mailto:"):
        return None
    address = unquote(uri[7:].split("?", 1)[0]).strip()
    local, at, host = address.rpartition("@")
    if not at or not local or not host:
        return None
    return f"{local}@{host.lower().rstrip('.')}"


def _host(address: str) -> str:
    return address.rpartition("@")[2]


async def report_destinations(resolver: Resolver, policy_domain: str, rua: tuple[str, ...],
                              policy_org: str) -> Destinations:
    """The verified addresses for ``rua`` of the record at ``policy_domain`` (whose
    Organizational Domain is ``policy_org``), in the order given."""
    kept: list[str] = []
    dropped: list[str] = []
    for uri in rua:
        address = mailto_address(uri)
        if address is None:
            dropped.append(f"{uri}: not a mailto: URI")
            continue
        host = _host(address)
        try:
            org = (await find_record(resolver, host)).org_domain or host
            if org == policy_org:
                kept.append(address)
                continue
            verdict = await _verify_external(resolver, policy_domain, address)
        except DnsTempError as exc:
            return Destinations(tuple(kept), tuple(dropped), f"{uri}: {exc}")
        if verdict.startswith("ok:"):
            kept.append(verdict[3:])
        else:
            dropped.append(f"{uri}: {verdict}")
    return Destinations(tuple(dict.fromkeys(kept)), tuple(dropped))


async def _verify_external(resolver: Resolver, policy_domain: str, address: str) -> str:
    """RFC 9990 "Verifying External Destinations", steps 1 to 9: "ok:<address>" or why not."""
    host = _host(address)  # step 1
    # Steps 2 and 3; the policy domain is already an A-label (as it came from DNS).
    name = f"{policy_domain}._report._dmarc.{host}"
    if len(name) > _MAX_NAME:  # step 4
        return f"{name} is longer than DNS allows"
    texts = [t.decode("utf-8", "replace") for t in await resolver.txt(name)]  # step 5
    records = [parse_record(t) for t in texts if is_dmarc_text(t)]  # step 6
    records = [r for r in records if r is not None]
    if not records:  # step 7
        return f"no v=DMARC1 record at {name}: the destination has not agreed to receive reports"
    for record in records:  # step 9: an override must keep the destination host
        for uri in record.rua:
            override = mailto_address(uri)
            if override is None:
                continue
            if _host(override) != host:
                return f"{name} redirects to {override}: not the same host, no report to either"
            return f"ok:{override}"
    return f"ok:{address}"  # step 8
