"""Is a selector's public key in DNS?  The verdicts, and which keys sign given them.

A selector whose key is not published (or published wrong) makes every signature
fail at every receiver (RFC 6376 §6.1.2: no key, ``permerror``; a different key,
``fail``), and under ``p=reject`` that mail bounces.  So a selector signs only once
its TXT record has been seen to carry its public key; until then, or when the record
goes wrong later, the previous key keeps signing (:func:`signing_selectors`).

The verdicts are made off the message path (gateway/dkim/publication_watch.py looks
the records up in the background) and kept in a :class:`KeyVerdicts` table that the
signing step only reads.  A DNS failure changes no verdict: the last one stands.

No verdict yet (just started, and DNS has not answered) counts as *not published*:
a selector never signs unchecked.  A deferral (451, the default ``missing_key``) is
retried by the client; a signature with an unpublished key fails for good at the
receiver, and nobody tells the sender.  docs/dkim.md says the same to operators.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from gateway.dkim.keystore import KeyStore, Selector, public_key_bytes
from gateway.values.keys import ActiveKey

Key = tuple[str, str]  # (domain, selector)


@dataclass(frozen=True, slots=True)
class Publication:
    """What DNS said about one selector, last time it answered."""

    published: bool  # the one TXT record carries this selector's public key
    outcome: str  # published | missing | wrong (a metric label: a small fixed set)
    detail: str  # for logs and `keys check`
    checked_at: float


def parse_tags(record: str) -> dict[str, str]:
    """RFC 6376 §3.2 tag=value list; white space in values (FWS) kept for the caller."""
    tags = {}
    for part in record.split(";"):
        name, eq, value = part.partition("=")
        if eq:
            tags[name.strip()] = value.strip()
    return tags


def judge_records(selector: Selector, records: Sequence[bytes] | None, now: float) -> Publication:
    """The verdict for ``selector`` given the TXT strings at its name (joined per record,
    RFC 6376 §3.6.2.2); ``None`` for NXDOMAIN."""
    if not records:
        detail = ("no such name in DNS: publish the record" if records is None
                  else "the name has no TXT record: publish it")
        return Publication(False, "missing", detail, now)
    if len(records) != 1:
        return Publication(False, "wrong", f"{len(records)} TXT records at the name; "
                           "verifiers need exactly one", now)
    ok, detail = record_matches(selector, records[0].decode("ascii", "replace"))
    return Publication(ok, "published" if ok else "wrong", detail, now)


def record_matches(selector: Selector, record: str) -> tuple[bool, str]:
    tags = parse_tags(record)
    if tags.get("v", "DKIM1") != "DKIM1":
        return False, f"v={tags['v']}, not DKIM1"
    k = tags.get("k", "rsa")
    want = "ed25519" if selector.algorithm == "ed25519-sha256" else "rsa"
    if k != want:
        return False, f"the record says k={k} but the key is {want}"
    if "p" not in tags:
        return False, "the record has no p= tag"
    p = "".join(tags["p"].split())
    if not p:
        return False, "the record has an empty p=: the key is revoked (RFC 6376 §3.6.1)"
    try:
        published = base64.b64decode(p, validate=True)
    except binascii.Error:
        return False, "p= is not base64"
    if published == public_key_bytes(selector.private_key):
        return True, "the published key matches"
    if want == "rsa" and _same_rsa_key(published, selector.private_key):
        return True, "the published key matches (PKCS#1 form)"
    return False, "the published key is NOT the key in " + str(selector.key_file)


def _same_rsa_key(der: bytes, key: object) -> bool:
    # Some publish the bare RSAPublicKey (PKCS#1) that RFC 6376 §3.6.1 literally names.
    pem = b"-----BEGIN RSA PUBLIC KEY-----\n" + base64.encodebytes(der) + b"-----END RSA PUBLIC KEY-----\n"
    try:
        published = serialization.load_pem_public_key(pem)
    except ValueError:
        return False
    return (isinstance(published, rsa.RSAPublicKey) and isinstance(key, rsa.RSAPrivateKey)
            and published.public_numbers() == key.public_key().public_numbers())


def needs_checking(selector: Selector, now: float, grace: timedelta) -> bool:
    """Pending (to be checked before it opens), active, and retiring (the fallback
    while a successor is unpublished) selectors; expired ones may have left DNS."""
    return selector.state(now, grace) != "expired"


def signing_selectors(selectors: Iterable[Selector], verdicts: Mapping[Key, Publication],
                      now: float, grace: timedelta) -> list[Selector]:
    """Which of one domain's selectors sign now, per algorithm:

    * those inside their window whose key is seen published;
    * when none of an algorithm's in-window selectors is, the newest published one
      whose window opened earlier and has not expired (the previous key, retiring
      or still active), so a forgotten DNS change keeps the old key signing;
    * else none of that algorithm (then the customer's ``missing_key`` applies).
    """
    by_algorithm: dict[str, list[Selector]] = {}
    for s in selectors:
        by_algorithm.setdefault(s.algorithm, []).append(s)
    chosen: list[Selector] = []
    for group in by_algorithm.values():
        live = [s for s in group if s.is_active(now)]
        good = [s for s in live if _ok(verdicts, s)]
        if good or not live:
            chosen += good
            continue
        opened = min(_start(s) for s in live)
        previous = [s for s in group if s.state(now, grace) in ("active", "retiring")
                    and _start(s) <= opened and _ok(verdicts, s)]
        if previous:
            chosen.append(max(previous, key=_start))
    return chosen


def _start(s: Selector) -> float:
    return s.not_before.timestamp() if s.not_before else 0.0


def held_back(selectors: Iterable[Selector], verdicts: Mapping[Key, Publication],
              now: float) -> list[Selector]:
    """In-window selectors that do not sign because their key is not seen published."""
    return [s for s in selectors if s.is_active(now) and not _ok(verdicts, s)]


def _ok(verdicts: Mapping[Key, Publication], s: Selector) -> bool:
    v = verdicts.get((s.domain, s.selector))
    return v is not None and v.published


class KeyVerdicts:
    """The verdict table one process signs by: written by the watch only, replaced
    whole in one assignment, read by every signing step (no lock needed)."""

    __slots__ = ("table",)

    def __init__(self) -> None:
        self.table: Mapping[Key, Publication] = {}

    def signing_keys(self, keystore: KeyStore, domain: str, now: float) -> list[ActiveKey]:
        """The keys that sign ``domain``'s mail now, in the key store's signing order."""
        chosen = signing_selectors(keystore.selectors(domain), self.table, now, keystore.grace)
        return [s.signing_key() for s in keystore.selectors(domain) if s in chosen]
