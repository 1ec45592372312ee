"""The gateway file's ``publish:`` section: what ``portcullis dns records`` tells
customers to put in their zones (docs/dns.md).

    publish:
      spf_include: _spf.isp.example     # the ISP's own SPF record for its outbound MTAs
      # spf: "v=spf1 ip4:192.0.2.0/24 -all"   # or the whole record, instead of spf_include
      dmarc: "v=DMARC1; p=quarantine; rua=mailto:dmarc-reports@isp.example"
      mx_host: mx.isp.example           # default: the gateway's hostname
      mx_priority: 10
      submission_host: smtp.isp.example # default: http.autoconfig.hostname, else hostname
      autoconfig_host: autoconfig.isp.example   # where the autoconfig paths are served
      mta_sts: {mode: testing, max_age: 604800, mx: [], host: null}   # RFC 8461; default none
      tls_rpt: mailto:tlsrpt@isp.example   # RFC 8460 report address(es); unset: no record

Portcullis does not know which machines finally send its customers' mail to the
Internet (the downstream outbound MTA, often behind NAT), so the SPF default is
deliberately mild: ``v=spf1 mx ~all`` is right when the MX host is also the
outbound host, and when it is not, a softfail costs a few spam points rather
than bounces (the gateway's DKIM signature still carries DMARC).  An ISP sets
``spf_include`` to its own SPF record, and the record becomes
``v=spf1 include:_spf.isp.example -all``.

The DMARC default is ``p=none``, the monitoring policy RFC 7489 §6.7 / Appendix
C suggests starting with; raise it once reports show every sender aligned.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from gateway.values.domains import normalise_domain

DEFAULT_SPF_TAIL = "mx ~all"
DEFAULT_DMARC = "v=DMARC1; p=none"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _record_text(value: str, prefix: str) -> str:
    value = " ".join(value.split())
    if not value.isascii() or not value.isprintable():
        raise ValueError("must be printable ASCII text on one line")
    if '"' in value or "\\" in value:
        raise ValueError('must not contain " or \\ (they would need zone-file escaping)')
    if not value.lower().startswith(prefix.lower()):
        raise ValueError(f"must start with {prefix}")
    return value


def _optional_domain(value: str | None) -> str | None:
    return normalise_domain(value) if value is not None else None


def _report_uri(value: str) -> str:
    # RFC 8460 §3: rua is one or more comma-separated mailto: or https: URIs.
    for uri in value.split(","):
        uri = uri.strip()
        if not (uri.startswith("mailto:") and "@" in uri or uri.startswith("https://")):
            raise ValueError(f"{uri!r} is not a mailto: or https: URI (RFC 8460 §3)")
    return value


class MtaStsSettings(Strict):
    """The MTA-STS policy every customer domain publishes (RFC 8461)."""

    # RFC 8461 §5: "testing" first (failures are reported, not enforced), then "enforce".
    mode: Literal["enforce", "testing", "none"] = "testing"
    # RFC 8461 §3.2: at most 31557600; a week lets a changed MX list spread in days.
    max_age: Annotated[int, Field(ge=0, le=31557600)] = 604800
    # MX names beside publish.mx_host (another MX of the ISP, or "*.mx.isp.example").
    mx: tuple[str, ...] = ()
    # Target of the mta-sts.DOMAIN CNAME: the HTTPS front end that serves the policy
    # (default: the gateway's hostname, whose http: port serves it behind that front end).
    host: str | None = None

    @field_validator("mx")
    @classmethod
    def _mx(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        # RFC 8461 §4.1: a pattern may start with "*." (one leftmost label).
        return tuple(("*." + normalise_domain(v[2:])) if v.startswith("*.")
                     else normalise_domain(v) for v in value)

    @field_validator("host")
    @classmethod
    def _host(cls, value: str | None) -> str | None:
        return _optional_domain(value)


class PublishSettings(Strict):
    # The whole SPF record (RFC 7208 §4.5: it starts with "v=spf1").
    spf: str | None = None
    # Or: the name of the ISP's SPF record listing its outbound MTAs (RFC 7208 §5.2).
    spf_include: str | None = None
    # RFC 7489 §6.3: "v=DMARC1" first, then at least p=.
    dmarc: str = DEFAULT_DMARC
    # The customer's MX: the gateway's inbound listener as the Internet sees it.
    mx_host: str | None = None
    mx_priority: Annotated[int, Field(ge=0, le=65535)] = 10
    # The name in the _submission(s)._tcp SRV records.
    submission_host: str | None = None
    # Target of the autoconfig./autodiscover. CNAMEs and the _autodiscover._tcp SRV:
    # the HTTPS host in front of the gateway's autoconfig paths.  Setting it publishes
    # those records even without an `http:` section.
    autoconfig_host: str | None = None
    # MTA-STS (RFC 8461) for the MX above, opt-in (`mta_sts: {}` for the defaults):
    # it needs an HTTPS front end with a certificate for mta-sts.DOMAIN of every domain.
    mta_sts: MtaStsSettings | None = None
    # TLS-RPT (RFC 8460) report address(es), e.g. "mailto:tlsrpt@isp.example".
    tls_rpt: str | None = None

    @field_validator("tls_rpt")
    @classmethod
    def _tls_rpt(cls, value: str | None) -> str | None:
        return _report_uri(_record_text(value, "")) if value is not None else None

    @field_validator("spf")
    @classmethod
    def _spf(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = _record_text(value, "v=spf1")
        if value.lower() != "v=spf1" and not value.lower().startswith("v=spf1 "):
            raise ValueError("must start with v=spf1 followed by a space")
        return value

    @field_validator("dmarc")
    @classmethod
    def _dmarc(cls, value: str) -> str:
        value = _record_text(value, "v=DMARC1")
        tags = [t.strip().partition("=") for t in value.split(";") if t.strip()]
        names = [name.strip() for name, _, _ in tags]
        # RFC 7489 §6.4: v= must be first and p= must come right after it.
        if names[0] != "v" or len(names) < 2 or names[1] != "p":
            raise ValueError('must be "v=DMARC1; p=none|quarantine|reject; ..." (p right after v)')
        if tags[1][2].strip().lower() not in ("none", "quarantine", "reject"):
            raise ValueError("p= must be none, quarantine or reject (RFC 7489 §6.3)")
        return value

    @field_validator("spf_include", "mx_host", "submission_host", "autoconfig_host")
    @classmethod
    def _names(cls, value: str | None) -> str | None:
        return _optional_domain(value)

    @model_validator(mode="after")
    def _one_spf(self) -> PublishSettings:
        if self.spf is not None and self.spf_include is not None:
            raise ValueError("give either spf (the whole record) or spf_include, not both")
        return self

    def spf_record(self) -> str:
        if self.spf is not None:
            return self.spf
        if self.spf_include is not None:
            # The ISP maintains the included record, so a hard fail is safe here.
            return f"v=spf1 include:{self.spf_include} -all"
        return f"v=spf1 {DEFAULT_SPF_TAIL}"
