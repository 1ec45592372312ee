"""The DKIM verifier remembers checks on tags a sender repeats (h=, d=, c= ...):
the memo changes no answer, and values too big to keep are checked every time
without being kept (they come from senders)."""

from __future__ import annotations

import time

import dkim
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.checks import dkim_canon, dkim_verify
from gateway.checks.dkim_verify import KeyTable, verify_signatures
from gateway.message import Message
from tests.support.dkim_keys import rsa_key

RECORDS = {"r._domainkey.memo.example": rsa_key().record.encode()}
HEAD = (b"From: a@memo.example\r\nTo: b@isp.example\r\nSubject: memo\r\n"
        b"Date: Mon, 23 Nov 2026 10:00:00 +0000\r\n")


def signed(headers: list[bytes], body: bytes = b"Hello.\r\n") -> bytes:
    msg = HEAD + b"\r\n" + body
    return dkim.sign(msg, b"r", b"memo.example", rsa_key().private, include_headers=headers) + msg


def results(msg: bytes) -> list[tuple[str, str]]:
    return [(r.result, r.reason) for r in verify_signatures(msg, KeyTable(RECORDS), time.time())]


def test_a_repeated_signature_shape_gets_the_same_answers_from_the_memo():
    good = signed([b"from", b"to", b"subject"])
    bad_body = good.replace(b"Hello.", b"Hullo.")
    first = [results(good), results(bad_body)]
    assert first == [[("pass", "")], [("fail", "body hash mismatch")]]
    assert [results(good), results(bad_body)] == first  # now from the memo


def test_a_tag_refusal_is_remembered_as_a_refusal_not_as_a_pass():
    # dkimpy will not sign without From: take it out of h= afterwards.
    unsigned_from = signed([b"from", b"to", b"subject"]).replace(b"h=from : ", b"h=", 1)
    assert b"h=to : subject" in unsigned_from
    assert results(unsigned_from) == [("permerror", "From is not signed (RFC 6376 §6.1.1)")]
    assert results(unsigned_from) == [("permerror", "From is not signed (RFC 6376 §6.1.1)")]


def test_an_oversized_h_tag_is_checked_but_not_kept():
    # h= may name a field more often than it occurs (RFC 6376 §5.4.2): 80 names of
    # "subject" make an h= of well over 512 octets that still verifies.
    headers = [b"from", b"to"] + [b"subject"] * 80
    msg = signed(headers)
    [field] = Message.parse(msg).named("DKIM-Signature")
    h_value = dkim_verify.parse_tags(field.raw_value)[b"h"]
    assert len(h_value) > 512
    assert results(msg) == [("pass", "")]
    kept_names = dkim_canon.signed_names.cache_info().currsize
    kept_tags = dkim_verify._middle_refusal.cache_info().currsize
    assert results(msg) == [("pass", "")]
    assert dkim_canon.signed_names.cache_info().currsize == kept_names
    assert dkim_verify._middle_refusal.cache_info().currsize == kept_tags


def made_before(tags: dict[bytes, bytes], result: str, reason: str = "") -> dkim_verify.DkimResult:
    """The result as it was built before its texts were remembered (the oracle)."""
    def text(tag: bytes) -> str:
        return tags.get(tag, b"").decode("ascii", "replace")
    b = "".join(text(b"b").split())
    return dkim_verify.DkimResult(result, domain=text(b"d").lower(), selector=text(b"s"),
                                  algorithm=text(b"a").lower(), b_prefix=b[:8],
                                  identity=text(b"i"), reason=reason)


tag_value = st.binary(max_size=40) | st.lists(
    st.sampled_from([b" ", b"\t", b"\r\n ", b"\x1c", b"\x85", b"abc", b"Z9+/", b"=", b"\xff"]),
    max_size=80).map(b"".join)


@settings(max_examples=500, deadline=None)
@given(st.dictionaries(st.sampled_from([b"d", b"s", b"a", b"i", b"b"]), tag_value))
def test_results_are_built_as_before_from_any_tag_values(tags):
    assert dkim_verify._made(tags, "fail", "why") == made_before(tags, "fail", "why")


def test_oversized_tag_texts_are_not_kept():
    tags = {b"d": b"x" * 600 + b".example", b"s": b"s", b"a": b"rsa-sha256", b"b": b"  abc def ghi"}
    kept = dkim_verify._texts.cache_info().currsize
    assert dkim_verify._made(tags, "pass") == made_before(tags, "pass")
    assert dkim_verify._texts.cache_info().currsize == kept


def test_key_records_of_ordinary_size_are_kept_and_huge_ones_are_not():
    record = RECORDS["r._domainkey.memo.example"]
    first = dkim_verify.public_key(record)
    assert dkim_verify.public_key(record) is first  # parsed once
    huge = record + b"; n=" + b"x" * 5000  # n= is notes (RFC 6376 §3.6.1): still a key
    kept = dkim_verify.public_key.cache_info().currsize
    parsed = dkim_verify.public_key(huge)
    assert isinstance(parsed, dkim_verify.PublicKey) and parsed.bits == first.bits
    assert dkim_verify.public_key.cache_info().currsize == kept
