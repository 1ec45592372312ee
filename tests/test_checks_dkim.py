"""DKIM verification of every signature, keys served by a real NSD."""

from __future__ import annotations

import asyncio

import dkim
import pytest

from gateway.checks.dkim_verify import public_key, verify_dkim
from gateway.checks.dns import Resolver
from gateway.message import Message
from tests.support.authdns import txt_record
from tests.support.dkim_keys import ed25519_key, rsa_key, short_rsa_key

MESSAGE = (
    b"From: Alice <alice@dkim.test>\r\n"
    b"To: bob@example.net\r\n"
    b"Subject: hello\r\n"
    b"Date: Mon, 01 Jan 2024 00:00:00 +0000\r\n"
    b"Message-ID: <1@dkim.test>\r\n"
    b"\r\n"
    b"Hello Bob.\r\n"
)

pytest_plugins = ("tests.support.authdns",)  # NSD fixtures: authdns_factory, silent_dns, ...


@pytest.fixture(scope="module")
def server(authdns_module_factory):
    zone = "\n".join([
        f"rsa._domainkey     TXT {txt_record(rsa_key().record)}",
        f"other._domainkey   TXT {txt_record(rsa_key(2048, 1).record)}",
        f"ed._domainkey      TXT {txt_record(ed25519_key().record)}",
        f"short._domainkey   TXT {txt_record(short_rsa_key().record)}",
        'broken._domainkey   TXT "v=DKIM1; k=rsa; p=notbase64!!"',
        'revoked._domainkey  TXT "v=DKIM1; k=rsa; p="',
    ])
    return authdns_module_factory({"dkim.test": zone})


def verify(server, message, port=None, timeout=2.0):
    async def go():
        resolver = Resolver(["127.0.0.1"], port=port or server.port, timeout=timeout)
        return await verify_dkim(resolver, Message.parse(message))

    return asyncio.run(go())


def results(server, message):
    return [r.result for r in verify(server, message)]


def test_valid_rsa_signature_passes_with_its_properties(server):
    signed = rsa_key().sign(MESSAGE, b"rsa", b"dkim.test")
    [r] = verify(server, signed)
    assert (r.result, r.domain, r.selector, r.algorithm) == ("pass", "dkim.test", "rsa", "rsa-sha256")
    b = dkim.util.parse_tag_value(signed.split(b"\r\n\r\n")[0].split(b"DKIM-Signature:")[1]
                                  .replace(b"\r\n", b""))[b"b"]
    assert r.b_prefix == b"".join(b.split())[:8].decode()


def test_changed_body_fails(server):
    signed = rsa_key().sign(MESSAGE, b"rsa", b"dkim.test")
    [r] = verify(server, signed.replace(b"Hello Bob.", b"Hello Eve."))
    assert r.result == "fail" and "body hash" in r.reason


def test_changed_signed_header_fails(server):
    signed = rsa_key().sign(MESSAGE, b"rsa", b"dkim.test")
    assert results(server, signed.replace(b"Subject: hello", b"Subject: HELLO!")) == ["fail"]


def test_missing_key_is_permerror(server):
    signed = rsa_key().sign(MESSAGE, b"nokey", b"dkim.test")
    [r] = verify(server, signed)
    assert (r.result, r.reason) == ("permerror", "no key for signature")


def test_unparsable_key_is_permerror(server):
    assert results(server, rsa_key().sign(MESSAGE, b"broken", b"dkim.test")) == ["permerror"]


def test_revoked_key_does_not_pass(server):
    assert results(server, rsa_key().sign(MESSAGE, b"revoked", b"dkim.test")) != ["pass"]


def test_wrong_key_fails(server):
    # Signed with one key, DNS publishes another under that selector.
    assert results(server, rsa_key(2048, 1).sign(MESSAGE, b"rsa", b"dkim.test")) == ["fail"]


def test_rsa_key_under_1024_bits_fails(server):
    [r] = verify(server, short_rsa_key().sign(MESSAGE, b"short", b"dkim.test"))
    assert r.result == "fail" and "1024" in r.reason


def test_rsa_sha1_fails(server):
    [r] = verify(server, rsa_key().sign(MESSAGE, b"rsa", b"dkim.test", algorithm=b"rsa-sha1"))
    assert r.result == "fail" and "rsa-sha1" in r.reason


def test_ed25519_signature_passes(server):
    [r] = verify(server, ed25519_key().sign(MESSAGE, b"ed", b"dkim.test"))
    assert (r.result, r.algorithm) == ("pass", "ed25519-sha256")


def test_ed25519_signature_over_changed_header_fails(server):
    signed = ed25519_key().sign(MESSAGE, b"ed", b"dkim.test")
    assert results(server, signed.replace(b"To: bob", b"To: eve")) == ["fail"]


def test_every_signature_gets_its_own_result(server):
    # Outer signature made with a wrong key, inner one good: both reported, in order.
    inner = ed25519_key().sign(MESSAGE, b"ed", b"dkim.test")
    both = rsa_key(2048, 1).sign(inner, b"rsa", b"dkim.test")
    assert [(r.selector, r.result) for r in verify(server, both)] == [("rsa", "fail"), ("ed", "pass")]
    good_then_missing = rsa_key().sign(rsa_key().sign(MESSAGE, b"nokey", b"dkim.test"), b"rsa", b"dkim.test")
    assert results(server, good_then_missing) == ["pass", "permerror"]


def test_unsigned_message_has_no_results(server):
    assert verify(server, MESSAGE) == []


def test_malformed_signature_header_is_permerror(server):
    bad = b"DKIM-Signature: v=1; a=rsa-sha256; this is not tag=value\r\n" + MESSAGE
    assert results(server, bad) == ["permerror"]


def test_signature_missing_required_tag_is_permerror(server):
    bad = b"DKIM-Signature: v=1; a=rsa-sha256; d=dkim.test; s=rsa; h=from; b=AAAA\r\n" + MESSAGE
    assert results(server, bad) == ["permerror"]


def test_unresponsive_dns_is_temperror_not_fail(server, silent_dns):
    signed = rsa_key().sign(MESSAGE, b"rsa", b"dkim.test")
    [r] = verify(server, signed, port=silent_dns.port, timeout=0.3)
    assert r.result == "temperror"


def test_our_rsa_check_agrees_with_dkimpy_pure_python():
    import base64
    import hashlib

    from dkim import HashThrough
    from dkim.crypto import RSASSA_PKCS1_v1_5_sign, parse_pem_private_key, parse_public_key

    key = rsa_key()
    priv = parse_pem_private_key(key.private)
    pub = parse_public_key(base64.b64decode(key.record.split("p=")[1]))
    ours = public_key(key.record.encode())
    for data in (b"one", b"two"):
        sig = bytes(RSASSA_PKCS1_v1_5_sign(HashThrough(hashlib.sha256(data)), priv))
        # One bit flipped (a fixed replacement byte would equal the original 1 time in 256).
        tampered = sig[:-1] + bytes([sig[-1] ^ 1])
        for signature, digest, good in ((sig, hashlib.sha256(data), True),
                                        (sig, hashlib.sha256(data + b"x"), False),
                                        (tampered, hashlib.sha256(data), False)):
            assert dkim.RSASSA_PKCS1_v1_5_verify(HashThrough(digest.copy()), signature, pub) is good
            assert ours.verifies(signature, digest.digest()) is good


def test_dkimpy_runs_as_its_authors_wrote_it_once_our_verifier_is_loaded():
    # Our verifier (imported above) swaps none of dkimpy's functions for its own:
    # ARC and the differential tests get dkimpy's own RSA check and key parser.
    import dkim.crypto

    assert dkim.RSASSA_PKCS1_v1_5_verify is dkim.crypto.RSASSA_PKCS1_v1_5_verify
    assert dkim.evaluate_pk.__module__ == "dkim" and not hasattr(dkim.evaluate_pk, "cache_info")


def test_a_signature_in_the_body_is_not_verified(server):
    signed = rsa_key().sign(MESSAGE, b"rsa", b"dkim.test")
    head, _, body = signed.partition(b"\r\n\r\n")
    assert results(server, head + b"\r\n\r\n" + body) == ["pass"]
    assert results(server, b"X: y\r\n\r\n" + signed) == []  # all of it below the empty line


@pytest.mark.parametrize("tags", [b"d=a..b; s=x", b"d=dkim.test; s=" + b"x" * 70, b"d=\xff\xfe.test; s=x"])
def test_signature_naming_an_impossible_key_is_permerror_not_a_crash(server, tags):
    bad = b"DKIM-Signature: v=1; a=rsa-sha256; " + tags + b"; h=from; bh=AAAA; b=AAAA\r\n" + MESSAGE
    assert results(server, bad) == ["permerror"]


def test_a_large_message_is_verified_off_the_loop_and_a_small_one_inline(server):
    from concurrent.futures import ThreadPoolExecutor

    from gateway.checks.dkim_verify import INLINE_MAX_BYTES, INLINE_MAX_SIGNATURES

    class CountingExecutor(ThreadPoolExecutor):
        submitted = 0

        def submit(self, *args, **kwargs):
            CountingExecutor.submitted += 1
            return super().submit(*args, **kwargs)

    body = b"".join(b"line %d of a long message\r\n" % i for i in range(INLINE_MAX_BYTES // 20))
    big = rsa_key().sign(MESSAGE + body, b"rsa", b"dkim.test")
    assert len(big) > INLINE_MAX_BYTES

    async def go(message):
        resolver = Resolver(["127.0.0.1"], port=server.port, timeout=2.0)
        with CountingExecutor(1) as executor:
            return [r.result for r in await verify_dkim(resolver, Message.parse(message),
                                                        executor=executor)]

    assert asyncio.run(go(rsa_key().sign(MESSAGE, b"rsa", b"dkim.test"))) == ["pass"]
    assert CountingExecutor.submitted == 0  # small: inline, no thread hop
    assert asyncio.run(go(big)) == ["pass"]
    assert asyncio.run(go(big.replace(b"line 7 ", b"line 8 "))) == ["fail"]
    assert CountingExecutor.submitted == 2
    many = MESSAGE
    for _ in range(INLINE_MAX_SIGNATURES + 1):  # many signatures: off the loop too
        many = rsa_key().sign(many, b"rsa", b"dkim.test")
    assert asyncio.run(go(many)) == ["pass"] * (INLINE_MAX_SIGNATURES + 1)
    assert CountingExecutor.submitted == 3
