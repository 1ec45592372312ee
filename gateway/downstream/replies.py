"""Turning a downstream server's answer into the reply our client hears."""

from __future__ import annotations

import re
from functools import lru_cache

from gateway.replies import Reply

_ENHANCED = re.compile(r"^([245])\.(\d{1,3})\.(\d{1,3})\s+")


# A downstream says the same few things over and over ("250 2.1.5 Ok" to every
# RCPT): each text is parsed once.  Replies are frozen values, safe to share.
@lru_cache(maxsize=1024)
def relay_reply(code: int, message: str) -> Reply:
    """The downstream's code, enhanced code and text, passed back to our client.

    A reply without an enhanced code gets the generic one of its class
    (RFC 3463 §3.1: X.0.0); a multi-line reply keeps its lines.
    """
    lines = [line.strip() for line in message.splitlines() if line.strip()] or ["(no text)"]
    enhanced = ""
    m = _ENHANCED.match(lines[0])
    if m and m.group(1) == str(code)[0]:
        enhanced = f"{m.group(1)}.{m.group(2)}.{m.group(3)}"
    cleaned = [_ENHANCED.sub("", line, count=1) for line in lines]
    if not 200 <= code <= 599:
        return Reply(451, "4.4.0", "Downstream mail server sent an invalid reply, try again later")
    return Reply(code, enhanced or f"{str(code)[0]}.0.0", "\n".join(cleaned), relayed=True)
