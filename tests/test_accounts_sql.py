"""Accounts in a real PostgreSQL (Debian's postgresql) on loopback, through asyncpg."""

from __future__ import annotations

import asyncio
import time

import bcrypt
from passlib.hash import sha512_crypt

from gateway.accounts import passwords
from gateway.accounts.customers import CustomerMap
from gateway.accounts.factory import build_source, probe
from gateway.accounts.source import Outcome
from gateway.accounts.sql import SqlAccounts, redact_dsn
from gateway.config.accounts import AccountsConfig, SqlSettings
from tests.support.accounts import ACME, FakeClock, directory, run, silent_tcp_server
from tests.support.postgres_server import postgres_fixture, postgres_server, quote  # noqa: F401

QUERY = "SELECT password, customer, senders FROM mailbox WHERE login = lower($1) AND active"


def add(pg, login, hashed, customer=None, senders=None):
    cust = quote(customer) if customer else "NULL"
    send = "ARRAY[" + ",".join(quote(s) for s in senders) + "]" if senders else "NULL"
    pg.sql(f"INSERT INTO mailbox (login, password, customer, senders) VALUES "
           f"({quote(login)}, {quote(hashed)}, {cust}, {send})")


def settings(pg, query=QUERY, **kw) -> SqlSettings:
    return SqlSettings(dsn=pg.dsn, query=query, **kw)


def config(pg, **cache) -> AccountsConfig:
    return AccountsConfig.model_validate({
        "source": "sql", "auth_timeout": 3,
        "sql": {"dsn": pg.dsn, "query": QUERY, "connect_timeout": 1, "query_timeout": 1},
        "cache": {"ttl": 60, "negative_ttl": 5, **cache}})


async def auth_all(src, pairs):
    try:
        return [await src.authenticate(login, pw) for login, pw in pairs]
    finally:
        await src.close()


def test_right_password_in_each_stored_format_gives_the_account(postgres):
    add(postgres, "argon@acme.example", passwords.hash_password("pw-a"), "acme-gold",
        ["sales@acme.example", "*@shop.acme.example"])
    add(postgres, "blf@acme.example", "{BLF-CRYPT}" + bcrypt.hashpw(b"pw-b", bcrypt.gensalt(4)).decode())
    add(postgres, "sha@acme.example", "{SHA512-CRYPT}" + sha512_crypt.using(rounds=5000).hash("pw-s"))
    src = SqlAccounts(settings(postgres), CustomerMap(directory(ACME)))
    a, b, s = run(auth_all(src, [("Argon@acme.example", "pw-a"), ("blf@acme.example", "pw-b"),
                                  ("sha@acme.example", "pw-s")]))
    assert [x.outcome for x in (a, b, s)] == [Outcome.OK] * 3
    assert a.identity.customer == "acme-gold"
    assert a.identity.senders == {"argon@acme.example", "sales@acme.example", "*@shop.acme.example"}
    assert b.identity.customer == "acme"  # NULL customer: the owner of acme.example


def test_senders_as_a_comma_separated_text_column_are_split(postgres):
    add(postgres, "csv@acme.example", passwords.hash_password("pw"))
    query = ("SELECT password, NULL::text AS customer, 'a@acme.example, b@acme.example' AS senders "
             "FROM mailbox WHERE login = $1")
    src = SqlAccounts(settings(postgres, query=query), CustomerMap(directory(ACME)))
    [answer] = run(auth_all(src, [("csv@acme.example", "pw")]))
    assert answer.identity.senders == {"csv@acme.example", "a@acme.example", "b@acme.example"}


def test_wrong_password_and_unknown_login_get_the_same_answer_in_similar_time(postgres):
    add(postgres, "alice@acme.example", passwords.hash_password("s3cret"))
    src = SqlAccounts(settings(postgres), CustomerMap(directory(ACME)))

    async def go():
        try:
            await src.authenticate("alice@acme.example", "warm-up")
            t0 = time.perf_counter()
            wrong = await src.authenticate("alice@acme.example", "wrong")
            t1 = time.perf_counter()
            unknown = await src.authenticate("nobody@acme.example", "wrong")
            t2 = time.perf_counter()
            return wrong, unknown, t1 - t0, t2 - t1
        finally:
            await src.close()

    wrong, unknown, t_wrong, t_unknown = run(go())
    assert wrong == unknown and wrong.outcome is Outcome.INVALID
    # An unknown login still verifies a dummy argon2id hash: no fast path to probe logins.
    assert t_unknown > t_wrong / 3


def test_inactive_account_is_refused_like_a_wrong_password(postgres):
    add(postgres, "gone@acme.example", passwords.hash_password("pw"))
    postgres.sql("UPDATE mailbox SET active = false WHERE login = 'gone@acme.example'")
    src = SqlAccounts(settings(postgres), CustomerMap(directory(ACME)))
    [answer] = run(auth_all(src, [("gone@acme.example", "pw")]))
    assert answer.outcome is Outcome.INVALID


def test_a_query_returning_two_rows_is_a_temporary_failure_not_a_refusal(postgres):
    add(postgres, "a@acme.example", passwords.hash_password("pw"))
    add(postgres, "b@acme.example", passwords.hash_password("pw"))
    src = SqlAccounts(settings(postgres, query="SELECT password FROM mailbox WHERE $1 <> ''"),
                      CustomerMap(directory(ACME)))
    [answer] = run(auth_all(src, [("a@acme.example", "pw")]))
    assert answer.outcome is Outcome.TEMPFAIL


def test_database_stopped_mid_test_gives_tempfail_then_recovers_after_restart(postgres):
    add(postgres, "alice@acme.example", passwords.hash_password("s3cret"))

    async def go():
        src = build_source(config(postgres, enabled=False), directory(ACME))
        try:
            first = await src.authenticate("alice@acme.example", "s3cret")
            postgres.stop()
            started = time.monotonic()
            during = await src.authenticate("alice@acme.example", "s3cret")
            during_wrong = await src.authenticate("alice@acme.example", "wrong")
            took = time.monotonic() - started
            postgres.start()
            # Recovery: the pool reconnects on a later AUTH (bounded wait on a busy machine).
            for _ in range(20):
                after = await src.authenticate("alice@acme.example", "s3cret")
                if after.outcome is Outcome.OK:
                    break
                await asyncio.sleep(0.5)
            return first, during, during_wrong, took, after
        finally:
            await src.close()

    first, during, during_wrong, took, after = run(go())
    assert first.outcome is Outcome.OK
    assert during.outcome is Outcome.TEMPFAIL and during_wrong.outcome is Outcome.TEMPFAIL
    assert took < 6
    assert after.outcome is Outcome.OK


def test_a_database_that_never_answers_gives_tempfail_within_the_auth_timeout():
    with silent_tcp_server() as port:
        cfg = AccountsConfig.model_validate({
            "source": "sql", "auth_timeout": 0.5, "cache": {"enabled": False},
            "sql": {"dsn": f"postgresql://x:y@127.0.0.1:{port}/mail", "query": QUERY,
                    "connect_timeout": 10}})

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


def test_password_change_in_the_database_takes_effect_at_once_despite_the_cache(postgres):
    add(postgres, "alice@acme.example", passwords.hash_password("old-pw"))
    clock = FakeClock()

    async def go():
        src = build_source(config(postgres, ttl=3600), directory(ACME), clock=clock)
        try:
            assert (await src.authenticate("alice@acme.example", "old-pw")).outcome is Outcome.OK
            cached = await src.authenticate("alice@acme.example", "old-pw")
            new_hash = passwords.hash_password("new-pw")
            postgres.sql(f"UPDATE mailbox SET password = {quote(new_hash)} "
                         "WHERE login = 'alice@acme.example'")
            old = await src.authenticate("alice@acme.example", "old-pw")  # within the TTL
            new = await src.authenticate("alice@acme.example", "new-pw")
            return cached, old, new, src.source.stats
        finally:
            await src.close()

    cached, old, new, stats = run(go())
    assert cached.outcome is Outcome.OK
    assert old.outcome is Outcome.INVALID  # never accepted from the cache
    assert new.outcome is Outcome.OK
    assert stats.hits == 1


def test_cached_success_saves_the_hash_check_but_does_not_outlive_its_ttl(postgres):
    add(postgres, "alice@acme.example", passwords.hash_password("s3cret"))
    clock = FakeClock()

    async def go():
        src = build_source(config(postgres, ttl=60), directory(ACME), clock=clock)
        try:
            await src.authenticate("alice@acme.example", "s3cret")
            t0 = time.perf_counter()
            hit = await src.authenticate("alice@acme.example", "s3cret")
            hit_time = time.perf_counter() - t0
            clock.advance(61)
            expired = await src.authenticate("alice@acme.example", "s3cret")
            return hit, hit_time, expired, src.source.stats
        finally:
            await src.close()

    hit, hit_time, expired, stats = run(go())
    assert hit.outcome is Outcome.OK and expired.outcome is Outcome.OK
    assert hit_time < 0.05  # a query, no argon2id
    assert (stats.hits, stats.misses) == (1, 2)


def test_probe_checks_the_query_columns_and_the_probe_login(postgres):
    add(postgres, "postmaster@acme.example", passwords.hash_password("pw"))
    good = config(postgres).model_copy(update={"probe_login": "postmaster@acme.example"})
    assert run(probe(good)) == []
    missing = config(postgres).model_copy(update={"probe_login": "nobody@acme.example"})
    [line] = run(probe(missing))
    assert "returned 0 rows for the probe login" in line
    bad_query = AccountsConfig.model_validate({
        "source": "sql", "sql": {"dsn": postgres.dsn, "query": "SELECT login FROM mailbox WHERE login=$1"}})
    [line] = run(probe(bad_query))
    assert line.startswith("accounts.sql: ") and "no 'password' column" in line
    wrong_pw = AccountsConfig.model_validate({
        "source": "sql", "sql": {"dsn": postgres.dsn.replace("app-pw", "bad-pw"), "query": QUERY}})
    [line] = run(probe(wrong_pw))
    assert "password authentication failed" in line and "bad-pw" not in line


def test_dsn_password_is_redacted_in_messages():
    assert redact_dsn("postgresql://u:secret@db:5432/mail") == "postgresql://u:***@db:5432/mail"
    assert redact_dsn("postgresql://db/mail") == "postgresql://db/mail"


def test_probe_reports_a_domain_query_postgresql_refuses(postgres):
    good = AccountsConfig.model_validate({"source": "sql", "sql": {
        "dsn": postgres.dsn, "query": QUERY,
        "domain_query": "SELECT 1 FROM mailbox WHERE split_part(login, '@', 2) = $1"}})
    assert run(probe(good)) == []
    typo = AccountsConfig.model_validate({"source": "sql", "sql": {
        "dsn": postgres.dsn, "query": QUERY, "domain_query": "SELECT 1 FROM domian WHERE name = $1"}})
    [line] = run(probe(typo))
    assert line == 'accounts.sql: domain_query: relation "domian" does not exist'
