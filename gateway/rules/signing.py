"""Whether and with which keys an outbound message is DKIM-signed: a pure decision.

Facts in (the From: domains, the customer's domains and DKIM policy, the keys
active now), a :class:`SigningDecision` out.  No clock, no key store, no socket:
the caller asks ``KeyStore.active(domain, now)`` and passes the answer.

Order of the checks, each with its reply:

1. the header section does not parse          → 550 5.6.0 MALFORMED_HEADER
2. not exactly one From: field                → 550 5.6.0 FROM_HEADER_COUNT
3. From: has no address                       → 550 5.6.0 MALFORMED_HEADER
4. From: addresses in several domains         → 550 5.6.0 FROM_SEVERAL_DOMAINS
5. From: domain not owned by the customer     → 550 5.7.1 FROM_DOMAIN_NOT_OWNED
6. domain not signed by the policy            → accept, no signature
7. no active key: policy ``tempfail``         → 451 4.7.0 SIGNING_KEY_UNAVAILABLE + error log
                  policy ``send-unsigned``    → accept, no signature + warning log
8. otherwise                                  → accept, sign with every active key, or
                                                with one (RSA first) when the domain
                                                has ``multiple_signatures: false``
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Literal

from gateway import replies
from gateway.config.dkim import DkimPolicy
from gateway.replies import Verdict
from gateway.values.keys import ActiveKey, SigningFacts


@dataclass(frozen=True, slots=True)
class SigningDecision:
    verdict: Verdict
    # Sign with these, in this order; empty when the message leaves unsigned.
    keys: tuple[ActiveKey, ...] = ()
    expire_after: int | None = None
    # One line for the operator's log, and how loud; None when there is nothing to say.
    log: str | None = None
    log_level: Literal["error", "warning"] | None = None

    @property
    def signs(self) -> bool:
        return self.verdict.accept and bool(self.keys)


def _refuse(reply: replies.Reply) -> SigningDecision:
    return SigningDecision(Verdict.refuse(reply))


def decide_signing(
    facts: SigningFacts,
    owned_domains: Collection[str],
    policy: DkimPolicy,
    active_keys: Sequence[ActiveKey],
) -> SigningDecision:
    """The signing verdict for one message of one customer (see the module doc)."""
    if not facts.header_ok:
        return _refuse(replies.MALFORMED_HEADER)
    if facts.from_fields != 1:
        return _refuse(replies.FROM_HEADER_COUNT)
    if not facts.from_domains:
        return _refuse(replies.MALFORMED_HEADER)
    domain = facts.from_domains[0]
    if any(d != domain for d in facts.from_domains):
        return _refuse(replies.FROM_SEVERAL_DOMAINS)
    if domain not in owned_domains:
        return _refuse(replies.FROM_DOMAIN_NOT_OWNED)

    settings = policy.settings_for(domain, owned_domains)
    if settings is None:
        return SigningDecision(Verdict.ok())
    keys = [k for k in active_keys if k.domain == domain]
    if not keys:
        if settings.missing_key == "send-unsigned":
            return SigningDecision(
                Verdict.ok(), log=f"dkim: no active key for {domain}; sent unsigned as its policy allows",
                log_level="warning",
            )
        return SigningDecision(
            Verdict.refuse(replies.SIGNING_KEY_UNAVAILABLE),
            log=(f"dkim: no active key for {domain}, which is signed by policy; mail from it is "
                 f"deferred (451) until a selector is active: see `portcullis keys list`"),
            log_level="error",
        )
    if not settings.multiple_signatures:
        # One signature only (relays that refuse several): RSA is the one every
        # verifier can check (RFC 8463 §5 expects Ed25519 to come with RSA for now).
        keys = [next((k for k in keys if k.algorithm == "rsa-sha256"), keys[0])]
    return SigningDecision(Verdict.ok(), tuple(keys), settings.expire_after)
