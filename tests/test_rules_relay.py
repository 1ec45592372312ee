"""Who may relay: every trick a relay tester tries is refused (pure rules, no sockets)."""

import pytest

from gateway.rules.relay import decide_inbound_recipient, decide_outbound_recipient

OWNED = {"acme.example": "acme", "sub.acme.example": "acme"}


def owner(domain):
    return OWNED.get(domain)


@pytest.mark.parametrize("address, delivered_as", [
    ("user@acme.example", "user@acme.example"),
    ("User@ACME.Example", "User@acme.example"),
    ("user@acme.example.", "user@acme.example"),
    ("user@sub.acme.example", "user@sub.acme.example"),
    ("first.last+tag@acme.example", "first.last+tag@acme.example"),
    ('"john doe"@acme.example', '"john doe"@acme.example'),
])
def test_mail_for_our_domains_is_accepted(address, delivered_as):
    verdict, mailbox = decide_inbound_recipient(address, owner)
    assert verdict.accept
    assert str(mailbox) == delivered_as


@pytest.mark.parametrize("address", [
    "user@other.example",                       # third party
    "user@other.example.",                      # third party, trailing dot
    "user@acme.example.other.example",          # our name as a prefix
    "user@xacme.example",                       # our name as a suffix
    "user%other.example@acme.example",          # percent hack
    "user%other.example%acme.example@acme.example",
    "other.example!user@acme.example",          # bang path
    '"user@other.example"@acme.example',        # quoted local part hiding a route
    '"user%other.example"@acme.example',
    '"other.example!user"@acme.example',
    '"user\\@other.example"@acme.example',      # quoted-pair @
    "user@[192.0.2.1]",                         # IP literal
    "user@[IPv6:2001:db8::1]",
    "user@[127.0.0.1]",
])
def test_relay_tricks_are_refused_with_550_571(address):
    verdict, mailbox = decide_inbound_recipient(address, owner)
    assert not verdict.accept
    assert (verdict.reply.code, verdict.reply.enhanced) == (550, "5.7.1")
    assert mailbox is None


@pytest.mark.parametrize("address", [
    "user",                       # unqualified
    "@acme.example:user@other.example",  # source route left in: not a mailbox
    "user@",
    "user@acme..example",
    "user@-acme.example",
    'us"er@acme.example',
    "user @acme.example",
    "user@acme.example\r\nRCPT TO:<x@other.example>",
    "a" * 65 + "@acme.example",
    "user@acme_example",  # underscore is not a hostname; not ours anyway
])
def test_malformed_recipients_are_refused(address):
    verdict, _ = decide_inbound_recipient(address, owner)
    assert not verdict.accept
    assert verdict.reply.code in (550, 553)


def test_submission_may_send_anywhere_but_not_through_a_hidden_route():
    assert decide_outbound_recipient("someone@elsewhere.example")[0].accept
    for trick in ("user%other.example@elsewhere.example", "host!user@elsewhere.example",
                  '"a@b.example"@elsewhere.example'):
        verdict, _ = decide_outbound_recipient(trick)
        assert (verdict.reply.code, verdict.reply.enhanced) == (553, "5.1.3"), trick


# --- domains no policy file claims: the fact "hosted" gathered from the source -------

@pytest.mark.parametrize("hosted, code, enhanced", [
    (True, 250, "2.1.5"),    # default_policy.domains, or the source hosts it
    (False, 550, "5.7.1"),   # a stranger's domain
    (None, 451, "4.4.3"),    # the source cannot tell now: never 550, never accepted
])
def test_an_unclaimed_domain_is_judged_by_what_the_source_says(hosted, code, enhanced):
    verdict, mailbox = decide_inbound_recipient("user@db-only.example", owner, hosted)
    assert (verdict.reply.code, verdict.reply.enhanced) == (code, enhanced)
    assert verdict.accept is (hosted is True)
    assert (mailbox is not None) is (hosted is True)


@pytest.mark.parametrize("address", [
    "user%other.example@db-only.example",
    "other.example!user@db-only.example",
    '"user@other.example"@db-only.example',
    "user@[192.0.2.1]",
])
def test_relay_tricks_stay_refused_for_a_hosted_domain(address):
    verdict, _ = decide_inbound_recipient(address, owner, True)
    assert (verdict.reply.code, verdict.reply.enhanced) == (550, "5.7.1")


def test_a_policy_file_domain_needs_no_answer_from_the_source():
    verdict, _ = decide_inbound_recipient("user@acme.example", owner, None)
    assert verdict.accept
