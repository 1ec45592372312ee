"""Domain names as the gateway compares them."""

from __future__ import annotations

import re
from typing import Annotated

import idna
from pydantic import BeforeValidator

# The common case, checked at C speed: ASCII labels of letters, digits, '-' and '_',
# 1-63 long, not starting or ending with '-'.  A name this does not match goes
# through the full checks below, which decide (and word the error).
_PLAIN_NAME = re.compile(
    r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?(?:\.[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?)*"
)


def normalise_domain(domain: str) -> str:
    """Lower-case, without a trailing dot, A-labels (IDNA 2008) for non-ASCII labels.

    ``Example.COM.`` and ``example.com`` are the same domain (RFC 5321 §2.4: domains
    are case-insensitive; a trailing dot only makes a name absolute).  ``bücher.example``
    and ``xn--bcher-kva.example`` are the same domain too: RFC 6531 §3.2 lets a client
    send either, so the relay and sender rules, SPF, DKIM and DMARC all compare the
    A-label.  IDNA 2008 (RFC 5891) with the UTS #46 mapping, non-transitional: Python's
    own "idna" codec is IDNA 2003, which maps "faß" to "fass", another domain.
    """
    name = domain.strip().rstrip(".").lower()
    if len(name) <= 253 and _PLAIN_NAME.fullmatch(name):
        return name
    if not name.isascii():
        try:
            name = idna.encode(name, uts46=True, transitional=False).decode("ascii")
        except (idna.IDNAError, UnicodeError) as exc:
            raise ValueError(f"not a valid domain name: {domain!r}") from exc
    if not name or len(name) > 253:
        raise ValueError(f"not a valid domain name: {domain!r}")
    for label in name.split("."):
        if not label or len(label) > 63 or label.startswith("-") or label.endswith("-"):
            raise ValueError(f"not a valid domain name: {domain!r}")
        if not all(c.isalnum() or c in "-_" for c in label):
            raise ValueError(f"not a valid domain name: {domain!r}")
    return name


def normalise_domains(value: object) -> object:
    """A list of names from a config file, each normalised; anything else is left for
    the field's type to refuse."""
    if isinstance(value, list | tuple):
        return tuple(normalise_domain(str(v)) for v in value)
    return value


# A config field holding domain names, compared as normalise_domain makes them.
DomainNames = Annotated[tuple[str, ...], BeforeValidator(normalise_domains)]
