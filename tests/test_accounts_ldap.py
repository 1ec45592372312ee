"""Accounts in a real OpenLDAP slapd on loopback, through bonsai: bind and compare modes."""

from __future__ import annotations

import time

import pytest

from gateway.accounts.customers import CustomerMap
from gateway.accounts.factory import build_source, probe
from gateway.accounts.ldap import ldap_source, user_dn, user_filter
from gateway.accounts.source import Outcome
from gateway.config.accounts import AccountsConfig, LdapSettings
from tests.support.accounts import ACME, FakeClock, directory, run, silent_tcp_server
from tests.support.slapd_server import (  # noqa: F401
    PEOPLE,
    READER_DN,
    READER_PW,
    slapd_fixture,
    slapd_server,
)

ATTRS = {"customer_attribute": "portcullisCustomer", "senders_attribute": "portcullisSender"}
SEARCH = {"search_base": PEOPLE, "search_filter": "(mail={login})",
          "bind_dn": READER_DN, "bind_password": READER_PW}
TEMPLATE = {"user_dn_template": "uid={user}," + PEOPLE}

# bind with a DN template (anonymous otherwise), bind after a search, compare after a search
MODES = {
    "bind-template": {"mode": "bind", **TEMPLATE},
    "bind-search": {"mode": "bind", **SEARCH},
    "compare": {"mode": "compare", **SEARCH},
}


def settings(slapd, mode: str, **kw) -> dict:
    return {"url": slapd.url, "timeout": 2, **MODES[mode], **ATTRS, **kw}


def config(slapd, mode="compare", **cache) -> AccountsConfig:
    return AccountsConfig.model_validate({
        "source": "ldap", "auth_timeout": 3, "ldap": settings(slapd, mode),
        "cache": {"ttl": 60, "negative_ttl": 5, **cache}})


async def auth_all(src, pairs):
    try:
        return [await src.authenticate(login, pw) for login, pw in pairs]
    finally:
        await src.close()


def make(slapd, mode):
    return ldap_source(LdapSettings(**settings(slapd, mode)), CustomerMap(directory(ACME)))


@pytest.mark.parametrize("mode", MODES)
def test_right_password_gives_the_account_with_customer_and_senders_attributes(slapd, mode):
    slapd.add_user("alice@acme.example", "s3cret", customer="acme-gold",
                   senders=["sales@acme.example", "*@shop.acme.example"])
    slapd.add_user("bob@acme.example", "pw-bob")
    alice, bob = run(auth_all(make(slapd, mode), [("alice@acme.example", "s3cret"),
                                                  ("bob@acme.example", "pw-bob")]))
    assert alice.outcome is Outcome.OK
    assert alice.identity.customer == "acme-gold"
    assert alice.identity.senders == {"alice@acme.example", "sales@acme.example", "*@shop.acme.example"}
    assert bob.identity.customer == "acme"  # no attribute: the owner of acme.example


@pytest.mark.parametrize("mode", MODES)
def test_wrong_password_and_unknown_login_get_the_same_answer(slapd, mode):
    slapd.add_user("alice@acme.example", "s3cret")
    wrong, unknown = run(auth_all(make(slapd, mode), [("alice@acme.example", "wrong"),
                                                      ("nobody@acme.example", "wrong")]))
    assert wrong.outcome is Outcome.INVALID
    assert wrong == unknown


@pytest.mark.parametrize("mode", MODES)
def test_empty_password_is_refused_never_an_unauthenticated_bind(slapd, mode):
    slapd.add_user("alice@acme.example", "s3cret")
    [answer] = run(auth_all(make(slapd, mode), [("alice@acme.example", "")]))
    assert answer.outcome is Outcome.INVALID


def test_filter_metacharacters_in_the_login_cannot_widen_the_search(slapd):
    slapd.add_user("alice@acme.example", "s3cret")
    [answer] = run(auth_all(make(slapd, "bind-search"), [("*", "s3cret")]))
    assert answer.outcome is Outcome.INVALID
    assert user_filter("(mail={login})", "a*)(uid=*") == r"(mail=a\2A\29\28uid=\2A)"
    assert user_dn("uid={user},ou=p", "a,b=c@x") == r"uid=a\,b\=c,ou=p"


@pytest.mark.parametrize("mode", ["bind-search", "compare"])
def test_directory_stopped_mid_test_gives_tempfail_then_recovers_after_restart(slapd, mode):
    slapd.add_user("alice@acme.example", "s3cret")

    async def go():
        src = build_source(config(slapd, mode, enabled=False), directory(ACME))
        try:
            first = await src.authenticate("alice@acme.example", "s3cret")
            slapd.stop()
            started = time.monotonic()
            during = await src.authenticate("alice@acme.example", "s3cret")
            during_wrong = await src.authenticate("alice@acme.example", "wrong")
            took = time.monotonic() - started
            slapd.start()
            after = await src.authenticate("alice@acme.example", "s3cret")
            return first, during, during_wrong, took, after
        finally:
            await src.close()

    first, during, during_wrong, took, after = run(go())
    assert first.outcome is Outcome.OK
    assert during.outcome is Outcome.TEMPFAIL and during_wrong.outcome is Outcome.TEMPFAIL
    assert took < 6
    assert after.outcome is Outcome.OK


def test_a_directory_that_never_answers_gives_tempfail_within_the_auth_timeout():
    with silent_tcp_server() as port:
        cfg = AccountsConfig.model_validate({
            "source": "ldap", "auth_timeout": 0.5, "cache": {"enabled": False},
            "ldap": {"url": f"ldap://127.0.0.1:{port}", "timeout": 10, **MODES["compare"]}})

        async def go():
            src = build_source(cfg, directory(ACME))
            started = time.monotonic()
            try:
                return await src.authenticate("alice@acme.example", "pw"), time.monotonic() - started
            finally:
                await src.close()

        answer, took = run(go())
    assert answer.outcome is Outcome.TEMPFAIL
    assert took < 1.5


def test_compare_mode_password_change_takes_effect_at_once_despite_the_cache(slapd):
    slapd.add_user("alice@acme.example", "old-pw")
    clock = FakeClock()

    async def go():
        src = build_source(config(slapd, "compare", ttl=3600), directory(ACME), clock=clock)
        try:
            await src.authenticate("alice@acme.example", "old-pw")
            cached = await src.authenticate("alice@acme.example", "old-pw")
            slapd.set_password("alice@acme.example", "new-pw")
            old = await src.authenticate("alice@acme.example", "old-pw")
            new = await src.authenticate("alice@acme.example", "new-pw")
            return cached, old, new, src.source.stats
        finally:
            await src.close()

    cached, old, new, stats = run(go())
    assert cached.outcome is Outcome.OK and stats.hits == 1
    assert old.outcome is Outcome.INVALID
    assert new.outcome is Outcome.OK


def test_bind_mode_cached_success_does_not_outlive_its_ttl(slapd):
    slapd.add_user("alice@acme.example", "s3cret")
    clock = FakeClock()

    async def go():
        src = build_source(config(slapd, "bind-search", ttl=30), directory(ACME), clock=clock)
        try:
            await src.authenticate("alice@acme.example", "s3cret")
            slapd.stop()
            clock.advance(29)
            within = await src.authenticate("alice@acme.example", "s3cret")
            clock.advance(2)
            beyond = await src.authenticate("alice@acme.example", "s3cret")
            return within, beyond
        finally:
            await src.close()

    within, beyond = run(go())
    assert within.outcome is Outcome.OK
    assert beyond.outcome is Outcome.TEMPFAIL


def test_bind_mode_password_change_takes_effect_once_the_new_password_is_used(slapd):
    slapd.add_user("alice@acme.example", "old-pw")
    clock = FakeClock()

    async def go():
        src = build_source(config(slapd, "bind-search", ttl=300), directory(ACME), clock=clock)
        try:
            await src.authenticate("alice@acme.example", "old-pw")
            slapd.set_password("alice@acme.example", "new-pw")
            new = await src.authenticate("alice@acme.example", "new-pw")
            old = await src.authenticate("alice@acme.example", "old-pw")
            return new, old
        finally:
            await src.close()

    new, old = run(go())
    assert new.outcome is Outcome.OK and old.outcome is Outcome.INVALID


def test_probe_finds_the_probe_login_and_reports_a_wrong_service_password(slapd):
    slapd.add_user("postmaster@acme.example", "pw")
    good = config(slapd).model_copy(update={"probe_login": "postmaster@acme.example"})
    assert run(probe(good)) == []
    missing = config(slapd).model_copy(update={"probe_login": "ghost@acme.example"})
    [line] = run(probe(missing))
    assert line == "accounts.ldap: probe login 'ghost@acme.example' not found"
    bad = AccountsConfig.model_validate({
        "source": "ldap", "ldap": {**settings(slapd, "compare"), "bind_password": "nope"}})
    [line] = run(probe(bad))
    assert line.startswith(f"accounts.ldap: {slapd.url}: ") and "nvalid credentials" in line


def test_probe_reports_a_domain_filter_the_server_refuses(slapd):
    good = AccountsConfig.model_validate({"source": "ldap", "ldap": settings(
        slapd, "compare", domain_filter="(mail=*@{domain})")})
    assert run(probe(good)) == []
    broken = AccountsConfig.model_validate({"source": "ldap", "ldap": settings(
        slapd, "compare", domain_filter="(mail=*@{domain}")})  # unbalanced
    [line] = run(probe(broken))
    assert line.startswith("accounts.ldap: domain_filter: "), line
