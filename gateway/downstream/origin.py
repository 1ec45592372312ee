"""Telling the downstream who the client really is: Postfix's XCLIENT and XFORWARD.

Behind the gateway, Postfix sees only the gateway's address, so its own client
checks, policy services and logs see nobody.  When the downstream offers them
(an MTA lists us in ``smtpd_authorized_xclient_hosts`` / ``..._xforward_hosts``):

* XCLIENT (www.postfix.org/XCLIENT_README.html) before each transaction: the
  client's address, HELO and login become the session's own, for its
  restrictions (``permit_sasl_authenticated``, RBLs, policy services), its log and
  its Received header.  The server answers 220 and forgets the EHLO: we EHLO again.
* XFORWARD (XFORWARD_README) otherwise, for its log and Received header; and when
  both are offered, XFORWARD IDENT=<our transaction id> as well, since XCLIENT has
  no attribute for it: Postfix logs it next to its queue id.

Values are xtext (RFC 3461 §4); an attribute we do not know is [UNAVAILABLE].
"""

from __future__ import annotations

import re
from dataclasses import dataclass

UNAVAILABLE = "[UNAVAILABLE]"
# Postfix takes XFORWARD lines up to its line limit; we keep each well inside
# RFC 5321's 512 octets by sending attributes over several commands.
MAX_LINE = 500


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a message came from, as the downstream should see it."""

    client_ip: str
    helo: str | None
    login: str | None
    ident: str  # our transaction id
    extended: bool = True  # EHLO (ESMTP) or HELO (SMTP)


def offered(keywords: str | None) -> frozenset[str]:
    """``XCLIENT NAME ADDR HELO`` from EHLO (aiosmtplib keeps the words after the
    keyword) → the attribute names, upper-cased."""
    return frozenset(word.upper() for word in (keywords or "").split())


def xtext(value: str) -> str:
    """RFC 3461 §4: '+', '=' and anything outside ! .. ~ as +HH (UTF-8 octets)."""
    out = []
    for octet in value.encode("utf-8"):
        char = chr(octet)
        out.append(f"+{octet:02X}" if octet < 33 or octet > 126 or char in "+=" else char)
    return "".join(out)


def _address(ip: str) -> str:
    # Postfix's XCLIENT/XFORWARD ADDR: an IPv6 address carries the IPV6: prefix.
    return f"IPV6:{ip}" if ":" in ip else ip


def _attributes(origin: Origin) -> dict[str, str]:
    known = origin.client_ip not in ("", "unknown")
    return {
        # No reverse lookup is made here: the name is unknown rather than wrong.
        "NAME": UNAVAILABLE,
        "ADDR": _address(origin.client_ip) if known else UNAVAILABLE,
        "PROTO": "ESMTP" if origin.extended else "SMTP",
        "HELO": xtext(origin.helo) if origin.helo else UNAVAILABLE,
        "LOGIN": xtext(origin.login) if origin.login else UNAVAILABLE,
        "IDENT": xtext(origin.ident),
        "SOURCE": "REMOTE",
    }


# What may follow EHLO as the client's name: one printable ASCII word.
_EHLO_WORD = re.compile(r"[!-~]{1,255}")


def ehlo_name(origin: Origin, ours: str) -> bytes:
    """The name for the EHLO that follows XCLIENT: the client's own HELO when it is
    one plain word (it goes on our command line), else our hostname."""
    helo = origin.helo or ""
    return (helo if _EHLO_WORD.fullmatch(helo) else ours).encode("ascii")


def xclient_command(origin: Origin, names: frozenset[str]) -> bytes:
    """One XCLIENT with every attribute we know that the server offers (LOGIN too:
    [UNAVAILABLE] clears a login a reused connection's last client had)."""
    values = _attributes(origin)
    parts = [f"{name}={values[name]}" for name in ("NAME", "ADDR", "PROTO", "HELO", "LOGIN")
             if name in names]
    return ("XCLIENT " + " ".join(parts)).encode("ascii")


def xforward_commands(origin: Origin, names: frozenset[str], ident_only: bool) -> list[bytes]:
    """XFORWARD commands carrying the offered attributes (only IDENT after an
    XCLIENT), each line within MAX_LINE."""
    values = _attributes(origin)
    wanted = ("IDENT",) if ident_only else ("NAME", "ADDR", "PROTO", "HELO", "IDENT", "SOURCE")
    lines: list[str] = []
    for name in wanted:
        if name not in names:
            continue
        part = f"{name}={values[name]}"
        if lines and len(lines[-1]) + 1 + len(part) <= MAX_LINE:
            lines[-1] += " " + part
        else:
            lines.append("XFORWARD " + part)
    return [line.encode("ascii") for line in lines]
