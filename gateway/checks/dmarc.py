"""DMARC (RFC 7489): find the policy, check identifier alignment, apply p/sp/pct.

Split in two so the DNS work overlaps SPF and DKIM:

* :func:`find_record` (async) looks the record up at the From: domain, then
  at its organisational domain (RFC 7489 §6.6.3);
* :func:`evaluate` (pure) takes that, the SPF and DKIM results and a random
  source (for ``pct``), and gives the :class:`DmarcResult`.

The organisational domain comes from the Public Suffix List of the
``publicsuffixlist`` package, used offline (RFC 7489 §3.2).
"""

from __future__ import annotations

import functools
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from email.utils import getaddresses

from publicsuffixlist import PublicSuffixList

from gateway.checks.dkim_verify import DkimResult
from gateway.checks.dns import DnsTempError, Resolver
from gateway.checks.spf import SpfResult
from gateway.message import HeaderField, MalformedHeader, Message
from gateway.values.evidence import DmarcResult

POLICIES = ("none", "quarantine", "reject")


@functools.cache
def default_suffix_list() -> PublicSuffixList:
    """The packaged list, loaded once (about 50 ms); it is read-only data."""
    return PublicSuffixList()


def organisational_domain(domain: str, psl: PublicSuffixList | None = None) -> str:
    # RFC 7489 §3.2: the public suffix plus one label; a name that is itself a
    # public suffix is its own organisational domain.
    return _organisational_domain(domain.rstrip(".").lower(), psl or default_suffix_list())


@functools.lru_cache(maxsize=16384)  # asked up to five times a message, for few domains
def _organisational_domain(domain: str, psl: PublicSuffixList) -> str:
    return psl.privatesuffix(domain) or domain


# --- the From: domain ------------------------------------------------------------------
# The common shapes, "addr@dom" and "Plain Name <addr@dom>", read without the email
# package's parser (about 40 us): no quotes, comments, commas, groups or 8-bit bytes,
# so the address is unambiguous.  tests/test_checks_dmarc_from.py holds it to
# getaddresses() on both shapes.
_SIMPLE_FROM = re.compile(
    rb"[ \t]*(?:[A-Za-z0-9 \t]*<[A-Za-z0-9._+=-]+@([A-Za-z0-9.-]+)>|[A-Za-z0-9._+=-]+@([A-Za-z0-9.-]+))"
    rb"[ \t]*\Z"
)


def from_domain(message: bytes | Message) -> str | None:
    """The RFC5322.From domain, or None when there is not exactly one (RFC 7489 §6.6.1)
    or the header is not one (gateway/message.py)."""
    try:
        parsed = message if isinstance(message, Message) else Message.parse(message)
    except MalformedHeader:
        return None
    return from_domain_in(parsed.fields)


def from_domain_in(header: Sequence[HeaderField]) -> str | None:
    """:func:`from_domain` of the fields gateway/message.py read."""
    # Each value after the colon, folds kept, without the field's own CRLF.
    return _domain_of([f.raw_value.removesuffix(b"\r\n") for f in header if f.key == b"from"])


def _domain_of(fields: list[bytes]) -> str | None:
    if len(fields) != 1:
        return None
    value = fields[0]
    if b"\n" in value:
        value = re.sub(rb"\r?\n", b"", value)
    simple = _SIMPLE_FROM.match(value)
    if simple is not None:
        domain = (simple.group(1) or simple.group(2)).rstrip(b".").lower().decode("ascii")
        return domain or None
    return _from_domain_parsed(value.decode("utf-8", "replace"))


def _from_domain_parsed(value: str) -> str | None:
    addresses = [a for _, a in getaddresses([value]) if a]
    domains = {a.rpartition("@")[2].strip().rstrip(".").lower() for a in addresses}
    if len(domains) != 1:
        return None
    domain = domains.pop()
    return domain or None


# --- the record ------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class DmarcRecord:
    p: str
    sp: str
    pct: int = 100
    adkim: str = "r"
    aspf: str = "r"
    text: str = ""


@dataclass(frozen=True, slots=True)
class RecordLookup:
    """The outcome of the discovery: a record and where it was found, or why not."""

    record: DmarcRecord | None
    found_at: str = ""  # the domain that published it (From: domain or organisational)
    temperror: str = ""  # non-empty when DNS failed


@functools.lru_cache(maxsize=4096)  # records repeat; a DmarcRecord is frozen
def parse_record(text: str) -> DmarcRecord | None:
    """A DMARC record, or None when it is not one (RFC 7489 §6.3, §6.6.3)."""
    tags: dict[str, str] = {}
    for part in text.split(";"):
        name, sep, value = part.partition("=")
        if sep:
            tags.setdefault(name.strip().lower(), value.strip())
    if tags.get("v") != "DMARC1" or not text.lstrip().startswith("v"):
        return None
    p = tags.get("p", "").lower()
    if p not in POLICIES:
        # §6.6.3 step 6: a bad or missing p= with a valid rua= means p=none.
        if "rua" not in tags:
            return None
        p = "none"
    sp = tags.get("sp", "").lower()
    sp = sp if sp in POLICIES else p
    try:
        pct = max(0, min(100, int(tags.get("pct", "100"))))
    except ValueError:
        pct = 100
    adkim = "s" if tags.get("adkim", "r").lower() == "s" else "r"
    aspf = "s" if tags.get("aspf", "r").lower() == "s" else "r"
    return DmarcRecord(p, sp, pct, adkim, aspf, text)


async def find_record(
    resolver: Resolver, domain: str, psl: PublicSuffixList | None = None
) -> RecordLookup:
    """RFC 7489 §6.6.3: _dmarc.<From domain>, else _dmarc.<organisational domain>."""
    for candidate in _candidates(domain, psl):
        try:
            texts = await resolver.txt(f"_dmarc.{candidate}")
        except DnsTempError as e:
            return RecordLookup(None, candidate, temperror=str(e))
        found = _lookup_at(candidate, texts)
        if found is not None:
            return found
        # No record here: try the organisational domain (§6.6.3 step 3).
    return RecordLookup(None)


def find_record_cached(
    resolver: Resolver, domain: str, psl: PublicSuffixList | None = None
) -> RecordLookup | None:
    """:func:`find_record` from cached answers alone; None when one it needs is not cached.

    The outcome is remembered until the earliest of the answers it read expires:
    the next message from the same From: domain costs one dictionary look-up."""
    key = ("dmarc", domain, psl)
    remembered = resolver.recall(key)
    if remembered is not None:
        return remembered  # type: ignore[return-value]
    expires = float("inf")
    found: RecordLookup | None = None
    for candidate in _candidates(domain, psl):
        entry = resolver.peek_entry(f"_dmarc.{candidate}", "TXT")
        if entry is None:
            return None
        expires = min(expires, entry[0])
        found = _lookup_at(candidate, entry[1].texts())
        if found is not None:
            break
    outcome = found or RecordLookup(None)
    resolver.remember(key, outcome, expires)
    return outcome


def _candidates(domain: str, psl: PublicSuffixList | None) -> list[str]:
    org = organisational_domain(domain, psl)
    return [domain] if org == domain else [domain, org]


def _lookup_at(candidate: str, texts: list[bytes]) -> RecordLookup | None:
    """The outcome when ``candidate`` publishes ``texts``; None to look further."""
    records = [r for r in (parse_record(t.decode("utf-8", "replace")) for t in texts) if r]
    if len(records) == 1:
        return RecordLookup(records[0], candidate)
    if len(records) > 1:
        return RecordLookup(None, candidate)  # §6.6.3 step 5: several mean none
    return None


# --- the evaluation ------------------------------------------------------------------------
def is_aligned(
    domain: str, from_dom: str, mode: str, psl: PublicSuffixList | None = None
) -> bool:
    """RFC 7489 §3.1: strict = same name, relaxed = same organisational domain."""
    if len(domain) + len(from_dom) > 510:  # no such domain names: nothing to remember
        return _is_aligned(domain, from_dom, mode, psl)
    return _is_aligned_memo(domain, from_dom, mode, psl)


def _is_aligned(domain: str, from_dom: str, mode: str, psl: PublicSuffixList | None) -> bool:
    domain, from_dom = domain.rstrip(".").lower(), from_dom.rstrip(".").lower()
    if not domain:
        return False
    if mode == "s":
        return domain == from_dom
    return organisational_domain(domain, psl) == organisational_domain(from_dom, psl)


# Asked twice a message (SPF and DKIM alignment) for the same few pairs of domains.
_is_aligned_memo = functools.lru_cache(maxsize=16384)(_is_aligned)


def evaluate(
    lookup: RecordLookup | None,
    header_from: str | None,
    spf: SpfResult | None,
    dkim: Sequence[DkimResult],
    *,
    psl: PublicSuffixList | None = None,
    rand: Callable[[], float] = random.random,
) -> DmarcResult:
    """The DMARC result and disposition; ``rand`` returns a float in [0, 1) for pct."""
    if header_from is None:
        # §6.6.1: zero or several From: domains; DMARC cannot be applied.
        return DmarcResult("permerror", "", reason="no single RFC5322.From domain")
    if lookup is None or lookup.temperror:
        reason = lookup.temperror if lookup else "not looked up"
        return DmarcResult("temperror", header_from, reason=reason)
    record = lookup.record
    if record is None:
        return DmarcResult("none", header_from, reason="no DMARC record")
    is_sub = lookup.found_at != header_from
    policy = record.sp if is_sub else record.p
    spf_ok = (
        spf is not None and spf.result == "pass"
        and is_aligned(spf.domain, header_from, record.aspf, psl)
    )
    dkim_domains = tuple(
        r.domain for r in dkim
        if r.result == "pass" and is_aligned(r.domain, header_from, record.adkim, psl)
    )
    common = dict(
        header_from=header_from, policy=policy, is_subdomain_policy=is_sub,
        spf_aligned=spf_ok, dkim_aligned=bool(dkim_domains),
        aligned_dkim_domains=dkim_domains, record_domain=lookup.found_at,
    )
    if spf_ok or dkim_domains:
        return DmarcResult("pass", disposition="none", **common)
    return DmarcResult("fail", disposition=_sampled(policy, record.pct, rand),
                       reason="no aligned SPF or DKIM pass", **common)


def _sampled(policy: str, pct: int, rand: Callable[[], float]) -> str:
    # RFC 7489 §6.6.4: outside the pct sample, reject becomes quarantine and
    # quarantine becomes none.
    if policy == "none" or pct >= 100 or rand() * 100 < pct:
        return policy
    return {"reject": "quarantine", "quarantine": "none"}[policy]
