"""The content decision as a table: rspamd's answer and the rules in, action and reply out.

No sockets: ScanResult values are built by hand, as rspamd would send them.
"""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from gateway import replies
from gateway.checks.rspamd import ScannerUnavailable, ScanResult, parse_result
from gateway.config.content import (
    ContentRules,
    CustomerContent,
    HoldSettings,
    NotifySettings,
    ScannerSettings,
    effective_rules,
)
from gateway.rules.content import SPAM_HEADERS, decide_content, decide_unscanned, skip_scan


def result(action: str, score: float = 0.0, required: float = 15.0) -> ScanResult:
    return ScanResult(score=score, required_score=required, action=action,
                      symbols=("SYM_B", "SYM_A"), message_id="m@x", skipped=False, elapsed=0.01)


OUT = ScannerSettings().outbound
IN = ScannerSettings().inbound
BY_SCORE = ContentRules(by="score", score={"tag": 5.0, "hold": 10.0, "reject": 20.0})


@pytest.mark.parametrize("direction, rules, rspamd_action, score, expected", [
    # rspamd's recommended action, through the default table
    ("outbound", OUT, "no action", 0.5, "pass"),
    ("outbound", OUT, "greylist", 4.5, "pass"),
    ("outbound", OUT, "add header", 7.0, "tag"),
    ("outbound", OUT, "rewrite subject", 9.0, "tag"),  # never a Subject rewrite
    ("outbound", OUT, "soft reject", 0.0, "tempfail"),
    ("outbound", OUT, "reject", 16.0, "reject"),
    ("inbound", IN, "no action", 0.5, "pass"),
    ("inbound", IN, "add header", 7.0, "tag"),
    ("inbound", IN, "reject", 16.0, "reject"),
    # a customer's table, merged onto the defaults
    ("outbound", effective_rules(OUT, ContentRules(actions={"reject": "hold"})), "reject", 16.0, "hold"),
    ("outbound", effective_rules(OUT, ContentRules(actions={"reject": "hold"})), "add header", 7.0, "tag"),
    ("outbound", effective_rules(OUT, ContentRules(actions={"add header": "pass"})), "add header", 7.0, "pass"),
    # a gateway table that lists one action only: the others keep their defaults
    ("outbound", ContentRules(actions={"reject": "hold"}), "soft reject", 0.0, "tempfail"),
    # by score: the most severe threshold reached wins, whatever rspamd recommends
    ("outbound", BY_SCORE, "no action", 4.99, "pass"),
    ("outbound", BY_SCORE, "no action", 5.0, "tag"),
    ("outbound", BY_SCORE, "add header", 12.0, "hold"),
    ("outbound", BY_SCORE, "reject", 25.0, "reject"),
    ("outbound", BY_SCORE, "reject", -3.0, "pass"),
    ("outbound", ContentRules(by="score", score={"reject": 8.0, "tag": 8.0}), "no action", 8.0, "reject"),
])
def test_action_table(direction, rules, rspamd_action, score, expected):
    decision = decide_content(direction, rules, result(rspamd_action, score))
    assert decision.action == expected
    assert decision.facts["outcome"] == expected
    assert decision.facts["direction"] == direction


@pytest.mark.parametrize("action, accept, code, enhanced, hold, incident, headers", [
    ("pass", True, 250, "2.0.0", False, None, ()),
    ("tag", True, 250, "2.0.0", False, None, SPAM_HEADERS),
    ("hold", True, 250, "2.0.0", True, "held", ()),
    ("tempfail", False, 451, "4.7.1", False, None, ()),
    ("reject", False, 550, "5.7.1", False, "rejected", ()),
])
def test_each_action_has_its_reply_headers_and_incident(action, accept, code, enhanced, hold,
                                                         incident, headers):
    rules = ContentRules(actions={"reject": action})
    decision = decide_content("outbound", rules, result("reject", 30.0), reference="tx-42")
    reply = decision.verdict.reply
    assert (decision.verdict.accept, reply.code, reply.enhanced) == (accept, code, enhanced)
    assert decision.hold is hold
    assert decision.incident == incident
    assert tuple(name for name, _ in decision.headers) == headers
    if action != "pass" and action != "tag":
        assert "(id tx-42)" in reply.text


def test_refusals_never_name_rspamd_symbols():
    for action in ("tempfail", "reject", "hold"):
        decision = decide_content("outbound", ContentRules(actions={"reject": action}),
                                  result("reject", 30.0))
        assert "SYM_" not in str(decision.verdict.reply)
        assert decision.facts["symbols"] == ["SYM_B", "SYM_A"]  # they go to the log instead


def test_outbound_reject_tells_the_customer_what_to_do_and_inbound_the_sender():
    out = decide_content("outbound", OUT, result("reject", 30.0)).verdict.reply
    inb = decide_content("inbound", IN, result("reject", 30.0)).verdict.reply
    assert out == replies.CONTENT_REJECTED and "password" in out.text
    assert inb == replies.INBOUND_CONTENT_REJECTED and "recipient" in inb.text


def test_tag_headers_are_spamassassin_style():
    decision = decide_content("outbound", OUT, result("add header", 7.456, 15.0))
    assert decision.headers == (
        ("X-Spam-Flag", "YES"),
        ("X-Spam-Score", "7.46"),
        ("X-Spam-Status", "Yes, score=7.46 required=15.00 action=add_header"),
    )


@pytest.mark.parametrize("unreachable, action, reply, incident", [
    ("tempfail", "tempfail", replies.SCANNER_UNAVAILABLE, None),
    ("pass", "pass", replies.OK, None),
    ("hold", "hold", replies.HELD_FOR_REVIEW, "held"),
    ("reject", "reject", replies.SCANNER_UNAVAILABLE_REJECTED, None),
])
@pytest.mark.parametrize("kind", ["refused", "timeout", "http_status", "bad_response"])
def test_unreachable_scanner_follows_the_direction_setting(unreachable, action, reply, incident, kind):
    decision = decide_content("inbound", ContentRules(unreachable=unreachable), None, scanner_error=kind)
    assert decision.action == action
    assert decision.verdict.reply == reply
    assert decision.incident == incident
    assert decision.facts == {"direction": "inbound", "outcome": action,
                              "cause": "unreachable", "scanner_error": kind}


def test_default_when_unreachable_is_tempfail_in_both_directions():
    assert OUT.unreachable == "tempfail" and IN.unreachable == "tempfail"


def test_a_decision_needs_a_result_or_an_error():
    with pytest.raises(ValueError):
        decide_content("outbound", OUT, None)


@pytest.mark.parametrize("rules, size, cause", [
    (OUT, 1000, None),
    (OUT, 2000, None),
    (OUT, 2001, "too_big"),
    (IN, 1000, "disabled"),  # inbound scanning is opt-in
    (ContentRules(enabled=False), 10, "disabled"),
])
def test_skip_scan_when_disabled_or_too_big(rules, size, cause):
    decision = skip_scan("outbound", rules, size, max_size=2000)
    if cause is None:
        assert decision is None
    else:
        assert decision.action == "pass" and decision.facts["cause"] == cause


@pytest.mark.parametrize("cause", ["disabled", "too_big"])
def test_unscanned_mail_passes_and_says_why(cause):
    decision = decide_unscanned("outbound", cause)
    assert decision.action == "pass" and decision.facts["cause"] == cause


# --- configuration ---------------------------------------------------------------


def test_customer_override_replaces_only_what_it_writes():
    gateway = ContentRules(by="score", score={"tag": 5.0, "reject": 15.0}, unreachable="pass")
    customer = CustomerContent.model_validate({"outbound": {"score": {"reject": 10.0, "hold": 8.0}}})
    merged = effective_rules(gateway, customer.outbound)
    assert merged.by == "score" and merged.unreachable == "pass"
    assert merged.score == {"tag": 5.0, "reject": 10.0, "hold": 8.0}
    assert effective_rules(gateway, customer.inbound) is gateway


@pytest.mark.parametrize("model, data, field", [
    (ContentRules, {"by": "score"}, "score"),
    (ContentRules, {"actions": {"spam": "reject"}}, "actions"),
    (ContentRules, {"actions": {"reject": "bounce"}}, "actions"),
    (ContentRules, {"unreachable": "tag"}, "unreachable"),
    (ContentRules, {"colour": "red"}, "colour"),
    (ContentRules, {"settings_id": "bad id"}, "settings_id"),
    (ScannerSettings, {"url": "rspamd:11333"}, "url"),
    (ScannerSettings, {"timeout": 0}, "timeout"),
    (HoldSettings, {"at_max_age": "forget"}, "at_max_age"),
    (NotifySettings, {"abuse_address": "not an address"}, "abuse_address"),
    (NotifySettings, {"webhook_url": "ftp://x.example/"}, "webhook_url"),
])
def test_bad_settings_are_refused(model, data, field):
    with pytest.raises(ValidationError) as info:
        model.model_validate(data)
    text = str(info.value)
    assert field in text or "score" in text


def test_settings_are_frozen():
    with pytest.raises(ValidationError):
        ScannerSettings().timeout = 3  # type: ignore[misc]


# --- parsing rspamd's answer -----------------------------------------------------


def test_symbols_are_ordered_by_score_and_undef_message_id_is_none():
    body = (b'{"score": 9.5, "required_score": 15, "action": "add header", "message-id": "undef",'
            b' "symbols": {"A": {"score": 1.0}, "B": {"score": 5.0}, "C": {"score": -1}}}')
    parsed = parse_result(body, 0.1)
    assert parsed.symbols == ("B", "A", "C")
    assert parsed.message_id is None
    assert parsed.evidence()["symbols"] == ["B", "A", "C"]


def test_unknown_action_is_not_a_result():
    with pytest.raises(ScannerUnavailable):
        parse_result(b'{"score": 1, "required_score": 15, "action": "quarantine"}', 0.1)
