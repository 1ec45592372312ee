"""Sliding-window limits in the store: exact at the limit, sliding, all-or-nothing.

Every test runs against SQLite and against a real redis-server.
"""

from __future__ import annotations

import pytest

from gateway.store.base import Charge
from tests.support import redis_server as _redis
from tests.support import stores

# Fixtures used by name below (pytest finds them as module attributes).
redis_server = _redis.redis_server
any_store = stores.any_store

HOUR = 3600.0
T0 = 1_800_000_000.0


def per_hour(limit: int | None, key: str = "acct:alice:messages_per_hour", **kw) -> Charge:
    return Charge(key, HOUR, limit, name="messages_per_hour", **kw)


def test_limit_of_n_accepts_n_and_refuses_the_next_with_its_retry_time(any_store):
    async def body(store):
        results = [await store.charge([per_hour(5)], T0 + i) for i in range(6)]
        return results, await store.usage([per_hour(5)], T0 + 10)

    results, usage = any_store.run(body)
    assert [r.accepted for r in results] == [True] * 5 + [False]
    assert [r.used[0] for r in results] == [0, 1, 2, 3, 4, 5]
    refused = results[5]
    assert refused.refused is not None and refused.refused.name == "messages_per_hour"
    # The first charge (at T0) leaves the window at T0 + 3600; asked at T0 + 5.
    assert refused.retry_after == pytest.approx(HOUR - 5)
    assert usage == (5,)


def test_window_slides_one_charge_at_a_time(any_store):
    async def body(store):
        for i in range(3):
            assert (await store.charge([per_hour(3)], T0 + i * 10)).accepted
        just_before = await store.charge([per_hour(3)], T0 + HOUR - 0.001)
        exactly_at = await store.charge([per_hour(3)], T0 + HOUR)  # the T0 charge is out
        next_refused = await store.charge([per_hour(3)], T0 + HOUR + 5)
        next_ok = await store.charge([per_hour(3)], T0 + HOUR + 10)
        return just_before, exactly_at, next_refused, next_ok

    just_before, exactly_at, next_refused, next_ok = any_store.run(body)
    assert not just_before.accepted
    assert exactly_at.accepted
    assert not next_refused.accepted and next_refused.retry_after == pytest.approx(5)
    assert next_ok.accepted


def test_no_burst_across_an_hour_boundary(any_store):
    # A fixed window would reset at the top of the hour and let 2N through in two seconds.
    top = 1_800_000_000.0 - (1_800_000_000.0 % HOUR) + HOUR

    async def body(store):
        before = [await store.charge([per_hour(4)], top - 1) for _ in range(4)]
        after = await store.charge([per_hour(4)], top + 1)
        return before, after

    before, after = any_store.run(body)
    assert all(r.accepted for r in before)
    assert not after.accepted
    assert after.retry_after == pytest.approx(HOUR - 2)


def test_all_limits_of_a_request_pass_or_nothing_is_charged(any_store):
    account = per_hour(10, key="acct:alice:mph")
    customer = per_hour(2, key="cust:acme:mph")

    async def body(store):
        first = [await store.charge([account, customer], T0 + i) for i in range(3)]
        return first, await store.usage([account, customer], T0 + 5)

    results, usage = any_store.run(body)
    assert [r.accepted for r in results] == [True, True, False]
    assert results[2].refused == customer
    assert usage == (2, 2)  # the account was not charged for the refused third


def test_amounts_count_per_unit_and_an_amount_over_the_limit_never_fits(any_store):
    rcpt = Charge("acct:alice:rph", HOUR, 5, name="recipients_per_hour")

    async def body(store):
        a = await store.charge([Charge(rcpt.key, HOUR, 5, amount=3)], T0)
        b = await store.charge([Charge(rcpt.key, HOUR, 5, amount=2)], T0 + 100)
        c = await store.charge([Charge(rcpt.key, HOUR, 5, amount=1)], T0 + 200)
        d = await store.charge([Charge(rcpt.key, HOUR, 5, amount=6)], T0 + 200)
        # 4 more need the first 3 (T0) out: at T0+3600 only 2 are left, 2+4 > 5,
        # so the T0+100 charge must also leave.
        e = await store.charge([Charge(rcpt.key, HOUR, 5, amount=4)], T0 + 300)
        return a, b, c, d, e

    a, b, c, d, e = any_store.run(body)
    assert a.accepted and b.accepted and not c.accepted
    assert c.retry_after == pytest.approx(HOUR - 200)
    assert not d.accepted and d.retry_after is None
    assert not e.accepted and e.retry_after == pytest.approx(100 + HOUR - 300)


def test_distinct_members_are_limited_not_repeats(any_store):
    def dom(d: str) -> Charge:
        return Charge("acct:alice:dph", HOUR, 2, member=d, name="recipient_domains_per_hour")

    async def body(store):
        got = [
            (await store.charge([dom("a.example")], T0)).accepted,
            (await store.charge([dom("b.example")], T0 + 10)).accepted,
            (await store.charge([dom("a.example")], T0 + 20)).accepted,  # seen: free
        ]
        third = await store.charge([dom("c.example")], T0 + 30)
        # b.example was last seen at T0+10, a.example at T0+20: b leaves first.
        later = await store.charge([dom("c.example")], T0 + 10 + HOUR)
        return got, third, later

    got, third, later = any_store.run(body)
    assert got == [True, True, True]
    assert not third.accepted and third.used == (2,)
    assert third.retry_after == pytest.approx(HOUR - 20)
    assert later.accepted


def test_held_charges_count_until_released(any_store):
    async def body(store):
        held = await store.charge([per_hour(2, hold="txn1")], T0)
        other = await store.charge([per_hour(2, hold="txn2")], T0 + 1)
        full = await store.charge([per_hour(2)], T0 + 2)
        await store.release(["txn1"], T0 + 3)
        after_release = await store.charge([per_hour(2)], T0 + 4)
        return held, other, full, after_release

    held, other, full, after_release = any_store.run(body)
    assert held.accepted and other.accepted
    assert not full.accepted
    assert after_release.accepted


def test_committed_holds_stay_and_uncommitted_leases_run_out(any_store):
    async def body(store):
        await store.charge([per_hour(3, hold="kept")], T0, lease=600)
        await store.charge([per_hour(3, hold="crashed")], T0 + 1, lease=600)
        await store.commit(["kept"], T0 + 10)
        while_leased = await store.usage([per_hour(3)], T0 + 100)
        after_lease = await store.usage([per_hour(3)], T0 + 602)
        late_commit = None
        await store.commit(["crashed"], T0 + 700)  # too late: its room was freed
        late_commit = await store.usage([per_hour(3)], T0 + 701)
        await store.release(["kept"], T0 + 702)  # already committed: release is a no-op
        return while_leased, after_lease, late_commit, await store.usage([per_hour(3)], T0 + 703)

    while_leased, after_lease, late_commit, after_release = any_store.run(body)
    assert while_leased == (2,)
    assert after_lease == (1,)
    assert late_commit == (1,)
    assert after_release == (1,)



def test_a_hold_charged_twice_keeps_each_charge_s_own_lease(any_store):
    """Each charge's lease runs from its own time, also under a hold charged again
    later (Redis keeps one lease per hold and script run, SQLite one per row)."""
    async def body(store):
        await store.charge([per_hour(None, hold="tx")], T0, lease=600)
        await store.charge([per_hour(None, hold="tx")], T0 + 300, lease=600)
        both = await store.usage([per_hour(None)], T0 + 599)
        first_ran_out = await store.usage([per_hour(None)], T0 + 601)
        await store.commit(["tx"], T0 + 700)  # keeps the charge still leased
        committed = await store.usage([per_hour(None)], T0 + 1000)
        return both, first_ran_out, committed

    assert any_store.run(body) == ((2,), (1,), (1,))


def test_a_release_frees_every_charge_of_its_hold_and_no_other(any_store):
    async def body(store):
        await store.charge([per_hour(None, hold="a"), per_hour(None, key="acct:alice:rph", hold="a")], T0)
        await store.charge([per_hour(None, hold="b")], T0 + 1)
        await store.release(["a"], T0 + 2)
        await store.release(["a"], T0 + 3)  # twice: nothing more leaves
        return await store.usage([per_hour(None), per_hour(None, key="acct:alice:rph")], T0 + 4)

    assert any_store.run(body) == (1, 0)

def test_unlimited_charge_counts_but_never_refuses(any_store):
    async def body(store):
        rs = [await store.charge([per_hour(None)], T0 + i) for i in range(20)]
        return rs, await store.usage([per_hour(None)], T0 + 30)

    rs, usage = any_store.run(body)
    assert all(r.accepted for r in rs)
    assert usage == (20,)


def test_state_survives_a_new_client(any_store):
    any_store.run(lambda store: store.charge([per_hour(2)], T0))
    any_store.run(lambda store: store.charge([per_hour(2)], T0 + 1))
    third = any_store.run(lambda store: store.charge([per_hour(2)], T0 + 2))
    assert not third.accepted and third.used == (2,)
