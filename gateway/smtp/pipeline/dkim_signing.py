"""Submission: DKIM-sign with every active selector of the From: domain
(gateway/smtp/outbound_signing.py).  The last change to the message: the
signature covers our fields above it and the message exactly as it leaves."""

from __future__ import annotations

from collections.abc import Collection

from gateway.accounts.source import Identity
from gateway.config.dkim import DkimPolicy
from gateway.rules.senders import signing_domains
from gateway.runtime import Runtime
from gateway.smtp.outbound_signing import sign_outbound
from gateway.smtp.pipeline.sender_grants import sender_grants
from gateway.smtp.pipeline.step import CONTINUE, Step, StepResult, refuse
from gateway.smtp.state import Transaction


def signing_policy(identity: Identity, rt: Runtime) -> tuple[Collection[str], DkimPolicy]:
    widened, _, customer = sender_grants(rt, identity)
    # Its customer's domains (none for the default policy) and those of the senders
    # it is granted (checked at MAIL and DATA by the same rule): a grant never passes
    # MAIL only to fail here.  The DKIM policy is its file's, or default_policy's.
    return signing_domains(widened, customer.domain_set), customer.dkim


async def run(tx: Transaction) -> StepResult:
    rt, identity = tx.runtime, tx.session.identity
    if rt.keystore is None or identity is None:
        return CONTINUE
    signed = await sign_outbound(rt.keystore, identity, *signing_policy(identity, rt),
                                 tx.message, rt.clock(), tx.txid, prefix=tx.prefix,
                                 verdicts=rt.key_verdicts if rt.config.dkim.check_published else None)
    if signed.refusal is not None:
        return refuse(signed.refusal, "dkim.signing")
    tx.on_top(signed.header)
    if rt.metrics is not None:
        for signature in signed.signatures:
            rt.metrics.dkim_signed(signature.rpartition("a=")[2])
    return CONTINUE


STEP = Step("dkim signing", run)
