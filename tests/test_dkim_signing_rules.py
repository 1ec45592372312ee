"""The signing decision (gateway.rules.signing) and the DKIM configuration models, as tables."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from pydantic import ValidationError

from gateway import replies
from gateway.config.dkim import DkimPolicy, DkimSettings, SelectorMeta
from gateway.dkim.keystore import ActiveKey
from gateway.dkim.sign import signing_facts
from gateway.message import Message
from gateway.rules.signing import SigningFacts, decide_signing

_RSA = rsa.generate_private_key(public_exponent=65537, key_size=1024)
_ED = ed25519.Ed25519PrivateKey.generate()
RSA_NEW = ActiveKey("acme.example", "r2", "rsa-sha256", _RSA)
RSA_OLD = ActiveKey("acme.example", "r1", "rsa-sha256", _RSA)
ED = ActiveKey("acme.example", "e1", "ed25519-sha256", _ED)
OTHER = ActiveKey("shop.example", "s1", "rsa-sha256", _RSA)
OWNED = ("acme.example", "shop.example", "plain.example")


def facts(*domains: str, fields: int = 1, ok: bool = True) -> SigningFacts:
    return SigningFacts(header_ok=ok, from_fields=fields, from_domains=domains)


POLICY = DkimPolicy(
    sign=["acme.example", "shop.example"],
    expire_after=86400,
    domains={"shop.example": {"multiple_signatures": False, "missing_key": "send-unsigned",
                              "expire_after": 3600}},
)


@pytest.mark.parametrize(("case", "f", "keys", "reply", "selectors", "log_level"), [
    ("malformed header", facts(ok=False), [RSA_NEW], replies.MALFORMED_HEADER, (), None),
    ("no From", facts(fields=0), [RSA_NEW], replies.FROM_HEADER_COUNT, (), None),
    ("two From fields", facts("acme.example", "acme.example", fields=2), [RSA_NEW],
     replies.FROM_HEADER_COUNT, (), None),
    ("From without address", facts(), [RSA_NEW], replies.MALFORMED_HEADER, (), None),
    ("From in two domains", facts("acme.example", "evil.example"), [RSA_NEW],
     replies.FROM_SEVERAL_DOMAINS, (), None),
    ("From domain not owned", facts("evil.example"), [RSA_NEW], replies.FROM_DOMAIN_NOT_OWNED, (), None),
    ("owned but not signed by policy", facts("plain.example"), [], replies.OK, (), None),
    ("every active key signs", facts("acme.example"), [RSA_NEW, RSA_OLD, ED], replies.OK,
     ("r2", "r1", "e1"), None),
    ("keys of other domains are ignored", facts("acme.example"), [OTHER, ED], replies.OK, ("e1",), None),
    ("no active key: tempfail by default", facts("acme.example"), [OTHER],
     replies.SIGNING_KEY_UNAVAILABLE, (), "error"),
    ("no active key: send-unsigned when asked", facts("shop.example"), [], replies.OK, (), "warning"),
    ("one signature when multiple are off", facts("shop.example"),
     [ActiveKey("shop.example", "e", "ed25519-sha256", _ED), OTHER], replies.OK, ("s1",), None),
])
def test_decide_signing(case, f, keys, reply, selectors, log_level):
    d = decide_signing(f, OWNED, POLICY, keys)
    assert d.verdict.reply == reply, case
    assert d.verdict.accept == reply.is_success
    assert tuple(k.selector for k in d.keys) == selectors
    assert d.log_level == log_level
    assert d.signs == bool(selectors)


def test_tempfail_reply_is_451_4_7_0_and_the_log_names_the_domain():
    d = decide_signing(facts("acme.example"), OWNED, POLICY, [])
    assert (d.verdict.reply.code, d.verdict.reply.enhanced) == (451, "4.7.0")
    assert "acme.example" in d.log and "keys list" in d.log


def test_expiry_comes_from_the_domain_override_else_the_customer_default():
    assert decide_signing(facts("acme.example"), OWNED, POLICY, [RSA_NEW]).expire_after == 86400
    shop = decide_signing(facts("shop.example"), OWNED, POLICY, [OTHER])
    assert shop.expire_after == 3600


def test_sign_all_is_the_default_and_covers_every_owned_domain():
    d = decide_signing(facts("plain.example"), OWNED, DkimPolicy(), [])
    assert d.verdict.reply == replies.SIGNING_KEY_UNAVAILABLE


# --- the facts, from message bytes ----------------------------------------------------------
@pytest.mark.parametrize(("message", "expected"), [
    (b"From: Alice <alice@Acme.Example>\r\n\r\nx\r\n", facts("acme.example")),
    (b"From: a@acme.example, b@evil.example\r\n\r\nx\r\n", facts("acme.example", "evil.example")),
    (b"From: a@acme.example\r\nFrom: b@acme.example\r\n\r\nx\r\n",
     facts("acme.example", "acme.example", fields=2)),
    (b"To: b@example.org\r\n\r\nx\r\n", facts(fields=0)),
    (b"From: not an address\r\n\r\nx\r\n", facts(fields=0, ok=False)),
])
def test_signing_facts_from_the_message(message, expected):
    # (A header that does not parse never gets here: the handler refuses it first.)
    assert signing_facts(Message.parse(message)) == expected


# --- configuration models -------------------------------------------------------------------
def test_policy_defaults():
    p = DkimPolicy()
    assert (p.sign, p.missing_key, p.expire_after, p.multiple_signatures) == ("all", "tempfail", None, True)


@pytest.mark.parametrize(("data", "message"), [
    ({"sign": ["acme.example"], "domains": {"shop.example": {}}}, "shop.example has settings but is not in sign"),
    ({"sign": ["acme.example", "ACME.example."]}, "listed twice"),
    ({"missing_key": "drop"}, "Input should be 'tempfail' or 'send-unsigned'"),
    ({"expire_after": 60}, "greater than or equal to 3600"),
    ({"sing": "all"}, "Extra inputs are not permitted"),
    ({"sign": ["not a domain"]}, "not a valid domain name"),
])
def test_policy_validation_errors(data, message):
    with pytest.raises(ValidationError, match=message):
        DkimPolicy.model_validate(data)


def test_policy_domains_are_normalised():
    p = DkimPolicy.model_validate({"sign": ["Acme.Example."], "domains": {"ACME.example": {}}})
    assert p.sign == ("acme.example",) and list(p.domains) == ["acme.example"]


def test_gateway_settings_defaults_and_strictness():
    s = DkimSettings()
    assert (str(s.keys_dir), s.publish_grace_days) == ("keys", 7)
    with pytest.raises(ValidationError):
        DkimSettings.model_validate({"key_dir": "x"})


def test_selector_meta_round_trips_to_yaml():
    meta = SelectorMeta.model_validate({"algorithm": "rsa-sha256", "not_before": "2027-01-01T00:00:00Z"})
    assert meta.to_yaml_dict() == {"algorithm": "rsa-sha256", "not_before": "2027-01-01T00:00:00Z"}
    assert SelectorMeta.model_validate(meta.to_yaml_dict()) == meta


@pytest.mark.parametrize(("senders", "domain", "signable"), [
    ({"alice@acme.example"}, "acme.example", True),             # the customer's own
    ({"alice@acme.example"}, "partner.example", False),         # granted nothing there
    ({"*@partner.example"}, "partner.example", True),           # the source grants the domain
    ({"sales@partner.example"}, "partner.example", True),       # ... or one address in it
    ({"*@partner.example"}, "sub.partner.example", False),      # *@domain is that domain only
])
def test_signing_domains_are_the_customers_and_the_granted_ones(senders, domain, signable):
    from gateway.rules.senders import signing_domains
    from gateway.values.identity import Identity

    domains = signing_domains(Identity("alice@acme.example", "acme", frozenset(senders)),
                              frozenset(OWNED))
    assert (domain in domains) is signable
    # The signing rule then signs it under the customer's policy, as its own domains.
    decision = decide_signing(facts(domain), domains, DkimPolicy(),
                              [ActiveKey(domain, "s", "rsa-sha256", _RSA)])
    assert decision.signs is signable
