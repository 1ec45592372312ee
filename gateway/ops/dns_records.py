"""The DNS records a customer domain needs for the gateway, and how to judge what is
published (docs/dns.md).

Pure functions over plain data: :class:`DomainFacts` (gathered from the config and
the key store by gateway/ops/dns_commands.py) becomes a list of :class:`Record`,
printed as zone-file text or a table; :func:`judge` compares one expected record
with what DNS answered and returns a :class:`Finding` (ok / missing / different /
failed).  Nothing here touches a socket or the clock.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from gateway.dkim.keystore import zone_record
from gateway.ops.mta_sts import Policy, tls_rpt_record

Kind = Literal["mx", "spf", "dkim", "dmarc", "srv", "cname", "mta-sts", "tls-rpt"]
Status = Literal["ok", "missing", "different", "failed"]

# RFC 6186 §3.1 / RFC 8314 §5.1: implicit TLS (465) is preferred over STARTTLS (587):
# lower SRV priority is tried first.  Weights as in docs/operations.md.
SUBMISSIONS_PRIORITY, SUBMISSION_PRIORITY = 0, 10
# RFC 6186 §4 / RFC 2782: target "." means "this service is decidedly not offered".
NOT_OFFERED = "0 0 0 ."


@dataclass(frozen=True)
class DkimKey:
    selector: str
    value: str  # the TXT value, "v=DKIM1; k=...; p=..."
    state: str  # pending / active / retiring


@dataclass(frozen=True)
class Mailbox:
    """An IMAP or POP3 server advertised to clients (not ours)."""

    hostname: str
    port: int
    security: Literal["tls", "starttls"]


@dataclass(frozen=True)
class DomainFacts:
    """Everything the records of one customer domain are made from."""

    domain: str
    mx_host: str | None  # None: the gateway does not receive this domain's mail
    mx_priority: int
    spf: str
    dmarc: str
    dkim: tuple[DkimKey, ...] = ()
    submission_host: str = ""
    submissions_port: int | None = None  # as clients see it; None: not offered
    submission_port: int | None = None
    imap: Mailbox | None = None
    pop3: Mailbox | None = None
    autoconfig_host: str | None = None  # None: no autoconfig records
    mta_sts: Policy | None = None  # None: no MTA-STS records
    mta_sts_host: str = ""  # target of mta-sts.DOMAIN: the HTTPS host serving the policy
    tls_rpt: str | None = None  # RFC 8460 rua; None: no TLS-RPT record


@dataclass(frozen=True)
class Record:
    name: str  # absolute, lower case, without the trailing dot
    type: str  # MX, TXT, SRV, CNAME
    value: str  # TXT: the text itself; others: presentation form, names ending in "."
    purpose: str
    kind: Kind


@dataclass(frozen=True)
class Found:
    """What DNS answered for one record's name and type."""

    values: tuple[str, ...] = ()  # TXT: strings joined; others: rdata presentation text
    error: str = ""  # non-empty: the question could not be answered (timeout, SERVFAIL)
    nxdomain: bool = False


@dataclass(frozen=True)
class Finding:
    record: Record
    status: Status
    detail: str
    found: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def _fqdn(name: str) -> str:
    return name.rstrip(".").lower() + "."


# --- the records -----------------------------------------------------------------
def required_records(f: DomainFacts) -> list[Record]:
    """Every record ``f.domain`` needs, in the order an operator reads them."""
    d = f.domain
    out = []
    if f.mx_host:
        out.append(Record(d, "MX", f"{f.mx_priority} {_fqdn(f.mx_host)}",
                          "inbound mail goes to the gateway (RFC 5321 §5.1)", "mx"))
    out.append(Record(d, "TXT", f.spf, "who may send mail from this domain (SPF, RFC 7208)",
                      "spf"))
    for key in f.dkim:
        out.append(Record(f"{key.selector}._domainkey.{d}", "TXT", key.value,
                          f"DKIM public key of selector {key.selector}, {key.state} "
                          "(RFC 6376 §3.6.2)", "dkim"))
    out.append(Record(f"_dmarc.{d}", "TXT", f.dmarc,
                      "what receivers do with unaligned mail, where reports go (DMARC, RFC 7489)",
                      "dmarc"))
    if f.submissions_port:
        out.append(Record(f"_submissions._tcp.{d}", "SRV",
                          f"{SUBMISSIONS_PRIORITY} 1 {f.submissions_port} {_fqdn(f.submission_host)}",
                          "mail clients: submission with TLS, preferred (RFC 6186, RFC 8314 §5.1)",
                          "srv"))
    if f.submission_port:
        out.append(Record(f"_submission._tcp.{d}", "SRV",
                          f"{SUBMISSION_PRIORITY} 1 {f.submission_port} {_fqdn(f.submission_host)}",
                          "mail clients: submission with STARTTLS (RFC 6186)", "srv"))
    if f.mta_sts is not None:
        out += [
            Record(f"_mta-sts.{d}", "TXT", f.mta_sts.sts_record(),
                   f"MTA-STS: senders insist on TLS to the MX, mode {f.mta_sts.mode}; "
                   "the id changes with the policy (RFC 8461 §3.1)", "mta-sts"),
            Record(f"mta-sts.{d}", "CNAME", _fqdn(f.mta_sts_host),
                   "MTA-STS: the HTTPS host serving /.well-known/mta-sts.txt (RFC 8461 §3.3)",
                   "cname"),
        ]
    if f.tls_rpt is not None:
        out.append(Record(f"_smtp._tls.{d}", "TXT", tls_rpt_record(f.tls_rpt),
                          "TLS-RPT: where senders report TLS failures to the MX (RFC 8460 §3)",
                          "tls-rpt"))
    out += _mailbox_records(d, "imap", f.imap)
    out += _mailbox_records(d, "pop3", f.pop3)
    if f.autoconfig_host:
        target = _fqdn(f.autoconfig_host)
        out += [
            Record(f"autoconfig.{d}", "CNAME", target,
                   "Thunderbird autoconfig (docs/operations.md)", "cname"),
            Record(f"autodiscover.{d}", "CNAME", target,
                   "Outlook Autodiscover (docs/operations.md)", "cname"),
            Record(f"_autodiscover._tcp.{d}", "SRV", f"0 0 443 {target}",
                   "Outlook Autodiscover when the CNAME's certificate does not match", "srv"),
        ]
    return out


def _mailbox_records(domain: str, service: str, box: Mailbox | None) -> list[Record]:
    if box is None:
        return []
    label = service.upper()
    if box.security == "starttls":
        return [Record(f"_{service}._tcp.{domain}", "SRV", f"0 1 {box.port} {_fqdn(box.hostname)}",
                       f"mail clients: {label} with STARTTLS (RFC 6186)", "srv")]
    return [
        Record(f"_{service}s._tcp.{domain}", "SRV", f"0 1 {box.port} {_fqdn(box.hostname)}",
               f"mail clients: {label} with TLS (RFC 6186, RFC 8314)", "srv"),
        # RFC 8314 §5.1 / RFC 6186 §4: say that cleartext is not offered.
        Record(f"_{service}._tcp.{domain}", "SRV", NOT_OFFERED,
               f"{label} without TLS is not offered (RFC 6186 §4)", "srv"),
    ]


# --- output ----------------------------------------------------------------------
def record_line(r: Record) -> str:
    if r.type == "TXT":
        return zone_record(r.name, r.value)  # split in 255-octet strings
    return f"{r.name}. IN {r.type} {r.value}"


def zone_text(records: Sequence[Record], notes: Sequence[str] = ()) -> str:
    """Zone-file lines ready to paste, each record after a comment saying what it is for."""
    lines = [f"; {n}" for n in notes]
    for r in records:
        lines += [f"; {r.purpose}", record_line(r)]
    return "\n".join(lines) + "\n"


def table_text(records: Sequence[Record]) -> str:
    """One row per record; the value last, so a long DKIM key does not widen the rest."""
    rows = [("NAME", "TYPE", "PURPOSE", "VALUE")]
    rows += [(r.name, r.type, r.purpose, r.value) for r in records]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    return "".join(
        "  ".join(c.ljust(w) for c, w in zip(row[:3], widths, strict=True)) + "  " + row[3] + "\n"
        for row in rows
    )


def dmarc_report_notes(domain: str, dmarc: str, org_of: Callable[[str], str]) -> list[str]:
    """RFC 7489 §7.1: reports sent to another organisational domain are only sent when
    that domain publishes ``<domain>._report._dmarc.<dest>`` TXT "v=DMARC1"."""
    notes = []
    for name, value in _tags(dmarc).items():
        if name not in ("rua", "ruf"):
            continue
        for uri in value.split(","):
            uri = uri.strip()
            if not uri.lower().startswith("mailto:"):
                continue
            dest = uri[len("mailto:"):].split("!", 1)[0].rpartition("@")[2].lower().rstrip(".")
            if dest and org_of(dest) != org_of(domain):
                notes.append(f'{name} goes to {dest}: it must publish {domain}._report._dmarc.{dest}. '
                             'IN TXT "v=DMARC1" (RFC 7489 §7.1)')
    return notes


# --- judging what DNS holds --------------------------------------------------------
def _tags(text: str) -> dict[str, str]:
    """A tag=value list (RFC 6376 §3.2, RFC 7489 §6.4): names lower-cased, first wins."""
    tags: dict[str, str] = {}
    for part in text.split(";"):
        name, eq, value = part.partition("=")
        if eq:
            tags.setdefault(name.strip().lower(), value.strip())
    return tags


def _words(value: str) -> tuple[str, ...]:
    return tuple(w.lower() for w in value.split())


def _is_spf(text: str) -> bool:
    # RFC 7208 §4.5: exactly "v=spf1", then a space or the end; case-insensitive.
    t = text.lower()
    return t == "v=spf1" or t.startswith("v=spf1 ")


def _is_dmarc(text: str) -> bool:
    # RFC 7489 §6.6.3: records that do not start with "v=DMARC1" are discarded.
    return _tags(text).get("v") == "DMARC1" and text.lstrip().startswith("v")


def judge(expected: Record, found: Found) -> Finding:
    """Is ``expected`` published?  ``found`` holds every value at its name and type."""
    if found.error:
        return Finding(expected, "failed", f"DNS did not answer, try again: {found.error}")
    judge_kind = {"spf": _judge_spf, "dmarc": _judge_dmarc, "dkim": _judge_dkim,
                  "mta-sts": _judge_sts, "tls-rpt": _judge_tls_rpt}.get(
        expected.kind, _judge_exact)
    return judge_kind(expected, found)


def _missing(expected: Record, found: Found, what: str) -> Finding:
    where = "no such name" if found.nxdomain else what
    return Finding(expected, "missing", f"{where}: publish it", found.values)


def _judge_exact(expected: Record, found: Found) -> Finding:
    """MX, SRV, CNAME: the expected record and nothing else at the name."""
    if not found.values:
        return _missing(expected, found, f"no {expected.type} record")
    want = _words(expected.value)
    others = [v for v in found.values if _words(v) != want]
    if len(others) == len(found.values):
        return Finding(expected, "different", "the published record is not the one needed",
                       found.values)
    if others:
        why = {"mx": "mail sent there does not pass the gateway's checks"}.get(expected.kind, "")
        text = "also published: " + ", ".join(others) + (f" ({why})" if why else "")
        return Finding(expected, "different", text, found.values)
    return Finding(expected, "ok", "published", found.values)


def _judge_spf(expected: Record, found: Found) -> Finding:
    spf = [v for v in found.values if _is_spf(v)]
    if not spf:
        return _missing(expected, found, "no SPF record")
    if len(spf) > 1:
        return Finding(expected, "different",
                       f"{len(spf)} SPF records: receivers treat that as permerror "
                       "(RFC 7208 §4.5); merge them into one", tuple(spf))
    have, want = _words(spf[0]), _words(expected.value)
    if have == want:
        return Finding(expected, "ok", "published", tuple(spf))
    # A customer may add its own senders: fine, if every term we need is there and the
    # final "all" is the same.
    is_all = lambda term: term.lstrip("+-~?") == "all"  # noqa: E731
    want_all = [t for t in want if is_all(t)]
    have_all = [t for t in have if is_all(t)]
    missing_terms = [t for t in want if not is_all(t) and t not in have]
    if not missing_terms and want_all == have_all:
        extra = [t for t in have if t not in want]
        return Finding(expected, "ok", "published, with the customer's own additions: "
                       + " ".join(extra), tuple(spf))
    why = (f"lacks {' '.join(missing_terms)}" if missing_terms
           else f"ends in {' '.join(have_all) or 'no all'}, not {' '.join(want_all) or 'no all'}")
    return Finding(expected, "different", f"the SPF record {why}", tuple(spf))


def _judge_dmarc(expected: Record, found: Found) -> Finding:
    dmarc = [v for v in found.values if _is_dmarc(v)]
    if not dmarc:
        return _missing(expected, found, "no DMARC record")
    if len(dmarc) > 1:
        return Finding(expected, "different",
                       f"{len(dmarc)} DMARC records: receivers then apply none "
                       "(RFC 7489 §6.6.3); keep one", tuple(dmarc))
    have, want = _tags(dmarc[0]), _tags(expected.value)
    wrong = [f"{k}={have.get(k, '(absent)')}, not {k}={v}" for k, v in want.items()
             if have.get(k, "").replace(" ", "").lower() != v.replace(" ", "").lower()]
    if wrong:
        return Finding(expected, "different", "; ".join(wrong), tuple(dmarc))
    return Finding(expected, "ok", "published", tuple(dmarc))


def _judge_dkim(expected: Record, found: Found) -> Finding:
    if not found.values:
        return _missing(expected, found, "no TXT record")
    if len(found.values) > 1:
        return Finding(expected, "different", f"{len(found.values)} TXT records at the name; "
                       "verifiers need exactly one (RFC 6376 §3.6.2.2)", found.values)
    have, want = _tags(found.values[0]), _tags(expected.value)
    if have.get("v", "DKIM1") != "DKIM1":
        return Finding(expected, "different", f"v={have['v']}, not DKIM1", found.values)
    if have.get("k", "rsa").lower() != want.get("k", "rsa").lower():
        return Finding(expected, "different", f"k={have.get('k', 'rsa')}, not k={want.get('k')}",
                       found.values)
    p_have, p_want = "".join(have.get("p", "").split()), "".join(want.get("p", "").split())
    if not p_have:
        return Finding(expected, "different", "empty or no p=: the key is revoked "
                       "(RFC 6376 §3.6.1)", found.values)
    if p_have != p_want:
        return Finding(expected, "different", "the published key is not the one in the key store",
                       found.values)
    return Finding(expected, "ok", "published", found.values)


def _judge_versioned(expected: Record, found: Found, version: str, rfc: str,
                     tags: tuple[str, ...]) -> Finding:
    """MTA-STS and TLS-RPT: exactly one TXT starting with ``v=<version>``, with our tags."""
    ours = [v for v in found.values if v.replace(" ", "").startswith(f"v={version};")
            or v.strip() == f"v={version}"]
    if not ours:
        return _missing(expected, found, f"no v={version} record")
    if len(ours) > 1:
        return Finding(expected, "different", f"{len(ours)} v={version} records: senders then "
                       f"use none ({rfc}); keep one", tuple(ours))
    have, want = _tags(ours[0]), _tags(expected.value)
    wrong = [f"{k}={have.get(k, '(absent)')}, not {k}={want[k]}" for k in tags
             if have.get(k, "").replace(" ", "") != want[k].replace(" ", "")]
    if wrong:
        return Finding(expected, "different", "; ".join(wrong), tuple(ours))
    return Finding(expected, "ok", "published", tuple(ours))


def _judge_sts(expected: Record, found: Found) -> Finding:
    # The id must be ours: it is what tells senders the policy file changed.
    return _judge_versioned(expected, found, "STSv1", "RFC 8461 §3.1", ("id",))


def _judge_tls_rpt(expected: Record, found: Found) -> Finding:
    return _judge_versioned(expected, found, "TLSRPTv1", "RFC 8460 §3", ("rua",))
