"""The RFC5322.From domain: the quick reading of common shapes agrees with the email package.

gateway.checks.dmarc.from_domain reads "addr@dom" and "Name <addr@dom>" with one
regular expression and leaves every other shape to ``email.utils.getaddresses``;
here both readings must give the same domain for any field of those shapes, and
the odd shapes must still reach the full parser.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.checks.dmarc import _SIMPLE_FROM, _from_domain_parsed, from_domain

local = st.text(alphabet="abcXYZ019._+=-", min_size=1, max_size=12)
domain = st.text(alphabet="abcxyzAB09.-", min_size=0, max_size=20)
name = st.text(alphabet="abc XYZ\t09", max_size=15)
wsp = st.sampled_from(["", " ", "  ", "\t", " \t"])


@st.composite
def simple_field(draw) -> str:
    address = f"{draw(local)}@{draw(domain)}"
    if draw(st.booleans()):
        return f"{draw(wsp)}{draw(name)}<{address}>{draw(wsp)}"
    return f"{draw(wsp)}{address}{draw(wsp)}"


def message(from_value: str, fold: bool = False) -> bytes:
    value = from_value.encode()
    if fold and " <" in from_value:
        value = value.replace(b" <", b"\r\n <", 1)
    return b"To: b@example.net\r\nFrom:" + value + b"\r\nSubject: s\r\n\r\nbody\r\n"


@settings(max_examples=3000, deadline=None)
@given(simple_field(), st.booleans())
def test_quick_reading_agrees_with_getaddresses(value, fold):
    msg = message(value, fold)
    assert from_domain(msg) == _from_domain_parsed(value)


@pytest.mark.parametrize("value", [
    ' "Smith, John" <john@a.example>',
    " john@a.example (John)",
    " a@a.example, b@b.example",
    " Group: a@a.example;",
    " =?utf-8?q?J=C3=B6rg?= <j@a.example>",
    " J\xc3\xb6rg <j@a.example>",
])
def test_other_shapes_go_to_the_full_parser(value):
    assert _SIMPLE_FROM.match(value.encode("latin-1")) is None


@pytest.mark.parametrize(("value", "expected"), [
    (" Alice <alice@Sender.Example.>", "sender.example"),
    (" alice@sender.example", "sender.example"),
    (' "Smith, John" <john@a.example>', "a.example"),
    (" a@a.example, b@b.example", None),
    (" a@a.example, b@A.example", "a.example"),
])
def test_from_domain_of_each_shape(value, expected):
    assert from_domain(message(value)) == expected
