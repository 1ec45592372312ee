"""Issue 16: metering costs one store round trip at each RCPT and one at the end of
DATA, none at MAIL (the first RCPT's also reads the suspension and renews the
session's slot), on both stores, counted over a real submission session.

Every public call on the gateway's store is one round trip (one hop to the SQLite
thread, one Redis command or script), so the test wraps the store's own methods
with a counter and reads it between the client's commands."""

from __future__ import annotations

import collections
import inspect

from gateway.store.base import Store
from tests.support import redis_server as _redis
from tests.support import submission
from tests.support.submission import logged_in, message

redis_server = _redis.redis_server
store_config = submission.store_config
make_gateway = submission.make_gateway


def count_calls(store: Store) -> collections.Counter:
    calls: collections.Counter = collections.Counter()
    for name, _ in inspect.getmembers(Store, inspect.iscoroutinefunction):
        if name.startswith("_") or name == "close":
            continue
        inner = getattr(store, name)

        def counted(*args, _inner=inner, _name=name, **kwargs):
            calls[_name] += 1
            return _inner(*args, **kwargs)

        setattr(store, name, counted)
    return calls


def test_no_round_trip_at_mail_one_at_each_rcpt_and_at_the_end_of_data(make_gateway, client_tls, downstream):
    # Compromise signals on (the default), limits that never refuse here.
    gw = make_gateway(alice={"messages_per_hour": 1000, "recipients_per_hour": 1000})
    calls = count_calls(gw.runtime.metering.store)
    with logged_in(gw, client_tls) as c:
        for rcpts in (1, 3, 1):
            calls.clear()
            assert c.mail("alice@acme.example")[0] == 250
            at_mail = sum(calls.values())
            for i in range(rcpts):
                assert c.rcpt(f"r{i}@elsewhere.example")[0] == 250
            at_rcpt = sum(calls.values()) - at_mail
            assert c.data(message())[0] == 250
            assert c.noop()[0] == 250  # the settle runs after the 250, before the next reply
            at_data = sum(calls.values()) - at_mail - at_rcpt
            assert (at_mail, at_rcpt, at_data) == (0, rcpts, 1), dict(calls)
            assert set(calls) == {"meter"}, dict(calls)
    assert len(downstream.messages) == 3


def test_a_quota_refusal_with_its_assessment_is_one_round_trip(make_gateway, client_tls):
    gw = make_gateway(alice={"recipients_per_hour": 1})
    calls = count_calls(gw.runtime.metering.store)
    with logged_in(gw, client_tls) as c:
        assert c.mail("alice@acme.example")[0] == 250
        assert c.rcpt("a@elsewhere.example")[0] == 250
        calls.clear()
        code, _ = c.rcpt("b@elsewhere.example")
        assert code == 451
        # The charge, the attempt counted all the same and the compromise facts: one call.
        assert sum(calls.values()) == 1, dict(calls)


def test_a_suspended_account_costs_one_round_trip_whatever_its_recipients(make_gateway, client_tls):
    gw = make_gateway()
    gw.run(gw.runtime.metering.suspend("alice@acme.example", gw.runtime.clock()))
    calls = count_calls(gw.runtime.metering.store)
    with logged_in(gw, client_tls) as c:
        calls.clear()  # what AUTH asked
        assert c.mail("alice@acme.example")[0] == 250
        assert [c.rcpt(f"r{i}@elsewhere.example")[0] for i in range(3)] == [550] * 3
        c.rset()
        # (The refused transaction's journal entry is written as it ends: not metering.)
        metering = {name: n for name, n in calls.items() if name != "journal_add"}
        assert metering == {"meter": 1}, dict(calls)
