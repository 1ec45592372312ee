"""Our Received: header (RFC 5321 §4.4), with the protocol names of RFC 3848.

It records the client's HELO and address, TLS when used, whether the client
authenticated (ESMTPA/ESMTPSA) and the transaction id that also appears in our
logs.  It never names the login (Postfix's smtpd_sasl_authenticated_header is off
by default for the same reason), nor anything about the password.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.utils import format_datetime


@dataclass(frozen=True)
class ReceivedFacts:
    helo: str | None
    client_ip: str
    hostname: str
    txid: str
    extended: bool  # EHLO rather than HELO
    tls_version: str | None = None
    tls_cipher: str | None = None
    authenticated: bool = False
    recipient: str | None = None  # named only when there is exactly one


def protocol(extended: bool, tls: bool, authenticated: bool) -> str:
    """RFC 3848 §2: SMTP, ESMTP, ESMTPA, ESMTPS, ESMTPSA."""
    if not extended:
        return "SMTP"
    return "ESMTP" + ("S" if tls else "") + ("A" if authenticated else "")


_UNSAFE = re.compile(r"[^A-Za-z0-9.\-_:\[\]]")


def _clean(text: str) -> str:
    # The HELO argument is the client's word: keep it to printable atoms so it
    # cannot fold, inject a header or break the comment.
    return _UNSAFE.sub("?", text)[:255] or "unknown"


@functools.lru_cache(maxsize=4)  # every message in the same second shares the text
def _date_time(second: datetime, offset: timedelta | None) -> str:
    # RFC 5322 §3.3 date-time.  ``offset`` is part of the key: equal instants in
    # two zones compare equal but are written with their own offsets.
    return format_datetime(second)


def _address_literal(ip: str) -> str:
    # RFC 5321 §4.1.3: an IPv6 address literal carries the "IPv6:" tag.
    return f"[IPv6:{ip}]" if ":" in ip else f"[{ip}]"


def received_header(facts: ReceivedFacts, now: datetime) -> bytes:
    tls = facts.tls_version is not None
    lines = [f"Received: from {_clean(facts.helo or 'unknown')} ({_address_literal(facts.client_ip)})"]
    if tls:
        lines.append(f"\t(using {_clean(facts.tls_version or '')} with cipher {_clean(facts.tls_cipher or '')})")
    with_ = protocol(facts.extended, tls, facts.authenticated)
    lines.append(f"\tby {facts.hostname} (Portcullis) with {with_} id {facts.txid}")
    if facts.recipient:
        lines.append(f"\tfor <{facts.recipient}>")
    lines[-1] += ";"
    lines.append(f"\t{_date_time(now.replace(microsecond=0), now.utcoffset())}")
    return ("\r\n".join(lines) + "\r\n").encode("ascii", "replace")
