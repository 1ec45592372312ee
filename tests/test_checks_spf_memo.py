"""SPF results remembered next to the DNS answers they came from (gateway.checks.spf).

A warm cache spares the evaluation too; these prove the remembered result is
always the one a fresh evaluation would give: per local part when a record
uses macros, never past the earliest answer's TTL, forgotten with the cache.
"""

from __future__ import annotations

import asyncio

import pytest

from gateway.checks.dns import Resolver
from gateway.checks.spf import check_spf

pytest_plugins = ("tests.support.authdns",)

ZONE = {
    "memo.test": """
        plain       60  TXT "v=spf1 ip4:192.0.2.0/24 -all"
        viaincl     300 TXT "v=spf1 include:inner.memo.test -all"
        inner       20  TXT "v=spf1 ip4:192.0.2.0/24 -all"
        macro       300 TXT "v=spf1 exists:%{l}.ok.memo.test -all"
        alice.ok    300 A   127.0.0.2
        byhelo      300 TXT "v=spf1 exists:%{h}.ok.memo.test -all"
    """,
}
GOOD_IP, BAD_IP = "192.0.2.1", "203.0.113.9"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def server(authdns_module_factory):
    return authdns_module_factory(ZONE)


def run(coro):
    return asyncio.run(coro)


async def spf(resolver, mail_from, ip=GOOD_IP, helo="mx.memo.test"):
    return (await check_spf(resolver, client_ip=ip, mail_from=mail_from, helo=helo)).result


def test_a_macro_record_is_evaluated_for_each_local_part(server):
    async def go():
        resolver = Resolver(["127.0.0.1"], port=server.port, timeout=2.0)
        first = [await spf(resolver, f"{who}@macro.memo.test") for who in ("alice", "bob")]
        # Warm now: the answers must still follow the local part.
        again = [await spf(resolver, f"{who}@macro.memo.test") for who in ("bob", "alice", "bob")]
        return first, again

    assert run(go()) == (["pass", "fail"], ["fail", "pass", "fail"])


def test_a_macro_on_the_helo_name_keeps_results_apart(server):
    async def go():
        resolver = Resolver(["127.0.0.1"], port=server.port, timeout=2.0)
        out = []
        for helo in ("alice", "bob", "alice", "bob"):
            out.append(await spf(resolver, "x@byhelo.memo.test", helo=helo))
        return out

    assert run(go()) == ["pass", "fail", "pass", "fail"]


def test_a_record_without_macros_serves_every_local_part_and_client_apart(server):
    async def go():
        resolver = Resolver(["127.0.0.1"], port=server.port, timeout=2.0)
        await spf(resolver, "a@plain.memo.test")
        sent = resolver.queries_sent
        results = [await spf(resolver, f"user{i}@plain.memo.test") for i in range(5)]
        remembered = resolver.recall(("spf", GOOD_IP, "mailfrom", "plain.memo.test"))
        bad = await spf(resolver, "user9@plain.memo.test", ip=BAD_IP)
        return results, remembered, bad, resolver.queries_sent - sent

    results, remembered, bad, sent = run(go())
    assert results == ["pass"] * 5 and remembered is not None and remembered[0] == "pass"
    assert bad == "fail"  # another client address is its own evaluation
    assert sent == 0


def test_a_remembered_result_expires_with_the_earliest_answer(server):
    clock = FakeClock()

    async def go():
        resolver = Resolver(["127.0.0.1"], port=server.port, timeout=2.0, clock=clock)
        key = ("spf", GOOD_IP, "mailfrom", "viaincl.memo.test")
        await spf(resolver, "a@viaincl.memo.test")  # cold: the thread path fills the cache
        await spf(resolver, "a@viaincl.memo.test")  # warm: evaluated from cache, remembered
        kept = resolver.recall(key) is not None
        clock.now += 21  # inner.memo.test (TTL 20) has expired, viaincl (300) has not
        gone = resolver.recall(key) is None
        sent = resolver.queries_sent
        result = await spf(resolver, "a@viaincl.memo.test")
        return kept, gone, result, resolver.queries_sent - sent

    kept, gone, result, sent = run(go())
    assert kept and gone
    assert result == "pass" and sent == 1  # only the expired answer was asked again


def test_clearing_the_cache_forgets_remembered_results(server):
    async def go():
        resolver = Resolver(["127.0.0.1"], port=server.port, timeout=2.0)
        key = ("spf", GOOD_IP, "mailfrom", "plain.memo.test")
        await spf(resolver, "a@plain.memo.test")
        await spf(resolver, "a@plain.memo.test")
        before = resolver.recall(key)
        resolver.clear_cache()
        return before, resolver.recall(key)

    before, after = run(go())
    assert before is not None and after is None
