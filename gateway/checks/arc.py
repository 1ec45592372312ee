"""ARC (RFC 8617) chain validation with dkimpy, keys fetched through our resolver.

dkimpy's ``arc_verify`` answers a chain whose newest seal says ``cv=fail`` with
``None`` instead of ``fail``; RFC 8617 §5.2 says such a chain has failed, so
``None`` becomes ``fail`` here.  Key look-ups go through the same
pre-fetched :class:`~gateway.checks.dkim_verify.KeyTable` as DKIM, so a DNS
failure is ``temperror``, not ``fail``.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import Executor

import dkim

from gateway.checks.dkim_verify import (
    MIN_RSA_BITS,
    KeyTable,
    _quiet,
    fetch_keys,
    key_name,
)
from gateway.checks.dns import DnsTempError, Resolver
from gateway.message import Message
from gateway.values.evidence import ArcResult

ARC_HEADERS = (b"arc-seal", b"arc-message-signature")


_NO_CHAIN = ArcResult("none")  # frozen: one for all the mail without ARC


async def verify_arc(
    resolver: Resolver, message: Message, *, executor: Executor | None = None
) -> ArcResult:
    """``message``: as gateway/message.py read it (dkimpy reads the chain itself, from
    its bytes; the key names to fetch come from our fields)."""
    if not message.has(b"arc-seal"):
        return _NO_CHAIN
    names = []
    for field in message.fields:
        if field.key not in ARC_HEADERS:
            continue
        tags = _tags(field.raw_value.replace(b"\r\n", b""))
        if b"s" in tags and b"d" in tags:
            names.append(key_name(tags[b"s"], tags[b"d"]))
    keys = await fetch_keys(resolver, names)
    loop = asyncio.get_running_loop()
    seals = sum(1 for f in message.fields if f.key == b"arc-seal")
    return await loop.run_in_executor(executor, _verify_chain, message.data, keys, seals)


def _tags(value: bytes) -> dict[bytes, bytes]:
    try:
        return dkim.util.parse_tag_value(value)
    except dkim.util.InvalidTagValueList:
        return {}


def _verify_chain(message: bytes, keys: KeyTable, seals: int) -> ArcResult:
    try:
        cv, sets, reason = dkim.arc_verify(
            message, logger=_quiet, dnsfunc=keys.dnsfunc, minkey=MIN_RSA_BITS
        )
    except DnsTempError as e:
        return ArcResult("temperror", reason=f"key lookup failed: {e}")
    # dkimpy lists the sets newest first.
    sealers = tuple(_text(s.get("as-domain", b"")) for s in sets)
    newest = sets[0] if sets else {}
    common = dict(
        instances=len(sets) or seals,
        sealer=sealers[0] if sealers else "",
        sealer_selector=_text(newest.get("as-selector", b"")),
        sealers=sealers,
        newest_aar=_text(newest.get("aar-value", b"")).strip(),
        reason=reason,
    )
    if cv == dkim.CV_Pass:
        return ArcResult("pass", **common)
    if cv == dkim.CV_None:
        return ArcResult("none", **common)
    # CV_Fail, and None for "a seal said cv=fail": both are arc=fail (RFC 8617 §5.2).
    return ArcResult("fail", **common)


def _text(value: bytes | str) -> str:
    return value.decode("ascii", "replace") if isinstance(value, bytes) else value
