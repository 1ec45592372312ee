"""DKIM signing keys and the facts a signing decision needs, as plain values.

The key store (gateway/dkim/keystore.py) hands out :class:`ActiveKey`; the rule
(gateway/rules/signing.py) chooses among them; the signer (gateway/dkim/sign.py)
uses them.  Private keys are never printed: they are left out of every repr.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

# RFC 6376 §3.3 and RFC 8463: the two algorithms we sign with.
Algorithm = Literal["rsa-sha256", "ed25519-sha256"]
PrivateKey = rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey


@dataclass(frozen=True, slots=True)
class ActiveKey:
    """What the signer needs for one signature: d=, s=, a= and the key (never printed)."""

    domain: str
    selector: str
    algorithm: Algorithm
    private_key: PrivateKey = field(repr=False, compare=False)


@dataclass(frozen=True, slots=True)
class SigningFacts:
    """What the message says about its author, gathered once (see
    ``gateway.dkim.sign.signing_facts``); gateway/rules/signing.py decides with it."""

    header_ok: bool
    from_fields: int
    # The domain of every address in the From: field(s), normalised, in order.
    from_domains: tuple[str, ...]
