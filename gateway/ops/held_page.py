"""The account holder's side of a hold: a signed, expiring link in the notice to a
page on the ops HTTP port that lists what was held from their account and why.

The link carries the login and an expiry, signed with HMAC-SHA256 under a key
derived from the gateway's abuse secret (the sender identifier's, so every gateway
of a cluster opens every other's links): no session, no password, nothing stored;
it shows that account's held mail and nothing else, until it expires.

The page says why in the account holder's words and the facts that matter to
them (which limit, the would-be reply, the DMARC domain), never rspamd's raw
symbols: they name the rules a spammer would have to avoid (docs/abuse.md).
Pure: building and opening tokens, choosing what to show, the HTML.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

PATH = "/held"

# What held mail is, to the person whose mail it is (HeldMessage.reason).
_WHY = {
    "content": "our spam filter found it suspicious",
    "quota": "your account had reached a sending limit",
    "suspended": "your account was suspended from sending",
    "inbound": "it failed the sender's domain authentication policy",
}
# The evidence a customer may see; anything else (rspamd's symbols, scores of
# single rules, internal ids) stays with the abuse desk.
_SHOWN = {
    "limit": "limit reached",
    "would_answer": "reply your mail program would have had",
    "score": "spam score",
    "header_from": "sender's domain",
    "disposition": "that domain's policy",
}


def _key(secret: str | bytes) -> bytes:
    raw = secret.encode() if isinstance(secret, str) else secret
    return hmac.new(b"portcullis held-page", raw, hashlib.sha256).digest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class HeldLinks:
    """Makes and opens the page's tokens.  The first secret signs; every one opens
    (the abuse secret's rotation: ``abuse.previous_secrets``)."""

    def __init__(self, secrets_in_force: Sequence[str | bytes]):
        if not secrets_in_force:
            raise ValueError("at least one secret")
        self._keys = [_key(s) for s in secrets_in_force]

    def make(self, login: str, expires: float) -> str:
        body = f"{_b64(login.lower().encode())}.{int(expires)}"
        return f"{body}.{_b64(hmac.new(self._keys[0], body.encode(), hashlib.sha256).digest())}"

    def open(self, token: str, now: float) -> tuple[str, float] | None:
        """The login the token shows and when it expires, or None: not ours,
        altered, or expired."""
        if len(token) > 1000:
            return None
        body, _, mac = token.rpartition(".")
        login_part, _, expires = body.partition(".")
        if not login_part or not expires.isdigit():
            return None
        try:
            given = _unb64(mac)
            login = _unb64(login_part).decode()
        except (ValueError, UnicodeDecodeError):
            return None
        if not any(hmac.compare_digest(given, hmac.new(k, body.encode(), hashlib.sha256).digest())
                   for k in self._keys):
            return None
        return (login, float(expires)) if now < int(expires) else None


@dataclass(frozen=True, slots=True)
class HeldEntry:
    """One held message as its account holder sees it."""

    held_at: float
    recipients: tuple[str, ...]
    subject: str
    why: str
    facts: tuple[tuple[str, str], ...]


def customer_view(held_at: float, recipients: Sequence[str], subject: str, reason: str,
                  evidence: Mapping[str, Any]) -> HeldEntry:
    facts = tuple((label, str(evidence[key])) for key, label in _SHOWN.items() if key in evidence)
    return HeldEntry(held_at, tuple(recipients), subject, _WHY.get(reason, "it was held for review"),
                     facts)


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M UTC")


def render_page(login: str, entries: Sequence[HeldEntry], expires: float, hostname: str) -> str:
    """The page, every value escaped (subjects and addresses are the sender's text)."""
    e = html.escape
    rows = []
    for entry in entries:
        facts = "".join(f"<li>{e(label)}: {e(value)}</li>" for label, value in entry.facts)
        rows.append(
            f"<tr><td>{e(_when(entry.held_at))}</td><td>{e(entry.subject or '(no subject)')}</td>"
            f"<td>{e(', '.join(entry.recipients))}</td><td>{e(entry.why)}"
            f"{f'<ul>{facts}</ul>' if facts else ''}</td></tr>")
    table = ("<table><tr><th>held at</th><th>subject</th><th>to</th><th>why</th></tr>"
             + "".join(rows) + "</table>") if rows else "<p>Nothing from your account is held now.</p>"
    return (
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>Held mail</title></head><body>"
        f"<h1>Mail from {e(login)} held for review</h1>{table}"
        "<p>Our staff review held mail and deliver what is not spam. If you did not send "
        "these messages, change your password now and contact our support.</p>"
        f"<p>This page is valid until {e(_when(expires))}. {e(hostname)}</p></body></html>")
