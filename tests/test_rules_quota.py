"""Quotas: inheritance, replies, and the RCPT/DATA accounting through the store.

The metering tests run the same cases against SQLite and a real redis-server.
"""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from gateway import replies
from gateway.config.quota import CustomerQuotas, QuotaLimits, QuotaSettings
from gateway.metering import RENEW_AFTER, SESSION_LEASE, Metering
from gateway.rules import quota
from gateway.rules.quota import AccountQuota, Limits, account_quota, effective_limits
from gateway.store.base import ChargeResult, Suspension
from tests.support import redis_server as _redis
from tests.support import stores

# Fixtures used by name below (pytest finds them as module attributes).
redis_server = _redis.redis_server
any_store = stores.any_store

T0 = 1_800_000_000.0
HOUR = 3600.0


# --- inheritance -------------------------------------------------------------------
def test_defaults_then_gateway_then_customer_then_account_per_field():
    gw = QuotaLimits.model_validate({"messages_per_hour": 50, "recipients_per_day": 900})
    cust = CustomerQuotas.model_validate({"messages_per_hour": 40, "recipients_per_message": 20})
    acct = QuotaLimits.model_validate({"messages_per_hour": 30})
    got = effective_limits(gw, cust, acct)
    assert got.messages_per_hour == 30
    assert got.recipients_per_message == 20
    assert got.recipients_per_day == 900
    assert got.messages_per_day == 1000  # built-in default


def test_null_written_means_no_limit_and_left_out_means_inherit():
    cust = CustomerQuotas.model_validate({"messages_per_day": None})
    got = effective_limits(QuotaLimits.model_validate({"messages_per_day": 5}), cust, None)
    assert got.messages_per_day is None
    assert effective_limits(None, CustomerQuotas(), None).messages_per_day == 1000


def test_customer_aggregate_sits_above_the_accounts():
    cust = CustomerQuotas.model_validate({"customer": {"messages_per_hour": 500}})
    acct = account_quota("Alice@Acme.example", "acme", None, cust, None)
    assert acct.login == "alice@acme.example"
    assert acct.aggregate.messages_per_hour == 500
    assert acct.aggregate.recipients_per_day is None


@pytest.mark.parametrize("bad", [
    {"messages_per_hour": 0}, {"messages_per_hour": "many"}, {"message_per_hour": 5},
    {"max_message_size": 10},
])
def test_bad_quota_values_are_refused(bad):
    with pytest.raises(ValidationError):
        QuotaLimits.model_validate(bad)


def test_store_section_picks_a_backend_and_redis_needs_a_url():
    s = QuotaSettings.model_validate({"store": {"backend": "redis", "url": "redis://127.0.0.1:6379/0"}})
    assert s.store.backend == "redis"
    assert QuotaSettings().store.backend == "sqlite"
    with pytest.raises(ValidationError):
        QuotaSettings.model_validate({"store": {"backend": "redis"}})
    with pytest.raises(ValidationError):
        QuotaSettings.model_validate({"store": {"backend": "memcached"}})


# --- pure decisions ------------------------------------------------------------------
def acct(shadow: bool = False, **limits) -> AccountQuota:
    return AccountQuota("alice@acme.example", "acme", Limits(**limits), shadow=shadow)


@pytest.mark.parametrize("size,limit,code", [
    (None, 1000, 250), (1000, 1000, 250), (1001, 1000, 552), (10**9, None, 250),
])
def test_size_is_refused_with_552_5_3_4_only_above_the_limit(size, limit, code):
    d = quota.decide_size(acct(max_message_size=limit), size)
    assert d.verdict.reply.code == code
    if code == 552:
        assert d.verdict.reply.enhanced == "5.3.4" and str(limit) in d.verdict.reply.text


@pytest.mark.parametrize("so_far,accept", [(0, True), (2, True), (3, False), (10, False)])
def test_recipients_per_message_allows_n_and_refuses_the_next_with_452_4_5_3(so_far, accept):
    d = quota.decide_recipient_count(acct(recipients_per_message=3), so_far)
    assert d.accept is accept
    if not accept:
        assert (d.verdict.reply.code, d.verdict.reply.enhanced) == (452, "4.5.3")


def test_rate_refusal_says_which_limit_and_when_to_retry():
    charges = quota.recipient_charges(acct(messages_per_hour=10), "b.example", True, "m", "r")
    mph = next(c for c in charges if c.name == "messages_per_hour")
    d = quota.decide_charge(acct(), ChargeResult(False, (10,), mph, 12 * 60 + 5))
    r = d.verdict.reply
    assert (r.code, r.enhanced) == (451, "4.7.1")
    assert "at most 10 messages per hour for this account" in r.text
    assert "try again in 13 minutes" in r.text


def test_shadow_mode_accepts_but_says_it_would_refuse():
    charges = quota.recipient_charges(acct(recipients_per_hour=1), "b.example", True, "m", "r")
    rph = next(c for c in charges if c.name == "recipients_per_hour")
    d = quota.decide_charge(acct(shadow=True), ChargeResult(False, (1,), rph, 60))
    assert d.accept and d.verdict.reply.code == 250
    assert d.would_refuse is not None and d.would_refuse.code == 451
    assert "would refuse recipients_per_hour" in d.log_text()


def test_suspended_account_gets_550_5_7_1_with_a_sentence_to_contact_the_isp():
    v = quota.decide_suspended(Suspension("alice", T0, "spike")).verdict
    assert (v.reply.code, v.reply.enhanced) == (550, "5.7.1")
    assert "contact" in v.reply.text
    assert quota.decide_suspended(None).accept


# --- a choice at every limit (issue 18): defer | hold | reject ------------------------
@pytest.mark.parametrize(("action", "accept", "code", "enhanced", "held"), [
    ("defer", False, 451, "4.7.1", None),
    ("reject", False, 550, "5.7.1", None),
    ("hold", True, 250, "2.1.5", 451),
])
def test_a_rate_limit_is_answered_as_the_accounts_action_says(action, accept, code, enhanced, held):
    a = acct(messages_per_hour=10, at_limit=action)
    mph = next(c for c in quota.recipient_charges(a, "b.example", True, "m", "r")
               if c.name == "messages_per_hour")
    d = quota.decide_charge(a, ChargeResult(False, (10,), mph, 60))
    assert d.accept is accept and (d.verdict.reply.code, d.verdict.reply.enhanced) == (code, enhanced)
    assert (d.held.code if d.held else None) == held
    assert d.limit == "messages_per_hour"
    assert "at most 10 messages per hour" in (d.held or d.verdict.reply).text
    # A refusal for good does not tell the client to retry.
    assert ("try again" in d.verdict.reply.text) is (action == "defer")


@pytest.mark.parametrize(("action", "accept", "code", "held"), [
    ("reject", False, 550, None), ("defer", False, 451, 0), ("hold", True, 250, 550),
])
def test_a_suspended_accounts_mail_is_answered_as_its_action_says(action, accept, code, held):
    d = quota.decide_suspended(Suspension("alice", T0, "spike"), action)
    assert d.accept is accept and d.verdict.reply.code == code and d.limit == "suspended"
    assert (d.held.code if d.held else None) == (held or None)


def test_shadow_mode_never_holds():
    a = acct(shadow=True, messages_per_hour=1, at_limit="hold")
    mph = next(c for c in quota.recipient_charges(a, "b.example", True, "m", "r")
               if c.name == "messages_per_hour")
    d = quota.decide_charge(a, ChargeResult(False, (1,), mph, 60))
    assert d.accept and d.held is None and d.would_refuse is not None


def test_the_limit_actions_inherit_gateway_customer_account():
    gw = QuotaLimits(at_limit="hold")
    cust = CustomerQuotas(when_suspended="defer")
    assert effective_limits(gw, cust, None).at_limit == "hold"
    assert effective_limits(gw, cust, None).when_suspended == "defer"
    assert effective_limits(None, None, None).at_limit == "defer"
    assert effective_limits(None, None, None).when_suspended == "reject"
    assert effective_limits(gw, cust, QuotaLimits(at_limit="reject")).at_limit == "reject"
    with pytest.raises(ValidationError):
        QuotaLimits(at_limit="bounce")


def test_message_counters_charge_with_the_first_recipient_only():
    a = AccountQuota("a", "c", Limits(), quota.Aggregate(messages_per_hour=5))
    first = {c.name for c in quota.recipient_charges(a, "x.example", True, "m", "r0")}
    later = {c.name for c in quota.recipient_charges(a, "x.example", False, "m", "r1")}
    assert {"messages_per_hour", "customer messages_per_hour"} <= first
    assert not any(n.startswith(("messages", "customer messages")) for n in later)
    assert "recipient_domains_per_hour" in later


def test_only_the_aggregate_limits_a_customer_sets_are_counted():
    """An account's counters are all charged (status, compromise signals); a customer's
    aggregate only where it has a limit: nothing reads the others."""
    def names(aggregate: quota.Aggregate) -> set[str]:
        a = AccountQuota("a", "c", Limits(), aggregate)
        return {c.name for c in quota.recipient_charges(a, "x.example", True, "m", "r0")}

    own = {"messages_per_hour", "messages_per_day", "recipients_per_hour", "recipients_per_day",
           "recipient_domains_per_hour"}
    assert names(quota.Aggregate()) == own
    assert names(quota.Aggregate(recipients_per_day=50)) == own | {"customer recipients_per_day"}
    assert names(quota.Aggregate(messages_per_hour=0, recipients_per_hour=9)) == own | {
        "customer messages_per_hour", "customer recipients_per_hour"}


# --- through the store: both backends ----------------------------------------------
def settings(**compromise) -> QuotaSettings:
    return QuotaSettings.model_validate({"compromise": {"enabled": False, **compromise}})


async def send(m: Metering, a: AccountQuota, txid: str, rcpts: list[str], now: float,
               delivered: bool = True, refused_downstream: frozenset[str] = frozenset()):
    """One transaction as the handler runs it; returns the RCPT replies."""
    tx = m.begin(txid, f"lease-{txid}")
    codes = []
    for r in rcpts:
        d = await m.check_recipient(a, tx, r.rpartition("@")[2], now)
        codes.append(d.verdict.reply.code)
        if d.accept and r in refused_downstream:
            await m.recipient_refused(tx, now)
    await m.finish(a, tx, delivered, now)
    return codes


def test_messages_per_hour_n_accepted_then_451_then_slides(any_store):
    a = acct(messages_per_hour=3)

    async def body(store):
        m = Metering(store, settings())
        codes = [await send(m, a, f"t{i}", ["x@b.example"], T0 + i) for i in range(4)]
        slid = await send(m, a, "t9", ["x@b.example"], T0 + HOUR)
        return codes, slid

    codes, slid = any_store.run(body)
    assert codes == [[250], [250], [250], [451]]
    assert slid == [250]


def test_recipients_count_per_recipient_against_hour_and_day(any_store):
    a = acct(recipients_per_hour=5, recipients_per_day=7)

    async def body(store):
        m = Metering(store, settings())
        first = await send(m, a, "t1", [f"r{i}@b.example" for i in range(6)], T0)
        next_hour = await send(m, a, "t2", [f"s{i}@b.example" for i in range(3)], T0 + HOUR)
        return first, next_hour

    first, next_hour = any_store.run(body)
    assert first == [250] * 5 + [451]
    assert next_hour == [250, 250, 451]  # the day allows 7: 5 + 2


def test_distinct_recipient_domains_per_hour(any_store):
    a = acct(recipient_domains_per_hour=2)

    async def body(store):
        m = Metering(store, settings())
        return await send(m, a, "t1", ["a@one.example", "b@two.example", "c@one.example",
                                       "d@three.example"], T0)

    assert any_store.run(body) == [250, 250, 250, 451]


def test_downstream_refused_message_costs_nothing(any_store):
    a = acct(messages_per_hour=1, recipients_per_hour=2)

    async def body(store):
        m = Metering(store, settings())
        refused = await send(m, a, "t1", ["a@b.example", "c@b.example"], T0, delivered=False)
        ok = await send(m, a, "t2", ["a@b.example", "c@b.example"], T0 + 1)
        after = await send(m, a, "t3", ["a@b.example"], T0 + 2)
        return refused, ok, after

    refused, ok, after = any_store.run(body)
    assert refused == [250, 250] and ok == [250, 250]
    assert after == [451]


def test_recipient_refused_downstream_costs_nothing(any_store):
    a = acct(recipients_per_hour=2)

    async def body(store):
        m = Metering(store, settings())
        first = await send(m, a, "t1", ["bad@b.example", "a@b.example"], T0,
                           refused_downstream=frozenset({"bad@b.example"}))
        second = await send(m, a, "t2", ["c@b.example", "d@b.example"], T0 + 1)
        return first, second, await m.status(a, T0 + 2)

    first, second, status = any_store.run(body)
    assert first == [250, 250]
    assert second == [250, 451]
    assert {u.name: u.used for u in status.usage}["recipients_per_hour"] == 2


def test_a_delivered_message_writes_no_count_of_nothing(tmp_path):
    import asyncio
    import sqlite3
    from contextlib import closing

    from gateway.store.sqlite import SQLiteStore

    a = acct(messages_per_hour=10)

    async def body():
        store = SQLiteStore(tmp_path / "state.db")
        m = Metering(store, QuotaSettings())  # compromise signals on: they read the counts
        await send(m, a, "t1", ["a@b.example"], T0)
        await send(m, a, "t2", ["bad@b.example"], T0 + 1, refused_downstream=frozenset({"bad@b.example"}))
        signals = await m.signals(a.login, T0 + 2)
        await store.close()
        return signals

    signals = asyncio.run(body())
    assert (signals.downstream_tried, signals.downstream_refused) == (2, 1)
    with closing(sqlite3.connect(tmp_path / "state.db")) as db:
        assert db.execute("SELECT COUNT(*) FROM charges WHERE amount = 0").fetchone()[0] == 0


def test_every_attempted_recipient_counts_once_in_the_compromise_signals(any_store):
    """Attempted = sent (or open) + refused downstream + not sent; tried downstream =
    the first two: each recipient lands in exactly one counter, whatever its end."""
    a = acct(recipients_per_hour=4)

    async def body(store):
        m = Metering(store, QuotaSettings())
        await send(m, a, "t1", ["a@b.example", "b@b.example"], T0)                  # 2 sent
        await send(m, a, "t2", ["c@b.example"], T0 + 1, delivered=False)           # refused at DATA
        await send(m, a, "t3", ["bad@b.example", "d@b.example"], T0 + 2,           # 1 refused at RCPT,
                   refused_downstream=frozenset({"bad@b.example"}))               # 1 sent
        tx = m.begin("t4", "lease-t4")                                             # RSET: not sent
        assert (await m.check_recipient(a, tx, "b.example", T0 + 3)).accept
        await m.abort(tx, T0 + 3)
        codes = await send(m, a, "t5", ["f@b.example", "g@b.example"], T0 + 4)     # 1 sent, 1 over quota
        return codes, await m.signals(a.login, T0 + 5), await m.signals(a.login, T0 + 3605)

    codes, signals, later = any_store.run(body)
    assert codes == [250, 451]
    assert signals.sent_last_hour == 4  # a b d f
    assert (signals.downstream_tried, signals.downstream_refused) == (6, 2)  # and c, bad
    assert signals.attempted_last_hour == 8  # and e (reset), g (over quota)
    # An hour after the last of them, none counts.
    assert (later.attempted_last_hour, later.sent_last_hour, later.downstream_tried) == (0, 0, 0)


def test_recipients_refused_downstream_count_when_the_client_leaves_without_data(any_store):
    """Probing addresses with RCPT and leaving (RSET or QUIT before DATA) is what the
    refusal signal is for: the downstream's refusals count as at the end of DATA."""
    a = acct()

    async def body(store):
        m = Metering(store, QuotaSettings())
        tx = m.begin("t1", "lease-t1")
        for _ in range(3):  # three addresses the downstream does not know
            assert (await m.check_recipient(a, tx, "b.example", T0)).accept
            await m.recipient_refused(tx, T0)
        assert (await m.check_recipient(a, tx, "b.example", T0)).accept  # one it knows
        await m.abort(tx, T0 + 1)
        return await m.signals(a.login, T0 + 2)

    signals = any_store.run(body)
    assert (signals.downstream_tried, signals.downstream_refused) == (3, 3)
    assert (signals.attempted_last_hour, signals.sent_last_hour) == (4, 0)


def test_a_delivered_message_charges_only_the_accounts_own_counters(tmp_path):
    """A one-recipient message of an account whose customer sets no aggregate limit
    writes one row for each of the account's five rate counters, none else: the
    compromise signals read those (issue 16: it was eleven)."""
    import asyncio
    import sqlite3
    from contextlib import closing

    from gateway.store.sqlite import SQLiteStore

    a = acct(messages_per_hour=10)

    async def body():
        store = SQLiteStore(tmp_path / "state.db")
        await send(Metering(store, QuotaSettings()), a, "t1", ["a@b.example"], T0)
        await store.close()

    asyncio.run(body())
    with closing(sqlite3.connect(tmp_path / "state.db")) as db:
        keys = sorted(k for (k,) in db.execute("SELECT key FROM charges"))
    assert keys == [f"acct:alice@acme.example:{name}" for name in sorted(quota.RATE_LIMITS)]


def test_a_message_whose_first_recipient_the_downstream_refused_counts_once(any_store):
    """The message counters are charged with the transaction's first accepted
    recipient; that recipient refused downstream, the next one must not charge
    them again (they stay held with the message, committed once)."""
    a = acct(messages_per_hour=10, messages_per_day=10)

    async def body(store):
        m = Metering(store, settings())
        codes = await send(m, a, "t1", ["bad@b.example", "a@b.example", "c@b.example"], T0,
                           refused_downstream=frozenset({"bad@b.example"}))
        return codes, await m.status(a, T0 + 1)

    codes, status = any_store.run(body)
    used = {u.name: u.used for u in status.usage}
    assert codes == [250, 250, 250]
    assert (used["messages_per_hour"], used["messages_per_day"], used["recipients_per_hour"]) == (1, 1, 2)


def test_concurrent_transactions_of_one_account_cannot_overshoot(any_store):
    a = acct(messages_per_hour=2)

    async def body(store):
        m = Metering(store, settings())
        txs = [m.begin(f"t{i}") for i in range(3)]
        codes = [(await m.check_recipient(a, tx, "b.example", T0)).verdict.reply.code for tx in txs]
        await m.abort(txs[0], T0 + 1)  # the first one is reset: its hold goes back
        retry = (await m.check_recipient(a, txs[2], "b.example", T0 + 2)).verdict.reply.code
        return codes, retry

    codes, retry = any_store.run(body)
    assert codes == [250, 250, 451]
    assert retry == 250


def test_customer_aggregate_refuses_the_second_account(any_store):
    cust = CustomerQuotas.model_validate({"customer": {"messages_per_hour": 1}})
    alice = account_quota("alice@acme.example", "acme", None, cust, None)
    bob = account_quota("bob@acme.example", "acme", None, cust, None)

    async def body(store):
        m = Metering(store, settings())
        return (await send(m, alice, "t1", ["x@b.example"], T0),
                await send(m, bob, "t2", ["x@b.example"], T0 + 1))

    first, second = any_store.run(body)
    assert first == [250] and second == [451]


def test_shadow_mode_lets_everything_through_and_still_counts(any_store):
    a = acct(shadow=True, messages_per_hour=1)

    async def body(store):
        m = Metering(store, settings())
        codes = [await send(m, a, f"t{i}", ["x@b.example"], T0 + i) for i in range(3)]
        return codes, await m.status(a, T0 + 5)

    codes, status = any_store.run(body)
    assert codes == [[250], [250], [250]]
    assert {u.name: u.used for u in status.usage}["messages_per_hour"] == 3


def test_suspended_account_refused_at_the_first_rcpt_until_unsuspended(any_store):
    a = acct()

    async def body(store):
        m = Metering(store, settings())
        await m.suspend(a.login, T0)
        tx = m.begin("t1", "cid1")
        during = [await m.check_recipient(a, tx, "b.example", T0 + 1) for _ in range(2)]
        suspended_usage = await store.usage(quota.recipient_charges(a, "b.example", True, "m", "r"), T0 + 1)
        await m.finish(a, tx, False, T0 + 1)
        await m.unsuspend(a.login, T0 + 2)
        after = await m.check_recipient(a, m.begin("t2", "cid1"), "b.example", T0 + 3)
        return during, suspended_usage, after, await store.events(a.login)

    during, suspended_usage, after, events = any_store.run(body)
    # The second recipient hears the same, without asking the store again.
    assert [(d.verdict.reply.code, d.verdict.reply.enhanced) for d in during] == [(550, "5.7.1")] * 2
    assert set(suspended_usage) == {0}  # nothing was charged while suspended
    assert after.accept
    assert [e.kind for e in events] == ["unsuspended", "suspended"]


def test_the_first_rcpt_renews_the_sessions_slot_the_next_ones_do_not_ask(any_store):
    a = acct(concurrent_connections=1)

    async def body(store):
        m = Metering(store, settings())
        assert (await m.open_session(a, "cid1", T0)).accept
        tx = m.begin("t1", "cid1")
        # Past the session's lease, but renewed by the first RCPT: the slot is still taken.
        await m.check_recipient(a, tx, "b.example", T0 + SESSION_LEASE - 1)
        held = (await m.open_session(a, "cid2", T0 + SESSION_LEASE + 1)).reply.code
        # Not renewed by a later RCPT of the same transaction.
        await m.check_recipient(a, tx, "b.example", T0 + 2 * SESSION_LEASE - 2)
        free = (await m.open_session(a, "cid3", T0 + 2 * SESSION_LEASE)).reply.code
        return held, free

    assert any_store.run(body) == (454, 235)


def test_a_transaction_renews_the_slot_only_once_a_quarter_of_its_lease_has_passed(any_store):
    """Renewing at every transaction was two statements and two rows written a
    message; a session that keeps sending must still never lose its slot."""
    a = acct(concurrent_connections=1)

    async def send(m: Metering, txid: str, now: float) -> None:
        tx = m.begin(txid, "cid1")
        assert (await m.check_recipient(a, tx, "b.example", now)).accept
        await m.finish(a, tx, True, now)

    async def body(store):
        m = Metering(store, settings())
        assert (await m.open_session(a, "cid1", T0)).accept
        await send(m, "t1", T0 + 60)  # too soon: not renewed, the slot ends at T0 + lease
        early = await store.slots_in_use("conn:" + a.login, T0 + SESSION_LEASE + 1)
        await send(m, "t2", T0 + RENEW_AFTER + 1)  # renewed: until then + lease
        renewed = await store.slots_in_use("conn:" + a.login, T0 + SESSION_LEASE + 1)
        # A long session sending every 400 s: at every moment, its slot is held.
        held = []
        for i in range(1, 30):
            now = T0 + RENEW_AFTER + 1 + 400 * i
            held.append(await store.slots_in_use("conn:" + a.login, now))
            await send(m, f"u{i}", now)
        await m.close_session(a, "cid1")
        return early, renewed, set(held), await store.slots_in_use("conn:" + a.login, now)

    assert any_store.run(body) == (0, 1, {1}, 0)


def test_oversized_size_parameter_refused_at_mail():
    d = quota.decide_size(acct(max_message_size=2048), 4096)
    assert (d.verdict.reply.code, d.verdict.reply.enhanced) == (552, "5.3.4")


def test_concurrent_connections_per_account(any_store):
    a = acct(concurrent_connections=2)

    async def body(store):
        m = Metering(store, settings())
        got = [(await m.open_session(a, f"cid{i}", T0)).reply.code for i in range(3)]
        await m.close_session(a, "cid0")
        return got, (await m.open_session(a, "cid2", T0 + 1)).reply.code

    got, after = any_store.run(body)
    assert got == [235, 235, 454] and after == 235


def test_unreachable_store_answers_451_4_3_0_not_a_pass(tmp_path):
    import asyncio

    from gateway.store.sqlite import SQLiteStore

    async def body():
        store = SQLiteStore(tmp_path / "missing" / "state.db")
        m = Metering(store, settings())
        rcpt = await m.check_recipient(acct(), m.begin("t"), "b.example", T0)
        auth = (await m.auth_begin("192.0.2.1", "alice", T0)).verdict
        await store.close()
        return rcpt, auth

    rcpt, auth = asyncio.run(body())
    assert (rcpt.verdict.reply.code, rcpt.verdict.reply.enhanced) == (451, "4.3.0")
    assert not auth.accept and auth.reply.code == 454


def test_rate_replies_are_named_in_replies_module():
    assert replies.RATE_LIMITED.code == 451 and replies.RATE_LIMITED.enhanced == "4.7.1"
