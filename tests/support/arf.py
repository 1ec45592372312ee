"""Abuse reports as mailbox providers send them: ARF (RFC 5965) and plain forwards."""

from __future__ import annotations

import email
import email.policy
from email.message import Message
from email.mime.message import MIMEMessage
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText


def _crlf(raw: bytes) -> bytes:
    return raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def _original(raw: bytes) -> Message:
    return email.message_from_bytes(raw, policy=email.policy.compat32)


def arf_report(original: bytes, feedback_type: str = "abuse", headers_only: bool = False,
               to: str = "abuse@acme.example") -> bytes:
    """RFC 5965 §2: multipart/report; report-type=feedback-report, a human part, the
    machine-readable message/feedback-report, and the message (or its headers)."""
    msg = MIMEMultipart("report", report_type="feedback-report")
    msg["From"] = "fbl@mailbox.example"
    msg["To"] = to
    msg["Subject"] = "Abuse report"
    msg["Message-ID"] = "<report-1@mailbox.example>"
    msg.attach(MIMEText("This is an email abuse report for a message we received.\n"))
    fields = Message()
    fields["Content-Type"] = "message/feedback-report"
    fields.set_payload(f"Feedback-Type: {feedback_type}\nUser-Agent: TestFBL/1.0\n"
                       "Version: 1\nSource-IP: 192.0.2.7\n")
    msg.attach(fields)
    if headers_only:
        head = _crlf(original).split(b"\r\n\r\n", 1)[0].decode()
        part = MIMEText(head + "\n", "rfc822-headers")
        msg.attach(part)
    else:
        msg.attach(MIMEMessage(_original(original)))
    return _crlf(msg.as_bytes())


def forwarded_as_attachment(original: bytes, to: str = "abuse@acme.example") -> bytes:
    msg = MIMEMultipart()
    msg["From"] = "angry.user@mailbox.example"
    msg["To"] = to
    msg["Subject"] = "Fwd: spam from your customer"
    msg.attach(MIMEText("I never asked for this.\n"))
    msg.attach(MIMEMessage(_original(original)))
    return _crlf(msg.as_bytes())


def forwarded_inline(original: bytes, to: str = "abuse@acme.example") -> bytes:
    quoted = "\n".join("> " + line for line in _crlf(original).decode().split("\r\n"))
    return _crlf(f"From: angry.user@mailbox.example\nTo: {to}\nSubject: spam\n\n"
                 f"Your customer sent me this:\n\n{quoted}\n".encode())
