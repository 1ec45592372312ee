"""Held mail as an operator may safely look at it: headers and a text preview.

Never live HTML: an HTML-only message is shown as its text with the tags taken out,
and every control character (an escape sequence for a terminal, a bidi override) is
replaced, so what the console or the API shows is plain text whatever was sent.
"""

from __future__ import annotations

import re
from email import message_from_bytes
from email.message import Message
from email.policy import compat32
from html.parser import HTMLParser

MAX_PREVIEW = 4000
MAX_HEADERS = 100
# C0/C1 controls (but tab and newline), and the Unicode bidi overrides and isolates.
_UNSAFE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def _safe(text: str) -> str:
    return _UNSAFE.sub("\ufffd", text.replace("\r\n", "\n").replace("\r", "\n"))


class _Text(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: object) -> None:
        if tag in ("script", "style"):
            self._skip += 1
        elif tag in ("br", "p", "div", "tr", "li"):
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style") and self._skip:
            self._skip -= 1

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.parts.append(data)


def _decoded(part: Message) -> str:
    payload = part.get_payload(decode=True) or b""
    charset = part.get_content_charset() or "utf-8"
    try:
        return payload.decode(charset, "replace")
    except LookupError:  # an unknown charset name
        return payload.decode("utf-8", "replace")


def headers(message: bytes) -> list[tuple[str, str]]:
    parsed = message_from_bytes(message, policy=compat32)
    return [(_safe(name), _safe(" ".join(str(value).split())))
            for name, value in list(parsed.items())[:MAX_HEADERS]]


def text_preview(message: bytes, limit: int = MAX_PREVIEW) -> str:
    """The first text/plain part, else the first text/html part as text."""
    parsed = message_from_bytes(message, policy=compat32)
    parts = [p for p in parsed.walk() if not p.is_multipart()]
    plain = next((p for p in parts if p.get_content_type() == "text/plain"), None)
    if plain is not None:
        text = _decoded(plain)
    else:
        html = next((p for p in parts if p.get_content_type() == "text/html"), None)
        if html is None:
            return "(no text part)"
        reader = _Text()
        reader.feed(_decoded(html))
        text = "".join(reader.parts)
    text = _safe(text)
    return text if len(text) <= limit else text[:limit] + "\n[… preview cut]"
