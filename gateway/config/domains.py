"""Domain names as the gateway compares them."""

from __future__ import annotations


def normalise_domain(domain: str) -> str:
    """Lower-case, without a trailing dot, IDNA (punycode) for non-ASCII labels.

    ``Example.COM.`` and ``example.com`` are the same domain (RFC 5321 §2.4: domains
    are case-insensitive; a trailing dot only makes a name absolute).
    """
    name = domain.strip().rstrip(".").lower()
    if not name.isascii():
        try:
            name = name.encode("idna").decode("ascii")
        except UnicodeError as exc:
            raise ValueError(f"not a valid domain name: {domain!r}") from exc
    if not name or len(name) > 253:
        raise ValueError(f"not a valid domain name: {domain!r}")
    for label in name.split("."):
        if not label or len(label) > 63 or label.startswith("-") or label.endswith("-"):
            raise ValueError(f"not a valid domain name: {domain!r}")
        if not all(c.isalnum() or c in "-_" for c in label):
            raise ValueError(f"not a valid domain name: {domain!r}")
    return name
