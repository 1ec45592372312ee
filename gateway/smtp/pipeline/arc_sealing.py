"""MX: ARC-seal the message after our checks (RFC 8617 §5.1), when the gateway
file has ``arc_seal:`` (docs/inbound.md).  The seal's key is the newest active RSA
selector of ``arc_seal.domain`` in the DKIM key store (seen published in DNS when
``dkim.check_published`` is on), so ``portcullis keys`` makes and rotates it.

Sealing adds value and never refuses mail: a message we cannot seal goes on
unsealed, and the log says why."""

from __future__ import annotations

import logging

from gateway.dkim.keystore import KeyStore
from gateway.message import Message
from gateway.rules.arc_seal import decide_seal
from gateway.runtime import Runtime
from gateway.smtp.pipeline.step import CONTINUE, Step, StepResult
from gateway.smtp.state import Transaction
from gateway.stamps.arc_seal import SealError, seal_off_loop
from gateway.values.keys import ActiveKey

log = logging.getLogger("portcullis.smtp")


def chain_position(message: Message) -> tuple[int, str]:
    """The highest ``i=`` among the ARC-Seal fields and that seal's ``cv=``."""
    newest, cv = 0, ""
    for field in message.fields:
        if field.key != b"arc-seal":
            continue
        tags = {}
        for part in field.raw_value.replace(b"\r\n", b"").split(b";"):
            name, eq, value = part.partition(b"=")
            if eq:
                tags[name.strip().lower()] = value.strip()
        try:
            i = int(tags.get(b"i", b"0"))
        except ValueError:
            continue
        if i > newest:
            newest, cv = i, tags.get(b"cv", b"").decode("ascii", "replace").lower()
    return newest, cv


def sealing_key(rt: Runtime, keystore: KeyStore, domain: str) -> ActiveKey | None:
    now = rt.clock()
    if rt.key_verdicts is not None and rt.config.dkim.check_published:
        keys = rt.key_verdicts.signing_keys(keystore, domain, now)
    else:
        keys = keystore.active(domain, now)
    # RFC 8617 §4.1.3 ties ARC to DKIM's algorithms; receivers check rsa-sha256.
    return next((k for k in keys if k.algorithm == "rsa-sha256"), None)


async def run(tx: Transaction) -> StepResult:
    rt = tx.runtime
    settings = rt.config.arc_seal
    if settings is None or rt.keystore is None or rt.resolver is None:  # no checks: no verdict
        return CONTINUE
    instances, newest_cv = chain_position(tx.message)
    decision = decide_seal(tx.arc, instances, newest_cv)
    if not decision.seal:
        log.info("txid=%s not ARC-sealed: %s", tx.txid, decision.reason)
        return _count(rt, "unsealed")
    key = sealing_key(rt, rt.keystore, settings.domain)
    if key is None:
        log.error("txid=%s not ARC-sealed: %s has no active RSA key seen in DNS "
                  "(portcullis keys list --dns)", tx.txid, settings.domain)
        return _count(rt, "unsealed")
    try:
        fields = await seal_off_loop(tx.prefix, tx.message, key, rt.config.our_authserv_id,
                                     decision.cv, instances + 1, int(rt.clock()))
    except SealError as exc:
        log.error("txid=%s not ARC-sealed: %s", tx.txid, exc)
        return _count(rt, "unsealed")
    tx.on_top(fields)
    return _count(rt, decision.cv)


def _count(rt: Runtime, outcome: str) -> StepResult:
    if rt.metrics is not None:
        rt.metrics.arc_sealed(outcome)
    return CONTINUE


STEP = Step("arc sealing", run)
