"""Compromised accounts: each signal fires at its threshold, not below; evidence recorded."""

from __future__ import annotations

import pytest

from gateway.config.quota import CompromiseSettings, QuotaSettings
from gateway.metering import Metering
from gateway.rules.compromise import Signals, assess
from gateway.rules.quota import AccountQuota, Limits
from tests.support import redis_server as _redis
from tests.support import stores

# Fixtures used by name below (pytest finds them as module attributes).
redis_server = _redis.redis_server
any_store = stores.any_store

T0 = 1_800_000_000.0
S = CompromiseSettings(ceiling_recipients_per_hour=100, spike_factor=10, spike_minimum=50,
                       baseline_days=7, refusal_share=0.5, refusal_minimum=20,
                       complaint_rate=0.01, complaint_minimum=3, complaint_days=7)


@pytest.mark.parametrize("signals,reason", [
    (Signals("a", attempted_last_hour=100), None),
    (Signals("a", attempted_last_hour=101), "hard ceiling exceeded"),
    # baseline 168 recipients over 168 hours = 1/hour; ×10 = 10, but the minimum is 50
    (Signals("a", sent_last_hour=49, baseline_sent=168, baseline_hours=168), None),
    (Signals("a", sent_last_hour=50, baseline_sent=168, baseline_hours=168), "volume spike"),
    # a busy account: 10/hour normally, ×10 = 100
    (Signals("a", sent_last_hour=100, baseline_sent=1680, baseline_hours=168), None),
    (Signals("a", sent_last_hour=101, baseline_sent=1680, baseline_hours=168), "volume spike"),
    (Signals("a", downstream_tried=19, downstream_refused=19), None),
    (Signals("a", downstream_tried=20, downstream_refused=9), None),
    (Signals("a", downstream_tried=20, downstream_refused=10), "recipients refused downstream"),
    (Signals("a", complaints=2, messages_sent=10), None),
    (Signals("a", complaints=3, messages_sent=400), None),
    (Signals("a", complaints=3, messages_sent=300), "complaint rate"),
])
def test_each_signal_fires_at_its_threshold(signals, reason):
    got = assess(signals, S, T0)
    assert (got.reason if got else None) == reason
    if got:
        assert got.login == "a" and got.since == T0 and got.evidence


def test_signals_switched_off_never_fire():
    off = CompromiseSettings(enabled=False)
    assert assess(Signals("a", attempted_last_hour=10**6), off, T0) is None
    no_ceiling = S.model_copy(update={"ceiling_recipients_per_hour": None})
    assert assess(Signals("a", attempted_last_hour=10**6), no_ceiling, T0) is None


def _settings(**kw) -> QuotaSettings:
    return QuotaSettings(compromise=S.model_copy(update=kw))


def test_hammering_past_the_limit_suspends_at_the_ceiling_with_evidence(any_store):
    a = AccountQuota("mallory@acme.example", "acme", Limits(recipients_per_hour=10))
    ceiling = 30

    async def body(store):
        m = Metering(store, _settings(ceiling_recipients_per_hour=ceiling, spike_factor=None))
        tx = m.begin("t1")
        for i in range(ceiling + 1):
            await m.check_recipient(a, tx, "victim.example", T0 + i)
        # The next transaction's first recipient hears of the suspension.
        then = await m.check_recipient(a, m.begin("t2"), "victim.example", T0 + 100)
        return then, await store.suspension(a.login), await store.events(a.login)

    then, suspension, events = any_store.run(body)
    assert suspension is not None and suspension.reason == "hard ceiling exceeded"
    assert suspension.evidence["recipients_attempted_last_hour"] == ceiling + 1
    assert (then.verdict.reply.code, then.verdict.reply.enhanced) == (550, "5.7.1")
    assert events[0].kind == "suspended" and events[0].data["ceiling"] == ceiling


def test_spike_above_own_baseline_suspends(any_store):
    a = AccountQuota("bob@acme.example", "acme", Limits())

    async def body(store):
        m = Metering(store, _settings(ceiling_recipients_per_hour=None, spike_minimum=20))
        # A week of 1 recipient/hour.
        for h in range(1, 7 * 24):
            await store.add_to_series(f"sent:{a.login}", 1, T0 - h * 3600)
        got = []
        for i in range(25):
            tx = m.begin(f"t{i}")
            await m.check_recipient(a, tx, "b.example", T0 + i)
            got.append(await m.finish(a, tx, True, T0 + i))
        return got

    got = any_store.run(body)
    assert all(s is None for s in got[:19])
    assert got[19] is not None and got[19].reason == "volume spike"
    assert got[19].evidence["recipients_last_hour"] == 20


def test_many_recipients_refused_downstream_suspends(any_store):
    a = AccountQuota("carol@acme.example", "acme", Limits())

    async def body(store):
        m = Metering(store, _settings(ceiling_recipients_per_hour=None, spike_factor=None,
                                      refusal_minimum=10, refusal_share=0.5))
        out = []
        for i in range(10):
            tx = m.begin(f"t{i}")
            await m.check_recipient(a, tx, "b.example", T0 + i)
            await m.recipient_refused(tx, T0 + i)
            out.append(await m.finish(a, tx, False, T0 + i))
        return out

    out = any_store.run(body)
    assert all(s is None for s in out[:9])
    assert out[9] is not None and out[9].reason == "recipients refused downstream"


def test_complaints_over_the_rate_suspend(any_store):
    a = AccountQuota("dave@acme.example", "acme", Limits())

    async def body(store):
        m = Metering(store, _settings(complaint_minimum=3, complaint_rate=0.01))
        for i in range(100):
            await store.add_to_series(f"messages:{a.login}", 1, T0 - i * 60, bucket=86400)
        return [await m.record_complaint(a, T0 + i, {"report": f"r{i}"}) for i in range(3)]

    out = any_store.run(body)
    assert out[0] is None and out[1] is None
    assert out[2] is not None and out[2].reason == "complaint rate"


def test_shadow_mode_logs_would_suspend_and_does_not_suspend(any_store):
    a = AccountQuota("erin@acme.example", "acme", Limits(recipients_per_hour=1), shadow=True)

    async def body(store):
        m = Metering(store, _settings(ceiling_recipients_per_hour=2, spike_factor=None))
        tx = m.begin("t")
        for i in range(3):
            await m.check_recipient(a, tx, "b.example", T0 + i)
        await m.finish(a, tx, True, T0 + 5)
        return await store.suspension(a.login), await store.events(a.login)

    suspension, events = any_store.run(body)
    assert suspension is None
    assert events and events[0].kind == "would-suspend"
