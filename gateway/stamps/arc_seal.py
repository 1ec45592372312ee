"""An ARC set (RFC 8617 §5.1): ARC-Authentication-Results, ARC-Message-Signature
and ARC-Seal, made by dkimpy's ``arc_sign`` from our Authentication-Results.

dkimpy builds the AAR from the A-R fields carrying our authserv-id (the inbound
checks removed any a sender forged, RFC 8601 §5) and takes ``cv=`` from their
``arc=`` result, which is our verdict on the chain; the step that calls this has
already decided that verdict may be sealed (gateway/rules/arc_seal.py) and checks
that the seal says what it decided.  dkimpy's RSA is pure Python: always call
:func:`seal_off_loop` from async code.
"""

from __future__ import annotations

import asyncio
import re
from concurrent.futures import Executor

import dkim
from cryptography.hazmat.primitives import serialization

from gateway.values.keys import ActiveKey

_CV = re.compile(rb"(?:^|;)\s*cv\s*=\s*([a-z]+)", re.IGNORECASE)


class SealError(Exception):
    """dkimpy made no set (no A-R of ours, too many instances, a bad key)."""


def seal(message: bytes, key: ActiveKey, authserv_id: str, timestamp: int) -> tuple[bytes, str]:
    """The three fields to put on top of ``message`` (newest first, as RFC 8617 §4.1
    orders them), and the ``cv=`` the seal carries."""
    pem = key.private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption())
    try:
        fields = dkim.arc_sign(message, key.selector.encode(), key.domain.encode(), pem,
                               authserv_id.encode(), timestamp=timestamp)
    except dkim.DKIMException as exc:
        raise SealError(f"{type(exc).__name__}: {exc}") from exc
    if not fields:
        raise SealError("dkimpy made no ARC set (no Authentication-Results of ours?)")
    as_value = fields[0].split(b":", 1)[1].replace(b"\r\n", b"")
    cv = _CV.search(as_value)
    return b"".join(fields), cv.group(1).decode().lower() if cv else ""


async def seal_off_loop(prefix: bytes, message: bytes, key: ActiveKey, authserv_id: str,
                        timestamp: int, executor: Executor | None = None) -> tuple[bytes, str]:
    """``prefix``: our fields above ``message`` (our A-R among them); both are sealed."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(executor, seal, prefix + message, key, authserv_id,
                                      timestamp)
