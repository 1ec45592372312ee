"""Envelope addresses, parsed strictly as RFC 5321 §4.1.2 defines a Mailbox.

    Mailbox    = Local-part "@" ( Domain / address-literal )
    Local-part = Dot-string / Quoted-string

Anything else (source routes left in, bang paths, unbalanced quotes, control
characters, empty labels) is not a mailbox and the caller refuses it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from gateway.values.domains import normalise_domain

# RFC 5321 atext, plus the dot between atoms.
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]"
_DOT_STRING = re.compile(rf"^{_ATEXT}+(?:\.{_ATEXT}+)*$")
# Quoted-string: printable ASCII except " and \, or a backslash pair.
_QUOTED_STRING = re.compile(r'^"(?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\[\x20-\x7e])*"$')
_ADDRESS_LITERAL = re.compile(r"^\[[^\[\]\\]*\]$")
# C0 controls and DEL: never in an address (RFC 5321 §4.1.2 has none of them).
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class NotAMailbox(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Mailbox:
    local: str  # as sent (case kept: RFC 5321 §2.4 says only the target host may fold it)
    domain: str  # normalised (lower-case, no trailing dot) or an [address-literal] as sent
    quoted: bool = False

    @property
    def is_address_literal(self) -> bool:
        return self.domain.startswith("[")

    @property
    def unquoted_local(self) -> str:
        if not self.quoted:
            return self.local
        return re.sub(r"\\(.)", r"\1", self.local[1:-1])

    def __str__(self) -> str:
        return f"{self.local}@{self.domain}"

    def key(self) -> str:
        """The form used to compare addresses: local part and domain, lower-case."""
        return f"{self.unquoted_local.lower()}@{self.domain}"


_NON_ASCII = re.compile(r"[^\x00-\x7f]")


def parse_mailbox(text: str, *, utf8: bool = False) -> Mailbox:
    """Parse ``local@domain`` (no angle brackets); raise NotAMailbox when it is not one.

    ``utf8``: an internationalized address (RFC 6531 §3.3: atext and qtext also take
    any non-ASCII UTF-8 character; the domain may be U-labels, kept as its A-label)."""
    if not text or len(text) > 320:
        raise NotAMailbox("empty or over-long address")
    if not text.isascii():
        # Surrogates (bytes that were not UTF-8) and other unprintables are not text.
        if not utf8 or not text.isprintable():
            raise NotAMailbox("non-ASCII address without SMTPUTF8")
        mailbox = parse_mailbox(_NON_ASCII.sub("a", text))  # the syntax, as ASCII
        local = text[: len(mailbox.local)]
        if len(local.encode()) > 64:
            raise NotAMailbox("local part longer than 64 octets")
        domain = text[len(mailbox.local) + 1:]
        if mailbox.is_address_literal:
            return Mailbox(local, domain, mailbox.quoted)
        try:
            return Mailbox(local, normalise_domain(domain), mailbox.quoted)
        except ValueError:
            raise NotAMailbox("bad domain") from None
    if _CONTROL.search(text):
        raise NotAMailbox("control character in address")
    if text.startswith('"'):
        # The quoted string ends at the first unescaped quote.
        m = re.match(r'^"(?:[^"\\]|\\.)*"', text)
        if not m:
            raise NotAMailbox("unbalanced quotes")
        local, rest = m.group(0), text[m.end():]
        if not rest.startswith("@"):
            raise NotAMailbox("quoted local part not followed by @domain")
        domain = rest[1:]
        if not _QUOTED_STRING.match(local):
            raise NotAMailbox("bad quoted local part")
        quoted = True
    else:
        local, at, domain = text.rpartition("@")
        if not at:
            raise NotAMailbox("no @domain")
        if not _DOT_STRING.match(local):
            raise NotAMailbox("bad local part")
        quoted = False
    if len(local) > 64:
        raise NotAMailbox("local part longer than 64 octets")
    if _ADDRESS_LITERAL.match(domain):
        return Mailbox(local, domain, quoted)
    try:
        return Mailbox(local, normalise_domain(domain), quoted)
    except ValueError:
        raise NotAMailbox("bad domain") from None
