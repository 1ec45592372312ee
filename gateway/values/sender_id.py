"""The X-Portcullis-Sender-Id field, and what one of its tokens says once opened.

gateway/stamps/sender_id.py makes and opens the tokens; gateway/rules/abuse.py
finds them in abuse reports (docs/abuse.md).
"""

from __future__ import annotations

from dataclasses import dataclass

HEADER = "X-Portcullis-Sender-Id"


@dataclass(frozen=True, slots=True)
class SenderId:
    """What a token says once opened."""

    login: str
    txid: str
    sent_at: int
