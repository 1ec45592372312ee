"""DKIM/ARC test keys: private keys for dkimpy's signer, TXT records for the zone.

    key = rsa_key()                     # fresh 2048-bit key (cached per process)
    zone = {"example.test": f"sel._domainkey TXT {txt_record(key.record)}"}
    signed = key.sign(message, b"sel", b"example.test")

``short_rsa_key()`` is a fixed 512-bit key (tests/data/dkim/short-512.pem;
``cryptography`` refuses to generate keys that small) for RFC 8301 tests.
"""

from __future__ import annotations

import base64
import functools
from dataclasses import dataclass
from pathlib import Path

import dkim
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

DATA = Path(__file__).resolve().parent.parent / "data" / "dkim"


@dataclass(frozen=True)
class TestKey:
    __test__ = False  # not a pytest class
    algorithm: bytes  # b"rsa-sha256" or b"ed25519-sha256"
    private: bytes  # what dkimpy's sign() takes
    record: str  # the TXT record value for <selector>._domainkey.<domain>

    def sign(
        self, message: bytes, selector: bytes, domain: bytes, *, algorithm: bytes | None = None,
        headers: list[bytes] | None = None,
    ) -> bytes:
        sig = dkim.sign(
            message, selector, domain, self.private,
            signature_algorithm=algorithm or self.algorithm,
            include_headers=headers or [b"from", b"to", b"subject", b"date", b"message-id"],
        )
        return sig + message

    def arc_sign(self, message: bytes, selector: bytes, domain: bytes, srv_id: bytes) -> bytes:
        """Add one ARC set (dkimpy's arc_sign reads our A-R header for srv_id)."""
        headers = dkim.arc_sign(
            message, selector, domain, self.private, srv_id,
            include_headers=[b"from", b"to", b"subject", b"date", b"message-id"],
        )
        return b"".join(headers) + message


def _rsa_from(key: rsa.RSAPrivateKey) -> TestKey:
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return TestKey(b"rsa-sha256", private, f"v=DKIM1; k=rsa; p={base64.b64encode(der).decode()}")


@functools.cache
def rsa_key(bits: int = 2048, n: int = 0) -> TestKey:
    """A fresh RSA key (``n`` tells apart several keys of one size)."""
    return _rsa_from(rsa.generate_private_key(65537, bits))


@functools.cache
def short_rsa_key() -> TestKey:
    key = serialization.load_pem_private_key((DATA / "short-512.pem").read_bytes(), None)
    assert isinstance(key, rsa.RSAPrivateKey)
    return _rsa_from(key)


@functools.cache
def ed25519_key(n: int = 0) -> TestKey:
    key = ed25519.Ed25519PrivateKey.generate()
    seed = key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return TestKey(
        b"ed25519-sha256", base64.b64encode(seed),
        f"v=DKIM1; k=ed25519; p={base64.b64encode(raw).decode()}",
    )
