"""Abuse reports: role mailboxes, reading a report, and whose mail it is about.

Pure functions over bytes and plain data: no store, no clock, no socket.

* RFC 2142 §2 / RFC 5321 §4.5.1: ``abuse@`` and ``postmaster@`` of every domain
  we serve are always accepted inbound, whatever the customer's inbound policy.
* A report is either ARF (RFC 5965: ``multipart/report;
  report-type=feedback-report`` with a ``message/feedback-report`` part and the
  offending message or its headers) or a plain forward: the offending message
  attached as ``message/rfc822`` / ``text/rfc822-headers``, or its headers pasted
  into the text.  In each we look for our ``X-Portcullis-Sender-Id`` header.
* Only a token that opens with our key (gateway/stamps/sender_id.py) attributes
  the report; anything else is "not ours" and is only passed on.
"""

from __future__ import annotations

import email
import email.policy
import re
from collections.abc import Callable
from dataclasses import dataclass
from email.message import Message

from gateway.config.abuse import ROLE_MAILBOXES
from gateway.values.sender_id import HEADER, SenderId

# RFC 5965 §7.3 feedback types that are complaints about the mail itself.
# "not-spam" and "auth-failure" are not complaints; "other" is too vague to count.
COMPLAINT_TYPES = frozenset({"abuse", "fraud", "virus"})

_TOKEN_LINE = re.compile(
    rb"^[>\s]*" + re.escape(HEADER.encode()) + rb"\s*:\s*(v1\.[A-Za-z0-9_-]+)", re.I | re.M)


def is_role_recipient(mailbox: str, owned: Callable[[str], bool]) -> bool:
    """abuse@ or postmaster@ a domain we serve (local part compared without case:
    RFC 5321 §4.5.1 says so for postmaster, and nobody spells abuse@ in capitals on purpose)."""
    local, at, domain = mailbox.rpartition("@")
    return bool(at) and local.lower() in ROLE_MAILBOXES and owned(domain.lower().rstrip("."))


def is_abuse_mailbox(mailbox: str) -> bool:
    return mailbox.rpartition("@")[0].lower() == "abuse"


@dataclass(frozen=True, slots=True)
class Report:
    """What a message sent to abuse@ says, before we know whose mail it is about."""

    kind: str  # "arf", "forward" or "none" (nothing that looks like a report)
    feedback_type: str  # ARF Feedback-Type, lower-case; "abuse" for a plain forward
    tokens: tuple[str, ...]  # our identifiers found in it, in order, without duplicates
    reported_message_id: str = ""
    source_ip: str = ""

    @property
    def is_complaint(self) -> bool:
        return self.kind != "none" and self.feedback_type in COMPLAINT_TYPES


@dataclass(frozen=True, slots=True)
class Attribution:
    """A report matched to the account that sent the mail it is about."""

    login: str
    txid: str
    sent_at: int


def read_report(raw: bytes) -> Report:
    """Parse a message sent to abuse@ (takes about 1 ms per 100 KB: call it off the
    event loop for large messages)."""
    msg = email.message_from_bytes(raw, policy=email.policy.compat32)
    tokens: list[str] = []
    feedback_type, kind, message_id, source_ip = "", "none", "", ""
    if msg.get_content_type() == "multipart/report" and \
            (msg.get_param("report-type") or "").lower() == "feedback-report":
        kind = "arf"
        for part in msg.walk():
            if part.get_content_type() == "message/feedback-report":
                fields = _feedback_fields(part)
                feedback_type = fields.get("feedback-type", "").lower()
                source_ip = fields.get("source-ip", "")
    for part in msg.walk():
        ctype = part.get_content_type()
        if ctype == "message/rfc822":
            for inner in _attached_messages(part):
                tokens += [str(v) for v in inner.get_all(HEADER, [])]
                message_id = message_id or str(inner.get("Message-ID", "")).strip()
        elif ctype in ("text/rfc822-headers", "text/plain") and not part.is_multipart():
            payload = part.get_payload(decode=True) or b""
            tokens += [m.decode() for m in _TOKEN_LINE.findall(payload)]
            if ctype == "text/rfc822-headers":
                headers = email.message_from_bytes(payload, policy=email.policy.compat32)
                message_id = message_id or str(headers.get("Message-ID", "")).strip()
    tokens = list(dict.fromkeys(t.strip() for t in tokens if t.strip()))
    if kind == "none" and tokens:
        kind, feedback_type = "forward", "abuse"
    return Report(kind, feedback_type, tuple(tokens), message_id, source_ip)


def attribute(report: Report, open_token: Callable[[str], SenderId | None]) -> list[Attribution]:
    """The accounts the report is about: one per message of ours it quotes, only for
    tokens that open with our key, and only when the report is a complaint."""
    if not report.is_complaint:
        return []
    out: dict[str, Attribution] = {}
    for token in report.tokens:
        sid = open_token(token)
        if sid is not None and sid.txid not in out:
            out[sid.txid] = Attribution(sid.login.lower(), sid.txid, sid.sent_at)
    return list(out.values())


def _feedback_fields(part: Message) -> dict[str, str]:
    """RFC 5965 §3.1: the machine-readable part is a header block of its own."""
    payload = part.get_payload()
    if isinstance(payload, list):  # the email package parsed it as a message/*
        block = payload[0] if payload else None
        items = block.items() if block is not None else []
    else:
        raw = part.get_payload(decode=True) or b""
        items = email.message_from_bytes(raw, policy=email.policy.compat32).items()
    return {k.lower(): str(v).strip() for k, v in items}


def _attached_messages(part: Message) -> list[Message]:
    payload = part.get_payload()
    if isinstance(payload, list):
        return [p for p in payload if isinstance(p, Message)]
    raw = part.get_payload(decode=True) or b""
    return [email.message_from_bytes(raw, policy=email.policy.compat32)]
