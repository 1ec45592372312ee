"""Submission: DKIM-sign with every active selector of the From: domain
(gateway/smtp/outbound_signing.py).  The last change to the message: the
signature covers our fields above it and the message exactly as it leaves."""

from __future__ import annotations

from collections.abc import Collection

from gateway.accounts.source import Identity
from gateway.config.dkim import DkimPolicy
from gateway.runtime import Runtime
from gateway.smtp.outbound_signing import sign_outbound
from gateway.smtp.pipeline.step import CONTINUE, Step, StepResult, refuse
from gateway.smtp.state import Transaction


def signing_policy(identity: Identity, rt: Runtime) -> tuple[Collection[str], DkimPolicy]:
    customer = rt.directory.customers.get(identity.customer)
    if customer is None:
        # A customer without a policy file (an account from Dovecot/SQL/LDAP): the
        # gateway's defaults, for the domains its account source vouches for.
        domains = {a.rpartition("@")[2] for a in identity.senders | {identity.login} if "@" in a}
        return frozenset(domains), DkimPolicy()
    return customer.domain_set, customer.dkim


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
