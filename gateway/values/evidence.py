"""What the inbound checks and the content scanner found, as plain values.

The checks (gateway/checks/) make them; the rules (gateway/rules/inbound.py,
content.py) and the stamps (gateway/stamps/authresults.py) read them.  Result
names are RFC 8601's.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class SpfResult:
    result: str  # an RFC 8601 §2.7.2 value
    identity: str  # "mailfrom" or "helo" (RFC 7208 §2.3, §2.4)
    sender: str  # the checked identity: MAIL FROM address, or postmaster@<helo>
    domain: str  # the domain whose policy was evaluated
    explanation: str = ""

    @property
    def property(self) -> tuple[str, str]:
        """The A-R property: (smtp.mailfrom, address) or (smtp.helo, name)."""
        if self.identity == "helo":
            return ("smtp.helo", self.domain)
        return ("smtp.mailfrom", self.sender)


@dataclass(frozen=True, slots=True)
class DkimResult:
    result: str  # pass, fail, neutral, temperror, permerror (RFC 8601 §2.7.1)
    domain: str  # header.d
    selector: str  # header.s
    algorithm: str  # header.a
    b_prefix: str  # header.b: the first 8 characters of b= (RFC 6008 §4)
    identity: str = ""  # header.i, when given
    reason: str = ""


@dataclass(frozen=True, slots=True)
class DmarcResult:
    result: str  # pass, fail, none, temperror, permerror (RFC 8601 §2.7 / RFC 9989 §9.2)
    header_from: str  # the From: domain (header.from)
    policy: str = "none"  # the published policy that applies: p, or sp/np for a subdomain
    disposition: str = "none"  # what the policy asks: one level lower with t=y (RFC 9989 §4.7)
    is_subdomain_policy: bool = False
    spf_aligned: bool = False
    dkim_aligned: bool = False
    aligned_dkim_domains: tuple[str, ...] = field(default=())
    record_domain: str = ""  # the DMARC Policy Domain (RFC 9989 §3.2.5)
    reason: str = ""
    org_domain: str = ""  # the author's Organizational Domain, by the DNS Tree Walk (§4.10.2)
    testing: bool = False  # the record said t=y (RFC 9989 §4.7)


@dataclass(frozen=True, slots=True)
class ArcResult:
    result: str  # none, pass, fail, temperror (RFC 8617 §4.4 cv values + temperror)
    instances: int = 0  # number of ARC sets
    sealer: str = ""  # d= of the newest ARC-Seal: who vouches for the chain
    sealer_selector: str = ""
    sealers: tuple[str, ...] = ()  # d= of every ARC-Seal, newest first
    newest_aar: str = ""  # the newest ARC-Authentication-Results value (what the sealer saw)
    reason: str = ""


@dataclass(frozen=True, slots=True)
class InboundEvidence:
    spf: SpfResult
    dkim: tuple[DkimResult, ...]  # one per DKIM-Signature, top first; () when unsigned
    dmarc: DmarcResult
    arc: ArcResult
    header_from: str | None  # the RFC5322.From domain, None when not exactly one

    @property
    def has_temperror(self) -> bool:
        return "temperror" in (self.spf.result, self.dmarc.result, self.arc.result) or any(
            d.result == "temperror" for d in self.dkim
        )


@dataclass(frozen=True, slots=True)
class ScanResult:
    score: float
    required_score: float
    action: str  # one of gateway.config.content.RSPAMD_ACTIONS
    # Symbol names, highest score first: for logs and the hold record, never for the client.
    symbols: tuple[str, ...]
    message_id: str | None
    # rspamd stopped early on a pre-result (GTUBE, settings, a rate limit...).
    skipped: bool
    # Wall-clock seconds of the HTTP exchange, as we saw it.
    elapsed: float

    def evidence(self, top: int = 20) -> dict[str, object]:
        """What goes into a log line or a hold record."""
        return {
            "scanner": "rspamd",
            "score": round(self.score, 2),
            "required_score": round(self.required_score, 2),
            "rspamd_action": self.action,
            "symbols": list(self.symbols[:top]),
        }
