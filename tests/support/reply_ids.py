"""The ``(id …)`` our 4xx/5xx replies end with (gateway/smtp/protocol.py): the
connection id, or the transaction id (connection id, dot, number)."""

from __future__ import annotations

import re

ID = re.compile(rb" \(id ([A-Z2-7]{12}(?:\.\d+)?)\)$")


def without_id(text: bytes) -> bytes:
    """The reply's words, for comparing replies that differ only by whose they are."""
    assert ID.search(text), f"no id in {text!r}"
    return ID.sub(b"", text)
