"""The DKIM body hash of a large body, in slabs of whole lines (RFC 6376 §3.4.3, §3.4.4).

Canonicalising a body with whole-buffer passes copies it once or more; for a
message of tens of MB that is what made the gateway's memory several times the
message.  Here the body (a memoryview of the one copy the DATA reader made) is
cut into slabs of about 1 MB that end at a line end, each slab is canonicalised
on its own (relaxed canonicalisation never looks past a line end) and hashed,
and empty lines are held back until a line with content follows, since those at
the very end do not count.  The signer and the verifier both use it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

SLAB = 1 << 20  # bodies up to this size are canonicalised whole, faster


def slab_digest(body: bytes | bytearray | memoryview, canonical_lines: Callable[[bytes], bytes] | None,
                relaxed: bool, length: int | None = None) -> bytes:
    """SHA-256 of the canonical body: ``canonical_lines`` applied to each slab (None:
    simple, the lines as they are), trailing empty lines removed, CRLF after the
    last line (simple: also for an empty body); ``length``: RFC 6376 §3.5 l=."""
    view = memoryview(body)
    digest = hashlib.sha256()
    hashed = 0

    def put(data: bytes) -> None:
        nonlocal hashed
        if length is not None:
            data = data[: max(0, length - hashed)]
        digest.update(data)
        hashed += len(data)

    pending = b""  # CRLFs of empty lines, hashed only when content follows
    seen = False
    start, end = 0, len(view)
    while start < end:
        slab = bytes(view[start : min(start + SLAB, end)])
        if start + len(slab) < end:
            cut = slab.rfind(b"\n") + 1
            if cut:  # a line over 1 MB (the DATA reader refuses those) stays whole
                slab = slab[:cut]
        start += len(slab)
        if canonical_lines is not None:
            slab = canonical_lines(slab)
        text = slab.rstrip(b"\r\n")
        if text:
            put(pending)
            put(text)
            pending = slab[len(text) :]
            seen = True
        else:
            pending += slab
    if seen or not relaxed:
        put(b"\r\n")
    return digest.digest()
