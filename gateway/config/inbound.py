"""A customer's inbound policy: what to do with mail that fails authentication.

The ``inbound:`` section of a customer's policy file (optional)::

    inbound:
      default:                 # every domain of the customer
        dmarc_reject: reject   # DMARC fail, sender's policy p=reject
        dmarc_quarantine: quarantine
        spf_fail: tag
        temperror: tag         # a DNS failure during the checks
        trusted_arc_sealers: [lists.example.org]
      domains:                 # per recipient domain, overrides default entirely
        strict.example:
          spf_fail: reject

Actions (RFC 7372 and RFC 3463 codes in gateway/replies.py):
  reject      550 5.7.1 (SPF) / 550 5.7.26 (DMARC) with the reason
  tempfail    451 4.7.x: the sender retries later
  hold        accepted (250) and kept in the hold store for the ISP's review, with the
              quarantine field; nothing reaches the mailbox until it is released
  quarantine  accepted with ``X-Portcullis-Quarantine: <reason>`` for the downstream to act on
  tag         accepted with the Authentication-Results header only
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict, field_validator

from gateway.config.screening import CustomerScreening
from gateway.values.domains import normalise_domain


class InboundAction(StrEnum):
    TAG = "tag"
    QUARANTINE = "quarantine"
    HOLD = "hold"
    TEMPFAIL = "tempfail"
    REJECT = "reject"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class InboundDomainPolicy(Strict):
    # Sensible defaults (issue 5): honour DMARC p=reject, tag the rest.
    dmarc_reject: InboundAction = InboundAction.REJECT
    dmarc_quarantine: InboundAction = InboundAction.TAG
    spf_fail: InboundAction = InboundAction.TAG
    temperror: InboundAction = InboundAction.TAG
    # ARC sealers (d= of the newest ARC-Seal) trusted to have checked the mail before
    # it was changed (mailing lists, forwarders): when their chain passes, a DMARC
    # failure is only tagged (RFC 7489 §7.2.1 "local_policy", RFC 8617 §7.2).
    trusted_arc_sealers: tuple[str, ...] = ()

    @field_validator("temperror")
    @classmethod
    def _temperror(cls, value: InboundAction) -> InboundAction:
        # A DNS failure says nothing about the sender: refusing for good would bounce
        # legitimate mail because of our resolver (RFC 7208 §8.6, RFC 7489 §6.6.2).
        if value is InboundAction.REJECT:
            raise ValueError("temperror cannot be 'reject'; use tempfail, hold, quarantine or tag")
        return value

    @field_validator("trusted_arc_sealers", mode="before")
    @classmethod
    def _sealers(cls, value):
        if isinstance(value, str):
            value = [value]
        return tuple(normalise_domain(v) for v in value)


class InboundPolicy(Strict):
    default: InboundDomainPolicy = InboundDomainPolicy()
    domains: dict[str, InboundDomainPolicy] = {}
    # Stricter MX screening for this customer's domains, never looser (docs/screening.md).
    screening: CustomerScreening | None = None

    @field_validator("domains", mode="before")
    @classmethod
    def _domains(cls, value):
        if not isinstance(value, dict):
            return value
        return {normalise_domain(k): v for k, v in value.items()}

    def for_domain(self, domain: str) -> InboundDomainPolicy:
        return self.domains.get(domain.rstrip(".").lower(), self.default)
