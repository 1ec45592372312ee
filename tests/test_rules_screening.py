"""MX screening decisions (gateway/rules/screening.py) over plain data: no sockets."""

import ipaddress

import pytest

from gateway.config.screening import CustomerScreening, ScreeningSettings
from gateway.rules.screening import (
    client_network,
    decide_concurrency,
    decide_connection_rate,
    decide_message,
    decide_recipient,
    dnsbl_query_name,
    is_in,
    score_client,
)
from gateway.values.screening import ClientFacts, Iprev, Listing, ZoneAnswer

SETTINGS = ScreeningSettings.model_validate({
    "dnsbl": {"sites": [
        {"zone": "zen.example", "weight": 3, "codes": ["127.0.0.2-127.0.0.9"]},
        {"zone": "zen.example", "weight": 1, "codes": ["127.0.0.10-127.0.0.11"]},
        {"zone": "any.example", "weight": 2},
        {"zone": "wl.example", "weight": -5, "codes": ["127.0.10.1-127.0.10.3"]},
    ], "refuse_at": 3, "allowlist_at": -1},
    "dynamic_ranges": ["198.51.100.0/24", "2001:db8:100::/40"],
    "allowlist": ["192.0.2.0/28"],
    "limits": {"connections_per_minute": 5, "messages_per_minute": 2,
               "recipients_per_minute": 3, "connections_per_address": 1},
})


def code(text):
    return int(ipaddress.IPv4Address(text))


@pytest.mark.parametrize("ip, zone, expected", [
    ("192.0.2.1", "zen.example", "1.2.0.192.zen.example"),  # RFC 5782 §2.1
    ("2001:db8:1:2::1", "zen.example",  # §2.4: 32 nibbles, reversed
     "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.2.0.0.0.1.0.0.0.8.b.d.0.1.0.0.2.zen.example"),
])
def test_dnsbl_query_names(ip, zone, expected):
    assert dnsbl_query_name(ip, zone) == expected


@pytest.mark.parametrize("answers, score, listed", [
    ({}, 0, []),
    ({"zen.example": ["127.0.0.2"]}, 3, ["zen.example:127.0.0.2"]),
    ({"zen.example": ["127.0.0.10"]}, 1, ["zen.example:127.0.0.10"]),
    # SBL and PBL at once: both ranges of the zone count, each once.
    ({"zen.example": ["127.0.0.4", "127.0.0.10", "127.0.0.11"]}, 4,
     ["zen.example:127.0.0.4", "zen.example:127.0.0.10"]),
    # An answer outside every filter (a list's error code) counts for nothing.
    ({"zen.example": ["127.255.255.254"]}, 0, []),
    # A site without codes counts any answer.
    ({"any.example": ["127.0.0.77"]}, 2, ["any.example:127.0.0.77"]),
    ({"zen.example": ["127.0.0.2"], "wl.example": ["127.0.10.2"]}, -2,
     ["zen.example:127.0.0.2", "wl.example:127.0.10.2"]),
    ({"wl.example": ["127.0.10.0"]}, 0, []),  # DNSWL's lowest trust: not counted here
])
def test_scores_add_weights_of_matching_codes(answers, score, listed):
    zone_answers = {z: ZoneAnswer(z, tuple(code(c) for c in cs)) for z, cs in answers.items()}
    facts = score_client("192.0.2.99", SETTINGS.dnsbl.sites, zone_answers)
    assert facts.score == score
    assert [f"{li.zone}:{li.code}" for li in facts.listings] == listed


def test_a_failed_lookup_adds_nothing_and_is_named():
    facts = score_client("192.0.2.99", SETTINGS.dnsbl.sites,
                         {"zen.example": ZoneAnswer("zen.example", failed=True)})
    assert (facts.score, facts.listings, facts.dns_failed) == (0, (), ("zen.example",))
    assert "dnsbl_failed=zen.example" in facts.summary


LISTED = ClientFacts("203.0.113.9", 4, (Listing("zen.example", 3, "127.0.0.2"),
                                        Listing("zen.example", 1, "127.0.0.10")))
PBL_ONLY = ClientFacts("203.0.113.9", 1, (Listing("zen.example", 1, "127.0.0.10"),))
CLEAN = ClientFacts("203.0.113.9", 0, (), (), Iprev("fail"))
DNSWL = ClientFacts("203.0.113.9", -5, (Listing("wl.example", -5, "127.0.10.2"),))


@pytest.mark.parametrize("ip, facts, kwargs, customer, rule", [
    ("203.0.113.9", LISTED, {}, None, "screening.dnsbl"),
    ("203.0.113.9", LISTED, {"is_role": True}, None, ""),  # abuse@ always gets in
    ("192.0.2.5", LISTED, {}, None, ""),  # the ISP's own relay
    ("203.0.113.9", PBL_ONLY, {}, None, ""),
    ("203.0.113.9", None, {}, None, ""),  # no look-ups made
    ("198.51.100.20", None, {}, None, "screening.dynamic_range"),
    ("2001:db8:100:5::1", None, {}, None, "screening.dynamic_range"),
    ("203.0.113.9", None, {"pregreeted": True}, None, "screening.pregreet"),
    ("203.0.113.9", None, {"recent_recipients": 4}, None, "screening.recipients_per_minute"),
    ("203.0.113.9", DNSWL, {"recent_recipients": 4}, None, ""),  # allowlisted by score
    # A customer may be stricter ...
    ("203.0.113.9", PBL_ONLY, {}, CustomerScreening(dnsbl_refuse_at=1), "screening.dnsbl"),
    ("203.0.113.9", CLEAN, {}, CustomerScreening(require_fcrdns=True), "screening.fcrdns"),
    ("203.0.113.9", ClientFacts("203.0.113.9", iprev=Iprev("temperror")), {},
     CustomerScreening(require_fcrdns=True), ""),  # our DNS's trouble, not theirs
    # ... never looser.
    ("203.0.113.9", LISTED, {}, CustomerScreening(dnsbl_refuse_at=90), "screening.dnsbl"),
])
def test_recipient_verdicts(ip, facts, kwargs, customer, rule):
    args = {"is_role": False, "pregreeted": False, "recent_recipients": 0, **kwargs}
    verdict = decide_recipient(SETTINGS, ip, facts, customer=customer, **args)
    assert verdict.rule == rule
    assert verdict.accept == (rule == "")


def test_dnsbl_refusal_names_client_and_heaviest_list():
    verdict = decide_recipient(SETTINGS, "203.0.113.9", LISTED, is_role=False, pregreeted=False,
                               recent_recipients=0)
    assert str(verdict.reply) == ("554 5.7.1 Service unavailable; client [203.0.113.9] "
                                  "listed by zen.example")
    assert dict(verdict.facts)["score"] == 4


def test_dynamic_range_refusal_points_to_submission():
    verdict = decide_recipient(SETTINGS, "198.51.100.20", None, is_role=False, pregreeted=False,
                               recent_recipients=0)
    assert verdict.reply.code == 550 and "587 or 465" in verdict.reply.text


@pytest.mark.parametrize("recent, accept", [(1, True), (5, True), (6, False)])
def test_connection_rate(recent, accept):
    verdict = decide_connection_rate(SETTINGS, recent)
    assert verdict.accept is accept
    assert accept or str(verdict.reply).startswith("421 4.7.0")


@pytest.mark.parametrize("recent, accept", [(2, True), (3, False)])
def test_message_rate(recent, accept):
    assert decide_message(SETTINGS, recent).accept is accept


@pytest.mark.parametrize("address_ok, network_ok, rule", [
    (True, True, ""), (False, True, "screening.connections_per_address"),
    (True, False, "screening.connections_per_24"),
])
def test_concurrency(address_ok, network_ok, rule):
    verdict = decide_concurrency(SETTINGS, address_ok, network_ok, "203.0.113.0/24")
    assert verdict.rule == rule
    assert rule == "" or verdict.reply.code == 421


@pytest.mark.parametrize("ip, network", [
    ("203.0.113.9", "203.0.113.0/24"), ("2001:db8:1:2:3::1", "2001:db8:1:2::/64"),
])
def test_client_network(ip, network):
    assert client_network(ip) == network


def test_ipv4_mapped_address_is_matched_as_ipv4():
    assert is_in("::ffff:198.51.100.7", SETTINGS.dynamic_ranges)
    assert not is_in("unknown", SETTINGS.dynamic_ranges)


def test_the_worked_isp_configuration_in_the_docs_is_valid():
    """docs/screening.md's example is what an operator copies: it must load."""
    import re
    from pathlib import Path

    import yaml

    text = (Path(__file__).resolve().parent.parent / "docs" / "screening.md").read_text()
    block = re.search(r"```yaml\n(dns:.*?)```", text, re.S).group(1)
    settings = ScreeningSettings.model_validate(yaml.safe_load(block)["screening"])
    assert settings.dnsbl.zones == ("zen.spamhaus.org", "list.dnswl.org")
    assert is_in("198.51.100.77", settings.dynamic_ranges)
    # DNSWL's "over quota" answer counts for nothing.
    answers = {"list.dnswl.org": ZoneAnswer("list.dnswl.org", (code("127.0.0.255"),))}
    assert score_client("192.0.2.1", settings.dnsbl.sites, answers).score == 0
