"""DMARC (RFC 9989): find the policy by the DNS Tree Walk, check identifier alignment.

Split so that the DNS work overlaps SPF and DKIM:

* :func:`find_record` (async) walks the tree from the From: domain (§4.10, §4.10.1)
  and finds the policy record, the author's Organizational Domain, and, when ``np``
  could apply, whether the author domain exists (§3.2.13);
* :func:`alignment_org_domains` (async) walks from the SPF and DKIM identifiers that
  relaxed alignment needs (§4.10.2), once their results are known;
* :func:`evaluate` (pure) takes all that and gives the :class:`DmarcResult`.

Every answer comes from the one resolver, cached for its TTL; a walk makes at most
eight queries (§4.10).  A DNS failure the result depends on is ``temperror``, never
``pass`` (§5.3.6).  The Public Suffix List is no longer used for DMARC; it remains in
:func:`organisational_domain` only for ``dns records``' offline notes about rua=.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from email.utils import getaddresses
from ipaddress import ip_address

from publicsuffixlist import PublicSuffixList

from gateway.checks.dkim_verify import DkimResult
from gateway.checks.dmarc_record import DmarcRecord, is_dmarc_text, parse_record
from gateway.checks.dns import DnsTempError, Resolver
from gateway.checks.spf import SpfResult
from gateway.message import HeaderField, MalformedHeader, Message
from gateway.values.domains import normalise_domain
from gateway.values.evidence import DmarcResult

__all__ = ["DmarcRecord", "DmarcResult", "RecordLookup", "Walk", "alignment_org_domains", "evaluate",
           "find_record", "find_record_cached", "from_domain", "from_domain_in",
           "organisational_domain", "parse_record", "tree_walk",
           "walk_names"]



@functools.cache
def default_suffix_list() -> PublicSuffixList:
    """The packaged list, loaded once (about 50 ms); it is read-only data."""
    return PublicSuffixList()


def organisational_domain(domain: str, psl: PublicSuffixList | None = None) -> str:
    """An offline guess (RFC 7489 §3.2, Public Suffix List), for ``dns records``' notes only:
    DMARC evaluation uses the DNS Tree Walk (:attr:`Walk.org_domain`)."""
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
    if domain and not domain.isascii():
        # RFC 6532 header, U-label domain: compared (and looked up) as its A-label,
        # the form d= and the SPF domain have (gateway/values/domains.py).
        try:
            domain = normalise_domain(domain)
        except ValueError:
            return None
    return domain or None


# --- the DNS Tree Walk (RFC 9989 §4.10) ---------------------------------------------------
WALK_MAX_LABELS = 7  # §4.10 step 4: "If x >= 8, remove ... labels ... until 7 labels remain"
# §4.10.2 bounds each walk, not their number; a message with many DKIM signatures could
# ask for many.  Past this many identifiers, alignment is unknown (like a failed walk).
MAX_ALIGNMENT_WALKS = 10


def walk_names(domain: str) -> list[str]:
    """The names whose ``_dmarc`` TXT a walk from ``domain`` may query, in order.

    §4.10: the domain itself, then (steps 4 and 7) one label less each time, jumping
    straight to seven labels from a longer name: at most eight names.  A name that is
    no DNS name (an address literal, an IP) has none: it cannot publish a record."""
    if not domain or domain.startswith("[") or _is_ip(domain):
        return []
    labels = domain.split(".")
    names = []
    while labels:
        names.append(".".join(labels))
        labels = labels[-WALK_MAX_LABELS:] if len(labels) > WALK_MAX_LABELS else labels[1:]
    return names


def _is_ip(domain: str) -> bool:
    try:
        ip_address(domain)
    except ValueError:
        return False
    return True


@dataclass(frozen=True, slots=True)
class Walk:
    """The records one walk found, longest name first, or where it stopped on a DNS failure."""

    start: str
    found: tuple[tuple[str, DmarcRecord], ...] = ()
    temperror: str = ""  # non-empty: the walk stopped here; ``found`` holds what came before

    @property
    def org_domain(self) -> str:
        """§4.10.2's selection, "from the longest to the shortest" record found."""
        for name, record in self.found:
            if record.psd == "n":  # 1. "this is the Organizational Domain"
                return name
            if record.psd == "y" and name != self.start:
                # 2. "the Organizational Domain is the domain one label below this one"
                return ".".join(self.start.split(".")[-(name.count(".") + 2):])
        # 3. "the DMARC Policy Record found at the name with the fewest number of labels";
        # "If this process does not determine the Organizational Domain, then the initial
        # target domain is the Organizational Domain."
        return self.found[-1][0] if self.found else self.start


def _record_at(texts: list[bytes]) -> DmarcRecord | None:
    # §4.10 step 2/6: discard non-DMARC records; "If multiple DMARC Policy Records are
    # returned for a single target, they are all discarded."  A record that is no valid
    # tag-list (a duplicated tag) is discarded like a non-DMARC one (RFC 6376 §3.2).
    candidates = [t for t in (b.decode("utf-8", "replace") for b in texts) if is_dmarc_text(t)]
    return parse_record(candidates[0]) if len(candidates) == 1 else None


def _walk_on(found: list[tuple[str, DmarcRecord]], name: str, texts: list[bytes]) -> bool:
    """Take one name's answer; True when the walk stops there (a psd=y or psd=n record)."""
    record = _record_at(texts)
    if record is None:
        return False
    found.append((name, record))
    return record.psd in ("y", "n")


async def tree_walk(resolver: Resolver, domain: str) -> Walk:
    """§4.10's walk from ``domain``, one query after another (each stops or goes on)."""
    found: list[tuple[str, DmarcRecord]] = []
    for name in walk_names(domain):
        try:
            texts = await resolver.txt(f"_dmarc.{name}")
        except DnsTempError as e:
            return Walk(domain, tuple(found), temperror=str(e))
        if _walk_on(found, name, texts):
            break
    return Walk(domain, tuple(found))


def _tree_walk_cached(resolver: Resolver, domain: str) -> tuple[Walk, float] | None:
    """:func:`tree_walk` from cached answers, with the earliest expiry; None if one is missing."""
    found: list[tuple[str, DmarcRecord]] = []
    expires = float("inf")
    for name in walk_names(domain):
        entry = resolver.peek_entry(f"_dmarc.{name}", "TXT")
        if entry is None:
            return None
        expires = min(expires, entry[0])
        if _walk_on(found, name, entry[1].texts()):
            break
    return Walk(domain, tuple(found)), expires


# --- policy discovery (RFC 9989 §4.10.1) -----------------------------------------------------
@dataclass(frozen=True, slots=True)
class RecordLookup:
    """What the discovery found for one author domain."""

    record: DmarcRecord | None
    found_at: str = ""  # the DMARC Policy Domain (§3.2.5): where the applied record is
    org_domain: str = ""  # the author's Organizational Domain; "" when unknown (walk_error)
    temperror: str = ""  # non-empty when DNS failed before a record could be chosen
    walk_error: str = ""  # the walk failed above a record found at the author domain
    author_exists: bool | None = None  # asked only when np= could apply (§3.2.13)
    existence_error: str = ""


def discover(walk: Walk) -> RecordLookup:
    """§4.10.1 over a finished walk (pure)."""
    if walk.found and walk.found[0][0] == walk.start:
        # "If a valid DMARC Policy Record is found there, then this is the DMARC Policy
        # Record to be applied to the message": the rest of the walk only tells the
        # Organizational Domain, for alignment.
        record = walk.found[0][1]
        if walk.temperror:
            return RecordLookup(record, walk.start, walk_error=walk.temperror)
        return RecordLookup(record, walk.start, walk.org_domain)
    if walk.temperror:
        return RecordLookup(None, walk.start, temperror=walk.temperror)
    org = walk.org_domain
    # "... listed from highest preference to lowest: The Author Domain, The Organizational
    # Domain of the Author Domain, The Public Suffix Domain of the Author Domain".  A walk
    # stops at a psd tag, so a psd=y record can only be the last one found.
    for name, record in walk.found:
        if name == org:
            return RecordLookup(record, name, org)
    if walk.found and walk.found[-1][1].psd == "y":
        name, record = walk.found[-1]
        return RecordLookup(record, name, org)
    return RecordLookup(None, "", org)


def _needs_existence(lookup: RecordLookup, domain: str) -> bool:
    # §4.10.1: "sp" if the Author Domain exists, "np" if it does not; only asked when the
    # answer can change the policy.
    if lookup.record is None or lookup.found_at == domain:
        return False
    tags = lookup.record.policy_tags()
    return tags is not None and tags[2] != "" and tags[2] != (tags[1] or tags[0])


async def find_record(resolver: Resolver, domain: str) -> RecordLookup:
    """§4.10.1 for the author domain ``domain`` (lower case, no trailing dot)."""
    lookup = discover(await tree_walk(resolver, domain))
    if not _needs_existence(lookup, domain):
        return lookup
    try:
        exists = await author_exists(resolver, domain)
    except DnsTempError as e:
        return _with_existence(lookup, None, str(e))
    return _with_existence(lookup, exists, "")


def _with_existence(lookup: RecordLookup, exists: bool | None, error: str) -> RecordLookup:
    return RecordLookup(lookup.record, lookup.found_at, lookup.org_domain, lookup.temperror,
                        lookup.walk_error, exists, error)


async def author_exists(resolver: Resolver, domain: str) -> bool:
    """§3.2.13 (RFC 8020): only NXDOMAIN says a name does not exist; any RR type will do.

    An A query follows a CNAME and reports the target's NXDOMAIN (RFC 6604 §3), so after
    an NXDOMAIN the name's own CNAME is asked for too."""
    if not (await resolver.lookup(domain, "A")).nxdomain:
        return True
    return bool((await resolver.lookup(domain, "CNAME")).records)


def find_record_cached(resolver: Resolver, domain: str) -> RecordLookup | None:
    """:func:`find_record` from cached answers alone; None when one it needs is not cached.

    The outcome is remembered until the earliest of the answers it read expires:
    the next message from the same From: domain costs one dictionary look-up."""
    key = ("dmarc", domain)
    remembered = resolver.recall(key)
    if remembered is not None:
        return remembered  # type: ignore[return-value]
    walked = _tree_walk_cached(resolver, domain)
    if walked is None:
        return None
    walk, expires = walked
    lookup = discover(walk)
    if _needs_existence(lookup, domain):
        a = resolver.peek_entry(domain, "A")
        if a is None:
            return None
        expires = min(expires, a[0])
        exists = not a[1].nxdomain
        if not exists:
            cname = resolver.peek_entry(domain, "CNAME")
            if cname is None:
                return None
            expires = min(expires, cname[0])
            exists = bool(cname[1].records)
        lookup = _with_existence(lookup, exists, "")
    resolver.remember(key, lookup, expires)
    return lookup


# --- identifier alignment (RFC 9989 §4.10.2) ------------------------------------------------
def _mailfrom_identifier(spf: SpfResult | None) -> str:
    # §4.4.2: "DMARC relies solely on SPF validation of the MAIL FROM identity."
    if spf is None or spf.result != "pass" or spf.identity != "mailfrom":
        return ""
    return spf.domain.rstrip(".").lower()


def _dkim_identifiers(dkim: Sequence[DkimResult]) -> list[str]:
    return [_a_label(r.domain) for r in dkim if r.result == "pass" and r.domain]


def _a_label(domain: str) -> str:
    """d= compared in the From domain's form: a U-label d= (RFC 8616) as its A-label."""
    domain = domain.rstrip(".").lower()
    if domain.isascii():
        return domain
    try:
        return normalise_domain(domain)
    except ValueError:
        return domain  # aligns with nothing: the From domain is a valid name


def _walks_needed(lookup: RecordLookup | None, author: str | None,
                  identifiers: Iterable[tuple[str, str]]) -> list[str]:
    """The identifiers whose Organizational Domain relaxed alignment must learn."""
    if lookup is None or lookup.record is None or author is None or not lookup.org_domain:
        return []
    org = lookup.org_domain
    wanted: list[str] = []
    for domain, mode in identifiers:
        # §4.10.2: no walk for strict alignment or for the author domain itself; and an
        # identifier's Organizational Domain is itself or a parent, so one outside the
        # author's Organizational Domain cannot align.
        if (mode == "r" and domain and domain != author and domain not in wanted
                and (domain == org or domain.endswith("." + org))):
            wanted.append(domain)
    return wanted


def _identifiers(lookup: RecordLookup, spf: SpfResult | None,
                 dkim: Sequence[DkimResult]) -> list[tuple[str, str]]:
    assert lookup.record is not None
    # SPF first, so a flood of DKIM signatures cannot use up the walks it needs.
    pairs = [(_mailfrom_identifier(spf), lookup.record.aspf)]
    pairs += [(d, lookup.record.adkim) for d in _dkim_identifiers(dkim)]
    return pairs


async def alignment_org_domains(
    resolver: Resolver, lookup: RecordLookup | None, header_from: str | None,
    spf: SpfResult | None, dkim: Sequence[DkimResult],
) -> dict[str, str]:
    """The Organizational Domain of each identifier relaxed alignment needs ("" if DNS failed).

    Identifiers past :data:`MAX_ALIGNMENT_WALKS` are left out: :func:`evaluate` reads a
    missing one as unknown."""
    if lookup is None or lookup.record is None:
        return {}
    wanted = _walks_needed(lookup, header_from, _identifiers(lookup, spf, dkim))
    orgs: dict[str, str] = {}
    for domain in wanted[:MAX_ALIGNMENT_WALKS]:
        walk = await tree_walk(resolver, domain)  # cached answers: no query, no task
        orgs[domain] = "" if walk.temperror else walk.org_domain
    return orgs


def _alignment(domain: str, author: str, mode: str, lookup: RecordLookup,
               orgs: Mapping[str, str]) -> bool | None:
    """True, False, or None when a DNS failure leaves it unknown (§3.2.10)."""
    if not domain:
        return False
    if domain == author:
        return True
    if mode == "s":  # §3.2.10.2: strict alignment is an exact match
        return False
    if not lookup.org_domain:  # the author's own walk failed above its record
        # Two names without a common top-level domain can never align.
        return None if domain.rpartition(".")[2] == author.rpartition(".")[2] else False
    org = lookup.org_domain
    if domain != org and not domain.endswith("." + org):
        return False
    found = orgs.get(domain, "")
    return None if not found else found == org


# --- the evaluation ------------------------------------------------------------------------
_ONE_BELOW = {"reject": "quarantine", "quarantine": "none", "none": "none"}
_STRENGTH = {"none": 0, "quarantine": 1, "reject": 2}


def evaluate(
    lookup: RecordLookup | None,
    header_from: str | None,
    spf: SpfResult | None,
    dkim: Sequence[DkimResult],
    org_domains: Mapping[str, str] | None = None,
) -> DmarcResult:
    """The DMARC result and disposition (pure): §5.3.2 to §5.3.6.

    ``org_domains`` is :func:`alignment_org_domains`' answer; without it relaxed
    alignment of an identifier other than the author domain is unknown."""
    orgs = org_domains or {}
    if header_from is None:
        # §5.3.1: zero or several Author Domains; DMARC cannot be applied.
        return DmarcResult("permerror", "", reason="no single RFC5322.From domain")
    if lookup is None or lookup.temperror:
        reason = lookup.temperror if lookup else "not looked up"
        return DmarcResult("temperror", header_from, reason=reason)
    record = lookup.record
    if record is None:
        # §4.10.1: "Mail Receivers MUST NOT apply the DMARC mechanism to the message."
        return DmarcResult("none", header_from, org_domain=lookup.org_domain,
                           reason="no DMARC record")
    tags = record.policy_tags()
    if tags is None:
        return DmarcResult("none", header_from, org_domain=lookup.org_domain,
                           record_domain=lookup.found_at,
                           reason="record without a valid policy or rua= (RFC 9989 §4.10.1)")
    policy, unknown_policy = _published_policy(lookup, header_from, tags)
    spf_domain = _mailfrom_identifier(spf)
    spf_aligned = _alignment(spf_domain, header_from, record.aspf, lookup, orgs)
    dkim_alignment = [(d, _alignment(d, header_from, record.adkim, lookup, orgs))
                      for d in _dkim_identifiers(dkim)]
    dkim_domains = tuple(dict.fromkeys(d for d, ok in dkim_alignment if ok))
    common = dict(
        header_from=header_from, policy=policy, is_subdomain_policy=lookup.found_at != header_from,
        spf_aligned=bool(spf_aligned), dkim_aligned=bool(dkim_domains),
        aligned_dkim_domains=dkim_domains, record_domain=lookup.found_at,
        org_domain=lookup.org_domain, testing=record.is_testing,
    )
    if spf_aligned or dkim_domains:  # §5.3.5: one aligned identifier is enough
        return DmarcResult("pass", disposition="none", **common)
    unknown = [d for d, ok in [(spf_domain, spf_aligned), *dkim_alignment] if ok is None]
    if unknown or unknown_policy:
        # §5.3.6: "If one or more DNS queries required to perform DMARC validation ... do
        # not complete ..., the message cannot be considered to pass or fail".
        why = ((lookup.walk_error or f"alignment of {', '.join(unknown)} not known") if unknown
               else f"existence of {header_from} not known: {lookup.existence_error}")
        return DmarcResult("temperror", header_from, reason=why)
    # §4.7 "t": y asks for "one level below the specified policy".
    disposition = _ONE_BELOW[policy] if record.is_testing else policy
    return DmarcResult("fail", disposition=disposition,
                       reason="no aligned SPF or DKIM pass", **common)


def _published_policy(lookup: RecordLookup, author: str,
                      tags: tuple[str, str, str]) -> tuple[str, bool]:
    """(the policy that applies, whether DNS left the choice between sp and np unknown)."""
    p, sp, np = tags
    if lookup.found_at == author:
        return p, False  # §4.10.1: the author domain's own record: "p"
    # §4.10.1: a subdomain takes "sp" if it exists, "np" if not, each falling back to "p".
    existing = sp or p
    if not np or np == existing:
        return existing, False
    if lookup.author_exists is None:
        # Unknown existence: assume the weaker of the two (it only matters for a failure,
        # which then is temperror), so nothing reads the domain as stricter than it is.
        return min(existing, np, key=_STRENGTH.__getitem__), True
    return (existing if lookup.author_exists else np), False
