"""RSA signatures are checked by recovering the signed data with OpenSSL and
comparing the SHA-256 DigestInfo whole; the answer must be OpenSSL's own
verify() answer for good signatures and for every way a signature can be wrong."""

from __future__ import annotations

import hashlib

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.checks.dkim_verify import PublicKey

KEYS = {bits: rsa.generate_private_key(65537, bits) for bits in (1024, 2048)}


def openssl_says(public: rsa.RSAPublicKey, signature: bytes, digest: bytes) -> bool:
    try:
        public.verify(signature, digest, padding.PKCS1v15(), Prehashed(hashes.SHA256()))
    except (InvalidSignature, ValueError):
        return False
    return True


def ours(public: rsa.RSAPublicKey, signature: bytes, digest: bytes) -> bool:
    return PublicKey("rsa", public, public.key_size).verifies(signature, digest)


def signed(bits: int, digest: bytes, algorithm: hashes.HashAlgorithm | None = None) -> bytes:
    return KEYS[bits].sign(digest, padding.PKCS1v15(), Prehashed(algorithm or hashes.SHA256()))


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(sorted(KEYS)), st.binary(min_size=1, max_size=64), st.data())
def test_agrees_with_openssl_verify_on_good_and_damaged_signatures(bits, text, data):
    public = KEYS[bits].public_key()
    digest = hashlib.sha256(text).digest()
    signature = signed(bits, digest)
    assert ours(public, signature, digest) is openssl_says(public, signature, digest) is True
    position = data.draw(st.integers(0, len(signature) - 1))
    bit = data.draw(st.integers(0, 7))
    damaged = signature[:position] + bytes([signature[position] ^ (1 << bit)]) + signature[position + 1:]
    assert ours(public, damaged, digest) is openssl_says(public, damaged, digest) is False
    other = hashlib.sha256(text + b".").digest()
    assert ours(public, signature, other) is openssl_says(public, signature, other) is False


@pytest.mark.parametrize("bits", sorted(KEYS))
def test_malformed_signatures_fail_as_with_openssl(bits):
    public = KEYS[bits].public_key()
    digest = hashlib.sha256(b"message").digest()
    good = signed(bits, digest)
    n = public.public_numbers().n
    size = len(good)
    for signature in (
        good[:-1], good + b"\0", b"\0" + good[1:], b"", b"\0" * size, b"\xff" * size,
        n.to_bytes(size, "big"), (n - 1).to_bytes(size, "big"),
        signed(bits, hashlib.sha1(b"message").digest(), hashes.SHA1()),  # another DigestInfo
        signed(bits, hashlib.sha512(b"message").digest(), hashes.SHA512()),
    ):
        if signature == good:  # its first byte was 0 already (a key in 256): b"\0" + good[1:]
            continue
        assert ours(public, signature, digest) is openssl_says(public, signature, digest) is False


def test_a_signature_over_the_bare_digest_without_digest_info_fails():
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateNumbers

    private = KEYS[2048]
    numbers: RSAPrivateNumbers = private.private_numbers()
    size = private.key_size // 8
    digest = hashlib.sha256(b"message").digest()
    # EMSA-PKCS1-v1_5 padding around the digest alone: the DigestInfo is missing.
    encoded = b"\x00\x01" + b"\xff" * (size - 3 - len(digest)) + b"\x00" + digest
    raw = pow(int.from_bytes(encoded, "big"), numbers.d, numbers.public_numbers.n).to_bytes(size, "big")
    public = private.public_key()
    assert ours(public, raw, digest) is openssl_says(public, raw, digest) is False
