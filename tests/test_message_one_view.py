"""One view of the header for every reader: the sender check, the DKIM signer, the DKIM
verifier, DMARC's From:, the Authentication-Results stripper and the sender-id stripper.

Parsers that disagree are how spoofed headers get through a gateway (the sender check
reads one From:, the signer signs another).  The gateway reads a message once
(gateway/message.py) and every reader takes its fields from that; here hypothesis
feeds arbitrary headers (folded, 8-bit, duplicated, obsolete ``Name :`` syntax,
no empty line) and each reader's observable behaviour must follow from the same
fields: what the sender check counted and judged as From: is what the signer signs
as from: and what the verifier checks; the strippers remove exactly the fields the
others see under those names, and nothing else.
"""

from __future__ import annotations

import time

from cryptography.hazmat.primitives.asymmetric import ed25519
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.accounts.source import Identity
from gateway.checks.dkim_canon import relaxed_field, select_fields, signed_names
from gateway.checks.dkim_verify import KeyTable, parse_tags, verify_signatures
from gateway.checks.dmarc import from_domain_in
from gateway.dkim.keystore import ActiveKey, public_record
from gateway.dkim.sign import MalformedMessage, sign_message, signed_headers
from gateway.message import MalformedHeader, Message, addresses_in
from gateway.rules.senders import decide_header_senders
from gateway.stamps.authresults import authserv_id_of, strip_our_authentication_results
from gateway.stamps.sender_id import strip_sender_id_headers

OUR_ID = "mx.isp.example"
ED = ed25519.Ed25519PrivateKey.generate()
KEY = ActiveKey("ok.example", "e", "ed25519-sha256", ED)
RECORDS = KeyTable({"e._domainkey.ok.example": public_record(ED).encode()})
ALICE = Identity(login="alice@ok.example", customer="ok", senders=frozenset({"*@ok.example"}))

# Names as clients write them: case, WSP before the colon (RFC 5322 §4.5.8), 8-bit values.
WSP_BEFORE_COLON = st.sampled_from([b"", b"", b"", b" ", b"\t", b" \t"])
CASED = st.sampled_from([lambda n: n, bytes.lower, bytes.upper])
NAMES = st.sampled_from([b"From", b"Sender", b"Subject", b"To", b"Reply-To", b"Received",
                         b"Authentication-Results", b"X-Portcullis-Sender-Id", b"X-Other",
                         b"Resent-From"])
ADDRESS = st.sampled_from([b" a@ok.example", b" Alice <alice@ok.example>", b" m@evil.example",
                           b" Mallory <ceo@ok.example.evil>", b" a@ok.example, b@ok.example",
                           b" \xe9@ok.example", b" not an address"])
AR_VALUE = st.sampled_from([b" mx.isp.example; dkim=pass", b" MX.ISP.EXAMPLE; spf=pass",
                            b" other.example; dkim=pass", b" (c) mx.isp.example; dmarc=pass",
                            b"\r\n mx.isp.example;\r\n\tspf=pass"])
TEXT = st.lists(st.sampled_from([b"a", b"Z", b" ", b"\t", b"  ", b":", b"\xe9", b"\xff", b"x y"]),
                max_size=12).map(b"".join)
FOLD = st.tuples(st.sampled_from([b" ", b"\t", b"  "]), TEXT).map(lambda t: b"\r\n" + t[0] + t[1])


@st.composite
def header_field(draw) -> bytes:
    name = draw(CASED)(draw(NAMES))
    if name.lower() in (b"from", b"sender", b"reply-to", b"to", b"resent-from"):
        value = draw(ADDRESS)
    elif name.lower() == b"authentication-results":
        value = draw(AR_VALUE)
    else:
        value = draw(TEXT)
    value += b"".join(draw(st.lists(FOLD, max_size=2)))
    return name + draw(WSP_BEFORE_COLON) + b":" + value + b"\r\n"


@st.composite
def raw_message(draw) -> bytes:
    head = b"".join(draw(st.lists(header_field(), max_size=9)))
    if draw(st.booleans()):  # no empty line: all header, no body (RFC 5322 §2.1)
        return head
    return head + b"\r\n" + draw(st.sampled_from([b"", b"body\r\n", b"From: in the body\r\n"]))


SETTINGS = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def parsed(raw: bytes) -> Message:
    try:
        return Message.parse(raw)
    except MalformedHeader as e:  # the generator writes only fields
        raise AssertionError(raw) from e


def from_lines(signed: bytes) -> list[bytes]:
    """The from: fields the signer put into the signed data (relaxed form)."""
    return [line for line in signed.split(b"\r\n") if line.startswith(b"from:")]


@SETTINGS
@given(raw_message())
def test_the_sender_check_and_the_signer_see_the_same_from_fields(raw):
    message = parsed(raw)
    names, signed = signed_headers(raw[: message.head_end] if message.fields else b"")
    verdict = decide_header_senders(ALICE, {}, message.fields)
    froms = message.named("From")
    # The signer signs every From: the sender check counted, bottom first (RFC 6376 §5.4.2).
    assert from_lines(signed) == [relaxed_field(b"from", f.raw_value).rstrip(b"\r\n")
                                  for f in reversed(froms)]
    if len(froms) != 1:
        assert (verdict.accept, verdict.rule) == (False, "senders.from_count")
        return
    # With one From:, the one the sender check judged is the one the signer signs and
    # DMARC aligns on.
    try:
        addresses = addresses_in(froms[0])
    except MalformedHeader:
        assert not verdict.accept
        return
    if verdict.accept:
        assert all(a.endswith("@ok.example") for a in addresses)
    elif verdict.rule == "senders.header" and dict(verdict.facts).get("field") == "From":
        assert dict(verdict.facts)["address"] in addresses
    domains = {a.rpartition("@")[2].lower() for a in addresses}
    if len(domains) == 1:
        assert from_domain_in(message.fields) in (domains.pop(), None)


@SETTINGS
@given(raw_message())
def test_the_verifier_checks_the_fields_the_signer_signed(raw):
    message = parsed(raw)
    try:
        signature = sign_message(message, [KEY], int(time.time()))
    except MalformedMessage:
        assert not message.named("From")  # the only reason it may refuse
        return
    signed = parsed(signature + raw)
    [result] = verify_signatures(bytes(signed.data), RECORDS, time.time())
    assert result.result == "pass", (result.reason, raw)
    # The verifier's selection of fields (from the same Message) is what the signer signed.
    chosen = select_fields(message.fields, signed_names(parse_tags(signed.fields[0].raw_value)[b"h"]))
    assert b"".join(relaxed_field(f.key, f.raw_value) for f in chosen) == signed_headers(
        raw[: message.head_end])[1]
    # Change the From: the sender check read: the verifier must see it.
    bottom = message.named("From")[-1]
    data = bytes(message.data)
    tampered = data[: bottom.start] + b"From: x@tampered.example\r\n" + data[bottom.end :]
    [result] = verify_signatures(signature + tampered, RECORDS, time.time())
    assert result.result == "fail"


@SETTINGS
@given(raw_message())
def test_the_strippers_remove_exactly_the_fields_the_others_see_by_that_name(raw):
    message = parsed(raw)
    without_ar = strip_our_authentication_results(message, OUR_ID)
    ours = [f for f in message.fields
            if f.key == b"authentication-results" and authserv_id_of(f.raw) == OUR_ID]
    assert [f.raw for f in without_ar.fields] == [f.raw for f in message.fields if f not in ours]
    without_id = strip_sender_id_headers(message)
    assert [f.raw for f in without_id.fields] == [
        f.raw for f in message.fields if f.key != b"x-portcullis-sender-id"]
    for stripped in (without_ar, without_id):
        # What a stripper leaves reads the same to everyone, body untouched.
        again = parsed(bytes(stripped.data))
        assert (again.fields, again.body_offset) == (stripped.fields, stripped.body_offset)
        assert bytes(stripped.data[stripped.body_offset :]) == bytes(message.data[message.body_offset :])
    # The signer, given the stripped message and our own identifier above it, signs
    # exactly one X-Portcullis-Sender-Id: ours.
    ours_field = b"X-Portcullis-Sender-Id: v1.ours\r\n"
    fields = parsed(ours_field).fields + without_id.fields
    names, signed = signed_headers(b"".join(f.raw for f in fields))
    assert [line for line in signed.split(b"\r\n") if line.startswith(b"x-portcullis-sender-id:")] == [
        b"x-portcullis-sender-id:v1.ours"]
