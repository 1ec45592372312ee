"""DKIM-signing one submitted message: facts → the customer's signing policy → signature.

Called by the handler at end of DATA on the submission listeners, after the
sender checks and our own stamps, as the last change before forwarding (a
signature must cover the message exactly as it leaves).  Ordinary mail is
signed on the event loop, a large message in a worker thread
(gateway/dkim/sign.py: INLINE_MAX_BYTES says why).
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from dataclasses import dataclass

from gateway import replies
from gateway.accounts.source import Identity
from gateway.config.dkim import DkimPolicy
from gateway.dkim.keystore import KeyStore
from gateway.dkim.publication import KeyVerdicts
from gateway.dkim.sign import MalformedMessage, sign_message_where_cheapest, signing_facts
from gateway.message import Message
from gateway.replies import Reply
from gateway.rules.signing import decide_signing

log = logging.getLogger("portcullis.dkim")


@dataclass(frozen=True)
class SigningOutcome:
    refusal: Reply | None
    header: bytes  # the DKIM-Signature fields, to go out above the message
    signatures: tuple[str, ...]  # "d=example.com s=sel a=rsa-sha256", for logs and metrics


async def sign_outbound(keystore: KeyStore, identity: Identity, owned: Collection[str],
                        policy: DkimPolicy, message: Message, now: float, txid: str,
                        prefix: bytes = b"", verdicts: KeyVerdicts | None = None
                        ) -> SigningOutcome:
    """``owned``/``policy``: the account's customer's domains and DKIM policy (a customer
    without a policy file owns nothing here, so its mail is refused rather than signed
    for a domain nobody vouched for).  ``message``: as the handler read it at the end
    of DATA, so the From: signed is the From: the sender check read.  ``prefix``: our
    stamps, which go out above ``message`` and are signed with it."""
    facts = signing_facts(message)
    domain = facts.from_domains[0] if facts.from_domains else None
    if not domain:
        keys = []
    elif verdicts is None:  # dkim.check_published: false
        keys = keystore.active(domain, now)
    else:  # only keys seen published in DNS, else the previous key (docs/dkim.md)
        keys = verdicts.signing_keys(keystore, domain, now)
    decision = decide_signing(facts, owned, policy, keys)
    if decision.log:
        level = logging.ERROR if decision.log_level == "error" else logging.WARNING
        log.log(level, "txid=%s login=%s %s", txid, identity.login, decision.log)
    if not decision.verdict.accept:
        return SigningOutcome(decision.verdict.reply, b"", ())
    if not decision.keys:
        return SigningOutcome(None, b"", ())
    try:
        header = await sign_message_where_cheapest(message, decision.keys, int(now),
                                                   decision.expire_after, prefix=prefix)
    except MalformedMessage:
        return SigningOutcome(replies.MALFORMED_HEADER, b"", ())
    made = tuple(f"d={k.domain} s={k.selector} a={k.algorithm}" for k in decision.keys)
    return SigningOutcome(None, header, made)
