"""DSN parameters (RFC 3461 §4) taken from MAIL/RCPT, and which parameters go on to a
downstream: only those of extensions its EHLO offered.  Pure functions, table-driven."""

from __future__ import annotations

import pytest

from gateway import replies
from gateway.downstream.parameters import MAIL_PARAMETERS, RCPT_PARAMETERS, passed
from gateway.smtp.dsn_parameters import MAIL_NAMES, RCPT_NAMES, take_dsn_parameters


@pytest.mark.parametrize("text, names, rest, taken", [
    ("SIZE=10 RET=hdrs ENVID=AbC+2Bx", MAIL_NAMES, "SIZE=10", ["RET=HDRS", "ENVID=AbC+2Bx"]),
    ("BODY=8BITMIME", MAIL_NAMES, "BODY=8BITMIME", []),
    ("notify=success,delay ORCPT=rfc822;Bob+40a.example", RCPT_NAMES, "",
     ["NOTIFY=SUCCESS,DELAY", "ORCPT=rfc822;Bob+40a.example"]),
    ("NOTIFY=NEVER", RCPT_NAMES, "", ["NOTIFY=NEVER"]),
])
def test_dsn_parameters_are_taken_with_their_values_as_sent(text, names, rest, taken):
    assert take_dsn_parameters(text, names, offered=True) == (rest, taken, None)


@pytest.mark.parametrize("text, names", [
    ("RET=PARTIAL", MAIL_NAMES),           # §4.3: FULL or HDRS
    ("RET", MAIL_NAMES),                   # a value is required
    ("RET=FULL RET=HDRS", MAIL_NAMES),     # once only
    ("ENVID=" + "a" * 101, MAIL_NAMES),    # §4.4: at most 100 characters
    ("ENVID=a+2", MAIL_NAMES),             # xtext: "+" and two hex digits
    ("NOTIFY=NEVER,SUCCESS", RCPT_NAMES),  # §4.1: NEVER alone
    ("NOTIFY=SOMETIMES", RCPT_NAMES),
    ("ORCPT=bob@a.example", RCPT_NAMES),   # §4.2: addr-type ";" xtext
])
def test_malformed_dsn_parameters_are_syntax_errors(text, names):
    _, taken, refusal = take_dsn_parameters(text, names, offered=True)
    assert taken == [] and refusal is not None
    assert (refusal.code, refusal.enhanced) == (501, "5.5.4")


def test_dsn_parameters_without_dsn_advertised_are_not_implemented_here():
    _, _, refusal = take_dsn_parameters("NOTIFY=NEVER", RCPT_NAMES, offered=False)
    assert refusal == replies.DSN_NOT_OFFERED
    assert take_dsn_parameters("SIZE=5", MAIL_NAMES, offered=False) == ("SIZE=5", [], None)


@pytest.mark.parametrize("offered, sent", [
    ({"size", "8bitmime", "dsn", "smtputf8"}, ["SIZE=9", "BODY=8BITMIME", "SMTPUTF8", "RET=FULL"]),
    ({"size"}, ["SIZE=9"]),
    ({"8bitmime"}, ["BODY=8BITMIME"]),
    (set(), []),
])
def test_mail_parameters_go_on_only_with_the_extension_offered(offered, sent):
    params = ["SIZE=9", "BODY=8BITMIME", "SMTPUTF8", "RET=FULL", "X-UNKNOWN=1"]
    assert passed(params, MAIL_PARAMETERS, frozenset(offered))[0] == sent


def test_rcpt_parameters_go_on_only_with_dsn_offered():
    params = ["NOTIFY=NEVER", "ORCPT=rfc822;a+40b.example"]
    assert passed(params, RCPT_PARAMETERS, frozenset({"dsn"})) == (params, [])
    assert passed(params, RCPT_PARAMETERS, frozenset({"size"})) == ([], params)
