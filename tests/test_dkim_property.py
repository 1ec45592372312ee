"""Property: whatever the shape of header and body, our signatures verify with dkimpy.

Shapes: folded headers, several instances of a field, WSP before the colon, trailing
and doubled white space, tabs, empty values, 8-bit bytes, long lines, empty bodies,
bodies without a final CRLF, runs of empty lines at the end.
"""

from __future__ import annotations

import time

import dkim
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.dkim.keystore import ActiveKey, public_record
from gateway.dkim.sign import sign_message

RSA = rsa.generate_private_key(public_exponent=65537, key_size=2048)
ED = ed25519.Ed25519PrivateKey.generate()
KEYS = [ActiveKey("prop.example", "r", "rsa-sha256", RSA),
        ActiveKey("prop.example", "e", "ed25519-sha256", ED)]
RECORDS = {b"r._domainkey.prop.example.": public_record(RSA).encode(),
           b"e._domainkey.prop.example.": public_record(ED).encode()}


def dnsfunc(name: bytes, timeout: float = 5) -> bytes:
    return RECORDS.get(name, b"")


# Bytes that may appear inside a line: printable ASCII, SP, HTAB and 8-bit.
LINE_BYTES = st.sampled_from([bytes([b]) for b in (*range(0x20, 0x7F), 0x09, *range(0x80, 0x100))])
WSP = st.sampled_from([b" ", b"\t", b"  ", b" \t ", b"\t\t"])
line = st.lists(st.one_of(LINE_BYTES, WSP), max_size=80).map(b"".join)
long_line = st.integers(min_value=200, max_value=990).map(lambda n: b"x " * (n // 2))

NAMES = st.sampled_from([
    b"From", b"To", b"Cc", b"Subject", b"Date", b"Message-ID", b"Reply-To", b"MIME-Version",
    b"Content-Type", b"X-Mailer", b"Received", b"References", b"List-Unsubscribe",
    b"subject", b"FROM", b"X-8bit",
])


@st.composite
def header_field(draw) -> bytes:
    name = draw(NAMES)
    # No WSP before the colon (RFC 5322 §4.5.8 obsolete syntax): dkimpy refuses to parse
    # it; test_dkim_sign.py checks our handling of it against Mail::DKIM instead.
    before_colon = b""
    first = draw(line)
    # Continuation lines start with WSP (RFC 5322 §2.2.3) and must not be empty.
    folds = draw(st.lists(st.tuples(WSP, line), max_size=3))
    value = first + b"".join(b"\r\n" + w + rest for w, rest in folds)
    return name + before_colon + b":" + value + b"\r\n"


@st.composite
def message(draw) -> bytes:
    fields = draw(st.lists(header_field(), max_size=8))
    from_field = b"From: " + draw(st.sampled_from([b"a@prop.example", b"A <a@prop.example>  "])) + b"\r\n"
    fields.insert(draw(st.integers(0, len(fields))), from_field)
    body_lines = draw(st.lists(st.one_of(line, long_line, st.just(b"")), max_size=30))
    body = b"\r\n".join(body_lines)
    # DATA content always ends in CRLF (RFC 5321 §4.1.1.4).
    ending = draw(st.sampled_from([b"\r\n", b"\r\n\r\n\r\n", b" \t\r\n", b"\r\n \r\n"]))
    has_body = draw(st.booleans())
    return b"".join(fields) + (b"\r\n" + body + ending if has_body else b"")


def verify_all(msg: bytes, count: int) -> list[bool]:
    d = dkim.DKIM(msg)
    out = []
    for i in range(count):
        try:
            out.append(bool(d.verify(idx=i, dnsfunc=dnsfunc)))
        except dkim.ValidationError:  # dkimpy raises for some failures (body hash)
            out.append(False)
    return out


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(message())
def test_any_header_and_body_shape_signed_by_us_verifies_with_dkimpy(msg):
    signed = sign_message(msg, KEYS, int(time.time())) + msg
    assert verify_all(signed, 2) == [True, True]


@settings(max_examples=100, deadline=None)
@given(message(), st.binary(min_size=1, max_size=3).filter(lambda b: b"\r" not in b and b"\n" not in b))
def test_any_change_to_the_body_text_makes_dkimpy_fail(msg, extra):
    signed = sign_message(msg, KEYS[:1], int(time.time())) + msg
    # Insert visible text at the start of the body (or make one): never WSP-only.
    changed = signed + b"\r\n" + b"Z" + extra if b"\r\n\r\n" not in msg else signed.replace(b"\r\n\r\n", b"\r\n\r\nZ" + extra, 1)
    assert verify_all(changed, 1) == [False]
