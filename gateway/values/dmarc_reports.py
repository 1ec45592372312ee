"""What DMARC aggregate reporting counts (RFC 9990), as plain values.

The inbound path makes one :class:`ReportRow` per message that met a DMARC
record; the store counts identical rows per (period, DMARC Policy Domain);
``portcullis dmarc report`` turns each period's counts into one report.  A row
holds exactly what RFC 9990's "record" element says about a message, so equal
rows are one record with a count.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

# RFC 9990 "Aggregate Reports": "daily (or more frequent)" reports.
DAY = 86400
# Counts no report run has taken within this long after their period are dropped:
# a gateway whose operator never runs `dmarc report` must not grow its store forever.
RETENTION = 14 * DAY


@dataclass(frozen=True, slots=True)
class ReportRow:
    source_ip: str
    header_from: str
    envelope_from: str  # the domain SPF checked (MAIL FROM's, or HELO's), "" when none
    disposition: str  # RFC 9990 ActionDispositionType: none, pass, quarantine, reject
    dkim_aligned: bool  # policy_evaluated/dkim: pass or fail
    spf_aligned: bool  # policy_evaluated/spf
    spf: tuple[str, str, str]  # (domain, scope: "mfrom" or "", result)
    dkim: tuple[tuple[str, str, str], ...] = ()  # (domain, selector, result), in report order
    reasons: tuple[str, ...] = ()  # RFC 9990 PolicyOverrideType values

    def key(self) -> str:
        """The row as one string: the store counts per key, identical rows add up."""
        return json.dumps([self.source_ip, self.header_from, self.envelope_from, self.disposition,
                           self.dkim_aligned, self.spf_aligned, list(self.spf),
                           [list(d) for d in self.dkim], list(self.reasons)],
                          separators=(",", ":"))

    @classmethod
    def from_key(cls, key: str) -> ReportRow:
        ip, hf, ef, disp, dal, sal, spf, dkim, reasons = json.loads(key)
        return cls(ip, hf, ef, disp, bool(dal), bool(sal), tuple(spf),
                   tuple(tuple(d) for d in dkim), tuple(reasons))


@dataclass(frozen=True, slots=True)
class Observation:
    """One message for the report of ``policy_domain`` (where its DMARC record is)."""

    policy_domain: str
    row: ReportRow


@dataclass(frozen=True, slots=True)
class TakenReport:
    """A period's counts for one policy domain, taken out of the running counts
    into a report of their own (``report_id``) that is sent once."""

    report_id: str  # "<period begin>.<seq>.<policy domain>"
    period: int  # begin of the period, seconds since the epoch (UTC)
    domain: str
    seq: int  # 0, or 1, 2 ... for counts that arrived after the period's first report
    rows: tuple[tuple[str, int], ...]  # (ReportRow.key(), count)
    state: str  # taken, sending, sent, failed, skipped
    claimed: float = 0.0  # when a run began sending it


def period_begin(ts: float, length: int = DAY) -> int:
    """The period holding ``ts``: periods start at multiples of ``length`` (UTC midnight for a day)."""
    return int(ts // length) * length


def report_id(period: int, seq: int, domain: str) -> str:
    return f"{period}.{seq}.{domain}"
