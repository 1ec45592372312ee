"""The auth cache (as Dovecot's), the customer mapping, and the accounts config section.

The cache is exercised in front of the real YAML source (a real policy index and
real hash verification); the server-backed sources have their own cache tests.
"""

from __future__ import annotations

import asyncio

import pytest
from passlib.hash import sha512_crypt
from pydantic import ValidationError

from gateway.accounts.cache import CachedSource
from gateway.accounts.customers import CustomerMap, split_senders
from gateway.accounts.factory import Deadline, build_source
from gateway.accounts.source import Identity, Outcome
from gateway.accounts.yaml_source import YamlAccounts
from gateway.config.accounts import AccountsConfig
from tests.support.accounts import FakeClock, directory, run


def crypt(pw: str) -> str:
    return "{SHA512-CRYPT}" + sha512_crypt.using(rounds=1000).hash(pw)


def policy(passwords: dict[str, str], customer="acme", domain="acme.example", **extra) -> dict:
    return {"customer": customer, "domains": [domain],
            "accounts": [{"login": login, "password": crypt(pw)} for login, pw in passwords.items()],
            **extra}


class CountingYaml(YamlAccounts):
    """The real YAML source, counting the look-ups that reach it."""

    calls = 0

    async def authenticate(self, login, password):
        self.calls += 1
        return await super().authenticate(login, password)


def cached(passwords: dict[str, str], clock=None, **kw):
    inner = CountingYaml(directory(policy(passwords)))
    return inner, CachedSource(inner, clock=clock or FakeClock(), **kw)


def test_success_is_answered_from_cache_until_ttl_then_asked_again():
    clock = FakeClock()
    inner, cache = cached({"a@acme.example": "pw"}, clock, ttl=10)

    async def go():
        for _ in range(3):
            assert (await cache.authenticate("a@acme.example", "pw")).outcome is Outcome.OK
        clock.advance(10.01)
        assert (await cache.authenticate("a@acme.example", "pw")).outcome is Outcome.OK

    run(go())
    assert inner.calls == 2
    assert cache.stats.hits == 2


def test_a_different_password_is_never_answered_from_the_success_entry():
    inner, cache = cached({"a@acme.example": "pw"}, ttl=300)

    async def go():
        await cache.authenticate("a@acme.example", "pw")
        return await cache.authenticate("a@acme.example", "PW")

    assert run(go()).outcome is Outcome.INVALID
    assert inner.calls == 2


def test_reload_with_a_changed_password_drops_the_cached_success():
    clock = FakeClock()
    inner, cache = cached({"a@acme.example": "old"}, clock, ttl=300)

    async def go():
        await cache.authenticate("a@acme.example", "old")
        cache.replace_directory(directory(policy({"a@acme.example": "new"})))
        return (await cache.authenticate("a@acme.example", "old"),
                await cache.authenticate("a@acme.example", "new"))

    old, new = run(go())
    assert old.outcome is Outcome.INVALID and new.outcome is Outcome.OK


def test_failures_are_cached_briefly_then_asked_again():
    clock = FakeClock()
    inner, cache = cached({"a@acme.example": "pw"}, clock, negative_ttl=5)

    async def go():
        for _ in range(5):
            assert (await cache.authenticate("a@acme.example", "guess")).outcome is Outcome.INVALID
        clock.advance(5.01)
        await cache.authenticate("a@acme.example", "guess")

    run(go())
    assert inner.calls == 2
    assert cache.stats.negative_hits == 4


def test_a_negative_entry_does_not_block_the_right_password():
    inner, cache = cached({"a@acme.example": "pw"}, negative_ttl=60)

    async def go():
        await cache.authenticate("a@acme.example", "typo")
        return await cache.authenticate("a@acme.example", "pw")

    assert run(go()).outcome is Outcome.OK


def test_cache_size_is_bounded_least_recently_used_first():
    logins = {f"u{i}@acme.example": f"pw{i}" for i in range(6)}
    inner, cache = cached(logins, max_entries=3, negative_ttl=0)

    async def go():
        for login, pw in logins.items():
            await cache.authenticate(login, pw)
        assert len(cache) == 3
        inner.calls = 0
        await cache.authenticate("u5@acme.example", "pw5")  # kept
        await cache.authenticate("u0@acme.example", "pw0")  # evicted: asks again

    run(go())
    assert inner.calls == 1


def test_identical_lookups_in_flight_share_one_trip_to_the_source():
    inner, cache = cached({"a@acme.example": "pw"})

    async def go():
        return await asyncio.gather(*(cache.authenticate("a@acme.example", "pw") for _ in range(20)))

    answers = run(go())
    assert all(a.outcome is Outcome.OK for a in answers)
    assert inner.calls == 1


def test_tempfail_is_never_cached_and_a_crash_is_tempfail():
    class Broken(YamlAccounts):
        fail = True

        async def authenticate(self, login, password):
            if self.fail:
                raise ConnectionResetError("backend went away")
            return await super().authenticate(login, password)

    inner = Broken(directory(policy({"a@acme.example": "pw"})))
    source = Deadline(CachedSource(inner, clock=FakeClock()), timeout=2)

    async def go():
        first = await source.authenticate("a@acme.example", "pw")
        inner.fail = False
        return first, await source.authenticate("a@acme.example", "pw")

    first, second = run(go())
    assert first.outcome is Outcome.TEMPFAIL
    assert second.outcome is Outcome.OK


def test_build_source_wraps_the_yaml_default_in_cache_and_deadline():
    src = build_source(AccountsConfig(), directory(policy({"a@acme.example": "pw"})))
    assert isinstance(src, Deadline) and isinstance(src.source, CachedSource)
    assert run(src.authenticate("a@acme.example", "pw")).outcome is Outcome.OK
    bare = build_source(AccountsConfig(cache={"enabled": False}), directory())
    assert isinstance(bare.source, YamlAccounts)


# --- mapping to policy ----------------------------------------------------------

ACME = policy({"alice@acme.example": "pw"}, aliases={"info@acme.example": ["alice@acme.example"]})
ACME["accounts"][0]["senders"] = ["ceo@acme.example"]


@pytest.mark.parametrize("login, named, customer", [
    ("alice@acme.example", None, "acme"),            # domain owned by a policy file
    ("alice@ACME.example.", None, "acme"),           # domain normalised first
    ("x@other.example", None, "other.example"),      # no policy file: the domain, on defaults
    ("x@other.example", "gold-7", "gold-7"),         # the source names the customer
    ("x@other.example", "bad id!", "other.example"), # unusable name: ignored
    ("localonly", None, "default"),                  # no domain: default_customer
])
def test_customer_for_a_login(login, named, customer):
    assert CustomerMap(directory(ACME)).customer_for(login, named) == customer


@pytest.mark.parametrize("value, expected", [
    (None, []),
    ("a@x.example, b@x.example c@x.example", ["a@x.example", "b@x.example", "c@x.example"]),
    (["a@x.example", "b@x.example,c@x.example"], ["a@x.example", "b@x.example", "c@x.example"]),
    (b"a@x.example", ["a@x.example"]),
])
def test_senders_from_a_source_in_any_shape(value, expected):
    assert split_senders(value) == expected


def test_bad_senders_from_the_source_are_dropped_and_the_login_is_always_allowed():
    ident = CustomerMap(directory(ACME)).identity("Bob@Acme.example", None,
                                                  ["ok@acme.example", "not an address", "*@Shop.Acme.example"])
    assert ident.login == "bob@acme.example"
    assert ident.senders == {"bob@acme.example", "ok@acme.example", "*@shop.acme.example"}


def test_granted_senders_combine_source_and_yaml_account_aliases_stay_checked_by_membership():
    from gateway.rules.senders import granted, may_send_as

    dir_ = directory(ACME)
    acme = dir_.customers["acme"]
    from_source = Identity("alice@acme.example", "acme", frozenset({"alice@acme.example", "x@acme.example"}))
    widened = granted(from_source, acme, dir_.accounts.get("alice@acme.example"))
    assert widened.senders == {"alice@acme.example", "x@acme.example", "ceo@acme.example"}
    assert may_send_as(widened, acme.aliases, "info@acme.example")
    # A customer without a policy file adds nothing; an account of another customer neither.
    elsewhere = Identity("alice@acme.example", "other.example", frozenset({"alice@acme.example"}))
    assert granted(elsewhere, None, dir_.accounts.get("alice@acme.example")) == elsewhere
    assert granted(elsewhere, acme, dir_.accounts.get("alice@acme.example")) == elsewhere


# --- the accounts: section ----------------------------------------------------------

@pytest.mark.parametrize("section, problem", [
    ({"source": "sql"}, "sql: source is sql, so its settings are required"),
    ({"source": "yaml", "dovecot": {"address": "/run/a"}}, "dovecot: settings given but source is yaml"),
    ({"source": "dovecot", "dovecot": {"address": "nowhere"}}, "neither a socket path"),
    ({"source": "sql", "sql": {"dsn": "mysql://x", "query": "SELECT $1"}}, "must be a postgresql:// URL"),
    ({"source": "sql", "sql": {"dsn": "postgresql://db/m", "query": "SELECT password FROM t WHERE login='x'"}},
     "must use $1"),
    ({"source": "ldap", "ldap": {"url": "ldap://h", "user_dn_template": "uid={user}", "search_base": "dc=x"}},
     "either user_dn_template or search_base"),
    ({"source": "ldap", "ldap": {"url": "ldap://h", "search_base": "dc=x", "mode": "compare"}},
     "compare mode reads the hash"),
    ({"source": "yaml", "cache": {"ttl": -1}}, "greater than or equal to 0"),
    ({"source": "yaml", "auth_timout": 3}, "Extra inputs are not permitted"),
])
def test_bad_accounts_sections_are_refused_with_the_reason(section, problem):
    with pytest.raises(ValidationError) as err:
        AccountsConfig.model_validate(section)
    assert problem in str(err.value)


def test_accounts_config_is_frozen_and_defaults_to_yaml():
    cfg = AccountsConfig()
    assert cfg.source == "yaml" and cfg.cache.enabled and cfg.auth_timeout == 5
    with pytest.raises(ValidationError):
        cfg.source = "sql"
