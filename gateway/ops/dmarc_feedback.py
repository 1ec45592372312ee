"""One DMARC aggregate report as RFC 9990 has it: the XML, its file name, the mail.

Pure (no DNS, no store, no clock): the report command (dmarc_commands.py) gathers
the counts, the published record and the destinations, and sends what this makes.
The XML follows RFC 9990's schema (namespace ``urn:ietf:params:xml:ns:dmarc-2.0``,
appendix "DMARC XML Schema"), which differs from RFC 7489's appendix C: ``np``,
``testing`` and ``discovery_method`` in policy_published, no ``pct``, ``pass`` as
a disposition, one SPF result at most, and ``scope`` only ``mfrom``.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate
from xml.etree import ElementTree as ET

from gateway.values.dmarc_reports import ReportRow

NAMESPACE = "urn:ietf:params:xml:ns:dmarc-2.0"
GENERATOR = "Portcullis"


@dataclass(frozen=True, slots=True)
class Reporter:
    """Who sends the reports: the ISP (RFC 9990 "Report generator metadata")."""

    org_name: str
    email: str  # the From: address; its domain signs (DKIM) and submits
    contact: str = ""  # extra_contact_info

    @property
    def domain(self) -> str:
        return self.email.rpartition("@")[2].lower()


@dataclass(frozen=True, slots=True)
class PublishedPolicy:
    """policy_published: the DMARC Policy Record as found when the report is made
    (RFC 9990 "Changes in Policy During Reporting Period": the last one seen)."""

    domain: str
    p: str
    sp: str = ""
    np: str = ""
    adkim: str = "r"
    aspf: str = "r"
    testing: str = "n"
    fo: str = ""


@dataclass(frozen=True, slots=True)
class Report:
    report_id: str  # the store's id; the Report-ID is it plus "@" and our domain
    begin: int
    end: int  # inclusive, seconds since the epoch
    seq: int
    policy: PublishedPolicy
    rows: tuple[tuple[ReportRow, int], ...]

    def rid(self, reporter: Reporter) -> str:
        # RFC 9990 "Definition of Report-ID": dot-atom-text ["@" dot-atom-text], unique per domain.
        return f"{self.report_id}@{reporter.domain}"


def _add(parent: ET.Element, name: str, text: str | int | None = None) -> ET.Element:
    el = ET.SubElement(parent, f"{{{NAMESPACE}}}{name}")
    if text is not None:
        el.text = str(text)
    return el


def feedback_xml(report: Report, reporter: Reporter) -> bytes:
    """The report document; elements in the order RFC 9990 lists them."""
    ET.register_namespace("", NAMESPACE)
    root = ET.Element(f"{{{NAMESPACE}}}feedback")
    _add(root, "version", "1.0")
    meta = _add(root, "report_metadata")
    _add(meta, "org_name", reporter.org_name)
    _add(meta, "email", reporter.email)
    if reporter.contact:
        _add(meta, "extra_contact_info", reporter.contact)
    _add(meta, "report_id", report.rid(reporter))
    dates = _add(meta, "date_range")
    _add(dates, "begin", report.begin)
    _add(dates, "end", report.end)
    _add(meta, "generator", GENERATOR)
    pol = report.policy
    pub = _add(root, "policy_published")
    _add(pub, "domain", pol.domain)
    _add(pub, "p", pol.p)
    if pol.sp:
        _add(pub, "sp", pol.sp)
    if pol.np:
        _add(pub, "np", pol.np)
    _add(pub, "adkim", pol.adkim)
    _add(pub, "aspf", pol.aspf)
    _add(pub, "discovery_method", "treewalk")  # RFC 9989's DNS Tree Walk, not a PSL
    if pol.fo:
        _add(pub, "fo", pol.fo)
    _add(pub, "testing", pol.testing)
    for row, count in report.rows:
        _record(root, row, count)
    return b'<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="utf-8")


def _record(root: ET.Element, row: ReportRow, count: int) -> None:
    record = _add(root, "record")
    r = _add(record, "row")
    _add(r, "source_ip", row.source_ip)
    _add(r, "count", count)
    evaluated = _add(r, "policy_evaluated")
    _add(evaluated, "disposition", row.disposition)
    _add(evaluated, "dkim", "pass" if row.dkim_aligned else "fail")
    _add(evaluated, "spf", "pass" if row.spf_aligned else "fail")
    for reason in row.reasons:
        _add(_add(evaluated, "reason"), "type", reason)
    ids = _add(record, "identifiers")
    _add(ids, "header_from", row.header_from)
    if row.envelope_from:
        _add(ids, "envelope_from", row.envelope_from)
    auth = _add(record, "auth_results")
    for domain, selector, result in row.dkim:
        dkim = _add(auth, "dkim")
        _add(dkim, "domain", domain)
        _add(dkim, "selector", selector)
        _add(dkim, "result", result)
    domain, scope, result = row.spf
    if domain:
        spf = _add(auth, "spf")
        _add(spf, "domain", domain)
        if scope:
            _add(spf, "scope", scope)
        _add(spf, "result", result)


def filename(report: Report, reporter: Reporter) -> str:
    """RFC 9990 "Email": receiver "!" policy-domain "!" begin "!" end ["!" unique-id] ".xml.gz";
    the same name when a report is sent again."""
    unique = f"!{report.seq}" if report.seq else ""
    return f"{reporter.domain}!{report.policy.domain}!{report.begin}!{report.end}{unique}.xml.gz"


def subject(report: Report, reporter: Reporter) -> str:
    """RFC 9990 "Email": Report Domain: <policy domain> Submitter: <us> Report-ID: <rid>."""
    return (f"Report Domain: {report.policy.domain} Submitter: {reporter.domain} "
            f"Report-ID: <{report.rid(reporter)}>")


def report_message(report: Report, reporter: Reporter, recipients: list[str], now: float) -> bytes:
    """The mail (RFC 5322, MIME): a short note and the gzip-compressed XML
    (application/gzip, RFC 6713).  The Message-ID carries the Report-ID, so a
    report sent again is recognisably the same one."""
    msg = EmailMessage()
    msg["From"] = reporter.email
    msg["To"] = ", ".join(recipients)
    msg["Subject"] = subject(report, reporter)
    msg["Date"] = formatdate(now, usegmt=True)
    msg["Message-ID"] = f"<{report.rid(reporter)}>"
    msg.set_content(f"DMARC aggregate report for {report.policy.domain} from {reporter.org_name}, "
                    f"{report.begin} to {report.end} (seconds since the epoch, UTC).\n")
    # mtime=0: the same report compresses to the same bytes when sent again.
    data = gzip.compress(feedback_xml(report, reporter), mtime=0)
    msg.add_attachment(data, maintype="application", subtype="gzip", filename=filename(report, reporter))
    return msg.as_bytes(policy=msg.policy.clone(linesep="\r\n"))
