"""The MX's "do we host this domain?" answers (gateway/accounts/hosted_domains.py),
in front of the real SQL source and a real PostgreSQL: cached both ways for their
TTLs, bounded, one query per domain in flight, and no answer (never a yes) when
the database is down or hangs."""

from __future__ import annotations

import asyncio

from gateway.accounts.customers import CustomerMap
from gateway.accounts.hosted_domains import HostedDomains
from gateway.accounts.sql import SqlAccounts
from gateway.config.accounts import SqlSettings
from gateway.config.directory import Directory
from tests.support.accounts import FakeClock, run, silent_tcp_server
from tests.support.postgres_server import postgres_fixture, postgres_server, quote  # noqa: F401

DOMAIN_QUERY = "SELECT 1 FROM mailbox WHERE split_part(login, '@', 2) = $1 LIMIT 1"


class CountingSql(SqlAccounts):
    """The real SQL source, counting the domain queries that reach the database."""

    asked = 0

    async def hosts_domain(self, domain):
        self.asked += 1
        return await super().hosts_domain(domain)


def sql_source(dsn: str) -> CountingSql:
    settings = SqlSettings(dsn=dsn, query="SELECT password FROM mailbox WHERE login = $1",
                           domain_query=DOMAIN_QUERY, connect_timeout=1, query_timeout=1)
    return CountingSql(settings, CustomerMap(Directory(), "default"))


def hosted(source, clock, **kw) -> HostedDomains:
    opts = {"ttl": 300, "negative_ttl": 60, "max_entries": 100, "timeout": 2} | kw
    return HostedDomains(source, clock=clock, **opts)


def add(pg, login):
    pg.sql(f"INSERT INTO mailbox (login, password) VALUES ({quote(login)}, 'x')")


def test_answers_are_cached_for_their_ttls_both_ways(postgres):
    add(postgres, "a@db.example")
    source, clock = sql_source(postgres.dsn), FakeClock()
    domains = hosted(source, clock)

    async def go():
        try:
            answers = [await domains.hosts(d) for d in ("db.example", "new.example",
                                                        "db.example", "new.example")]
            assert (answers, source.asked) == ([True, False, True, False], 2)
            add(postgres, "b@new.example")  # the ISP adds a domain
            clock.advance(61)  # past negative_ttl, within ttl
            assert await domains.hosts("new.example") is True
            assert await domains.hosts("db.example") is True
            assert source.asked == 3
            postgres.sql("TRUNCATE mailbox")
            clock.advance(300)
            assert await domains.hosts("db.example") is False
        finally:
            await source.close()

    run(go())


def test_one_query_per_domain_in_flight_and_the_table_is_bounded(postgres):
    add(postgres, "a@db.example")
    source, clock = sql_source(postgres.dsn), FakeClock()
    domains = hosted(source, clock, max_entries=3)

    async def go():
        try:
            answers = await asyncio.gather(*(domains.hosts("db.example") for _ in range(20)))
            assert answers == [True] * 20 and source.asked == 1
            for i in range(5):  # a stranger spraying random domains
                assert await domains.hosts(f"s{i}.example") is False
            assert len(domains._answers) == 3
            assert await domains.hosts("db.example") is True  # evicted: asked again
            assert source.asked == 7
        finally:
            await source.close()

    run(go())


def test_a_database_that_is_down_gives_no_answer_and_it_is_not_cached(postgres):
    add(postgres, "a@db.example")
    source, clock = sql_source(postgres.dsn), FakeClock()
    domains = hosted(source, clock)

    async def go():
        try:
            postgres.stop()
            assert await domains.hosts("db.example") is None
            assert await domains.hosts("stranger.example") is None
            postgres.start()
            assert await domains.hosts("db.example") is True
        finally:
            await source.close()

    run(go())


def test_a_database_that_hangs_gives_no_answer_within_the_timeout():
    with silent_tcp_server() as port:
        source = sql_source(f"postgresql://portcullis@127.0.0.1:{port}/mail")
        domains = hosted(source, FakeClock(), timeout=0.5)

        async def go():
            loop = asyncio.get_running_loop()
            started = loop.time()
            try:
                assert await domains.hosts("db.example") is None
                assert loop.time() - started < 1.5
            finally:
                await source.close()

        run(go())
