"""XCLIENT and XFORWARD lines (gateway/downstream/origin.py), as tables."""

from __future__ import annotations

import pytest

from gateway.downstream.origin import (
    Origin,
    ehlo_name,
    offered,
    xclient_command,
    xforward_commands,
    xtext,
)

ALL_XCLIENT = offered("NAME ADDR PORT PROTO HELO LOGIN DESTADDR DESTPORT")
ALL_XFORWARD = offered("NAME ADDR PORT PROTO HELO IDENT SOURCE")


@pytest.mark.parametrize(("value", "encoded"), [
    ("client.example", "client.example"),
    ("a b", "a+20b"), ("x+y=z", "x+2By+3Dz"), ("tab\there", "tab+09here"),
    ("é", "+C3+A9"),  # UTF-8 octets
])
def test_xtext(value, encoded):
    assert xtext(value) == encoded


def test_xclient_carries_address_helo_and_login_and_clears_what_is_unknown():
    submitted = Origin("192.0.2.7", "laptop example", "alice@acme.example", "ID1.1")
    assert xclient_command(submitted, ALL_XCLIENT) == (
        b"XCLIENT NAME=[UNAVAILABLE] ADDR=192.0.2.7 PROTO=ESMTP HELO=laptop+20example "
        b"LOGIN=alice@acme.example")
    # MX: no login, which clears the one a reused session's last client had.
    inbound = Origin("2001:db8::7", None, None, "ID2.1", extended=False)
    assert xclient_command(inbound, ALL_XCLIENT) == (
        b"XCLIENT NAME=[UNAVAILABLE] ADDR=IPV6:2001:db8::7 PROTO=SMTP HELO=[UNAVAILABLE] "
        b"LOGIN=[UNAVAILABLE]")
    # Only what the server offers.
    assert xclient_command(submitted, offered("ADDR")) == b"XCLIENT ADDR=192.0.2.7"


def test_xforward_carries_everything_or_only_our_id_after_xclient():
    origin = Origin("192.0.2.7", "client.example", None, "TX1.1")
    assert xforward_commands(origin, ALL_XFORWARD, ident_only=False) == [
        b"XFORWARD NAME=[UNAVAILABLE] ADDR=192.0.2.7 PROTO=ESMTP HELO=client.example "
        b"IDENT=TX1.1 SOURCE=REMOTE"]
    assert xforward_commands(origin, ALL_XFORWARD, ident_only=True) == [b"XFORWARD IDENT=TX1.1"]
    assert xforward_commands(origin, frozenset(), ident_only=False) == []


def test_a_long_helo_goes_on_its_own_xforward_line():
    origin = Origin("192.0.2.7", "+" * 200, None, "TX1.1")  # 600 octets as xtext
    lines = xforward_commands(origin, ALL_XFORWARD, ident_only=False)
    assert [line.split(b"=", 1)[0] for line in lines] == [
        b"XFORWARD NAME", b"XFORWARD HELO", b"XFORWARD IDENT"]
    assert lines[1] == b"XFORWARD HELO=" + b"+2B" * 200


@pytest.mark.parametrize(("helo", "name"), [
    ("client.example", b"client.example"), ("[192.0.2.7]", b"[192.0.2.7]"),
    (None, b"mx.gateway.test"), ("two words", b"mx.gateway.test"), ("caf\u00e9", b"mx.gateway.test"),
])
def test_the_ehlo_after_xclient_names_the_client_when_it_is_one_plain_word(helo, name):
    assert ehlo_name(Origin("192.0.2.7", helo, None, "T"), "mx.gateway.test") == name
