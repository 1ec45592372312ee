"""Brute-force defence: per IP and per login, same reply for every case, no delay on success."""

from __future__ import annotations

import pytest

from gateway.config.quota import LockoutSettings, QuotaSettings
from gateway.rules.lockout import after_failure, decide_auth_attempt, lockout_keys
from gateway.store.metering import Metering
from tests.support import redis_server as _redis
from tests.support import stores

# Fixtures used by name below (pytest finds them as module attributes).
redis_server = _redis.redis_server
any_store = stores.any_store

T0 = 1_800_000_000.0
LOCK = LockoutSettings(window=600, ip_failures=5, login_failures=3, duration=900, failure_delay=0.5)


@pytest.mark.parametrize("ip,key", [
    ("192.0.2.7", "authfail-ip:192.0.2.7"),
    ("2001:db8:1:2:3:4:5:6", "authfail-ip:2001:db8:1:2::/64"),
    ("2001:db8:1:2:ffff::1", "authfail-ip:2001:db8:1:2::/64"),  # same /64: same counter
    ("::ffff:192.0.2.7", "authfail-ip:192.0.2.7"),
])
def test_ip_keys_count_ipv4_per_address_and_ipv6_per_64(ip, key):
    assert lockout_keys(ip, "Alice@Example.COM ") .ip == key
    assert lockout_keys(ip, "Alice@Example.COM ").login == "authfail-login:alice@example.com"


@pytest.mark.parametrize("ip_n,login_n,locked", [
    (1, 1, []), (4, 2, []), (5, 1, ["ip"]), (1, 3, ["login"]), (5, 3, ["ip", "login"]),
])
def test_threshold_locks_the_key_that_crossed_it(ip_n, login_n, locked):
    out = after_failure(lockout_keys("192.0.2.1", "bob"), ip_n, login_n, LOCK, T0)
    assert [k.split(":")[0].removeprefix("authfail-") for k, _ in out.locks] == locked
    assert all(until == T0 + 900 for _, until in out.locks)
    assert out.delay == 0.5


def test_locked_attempt_gets_454_4_7_0_with_when_to_retry():
    v = decide_auth_attempt(T0 + 600, T0)
    assert not v.accept and (v.reply.code, v.reply.enhanced) == (454, "4.7.0")
    assert "10 minutes" in v.reply.text
    assert decide_auth_attempt(T0, T0).accept
    assert decide_auth_attempt(None, T0).accept


def _metering(store) -> Metering:
    return Metering(store, QuotaSettings(lockout=LOCK))


def test_per_login_lockout_after_exactly_n_failures_from_many_addresses(any_store):
    async def body(store):
        m = _metering(store)
        seen = []
        for i in range(4):
            ip = f"198.51.100.{i}"  # a distributed guesser: a new address every time
            v = await m.auth_allowed(ip, "alice@acme.example", T0 + i)
            seen.append(v.reply.code)
            if v.accept:
                await m.auth_failed(ip, "alice@acme.example", T0 + i)
        other_login = await m.auth_allowed("198.51.100.9", "bob@acme.example", T0 + 5)
        after = await m.auth_allowed("198.51.100.9", "alice@acme.example", T0 + 2 + 900)
        return seen, other_login, after

    seen, other_login, after = any_store.run(body)
    assert seen == [235, 235, 235, 454]
    assert other_login.accept
    assert after.accept


def test_per_ip_lockout_after_exactly_n_failures_over_many_logins(any_store):
    async def body(store):
        m = _metering(store)
        seen = []
        for i in range(6):
            v = await m.auth_allowed("203.0.113.5", f"user{i}@acme.example", T0 + i)
            seen.append(v.reply.code)
            if v.accept:
                await m.auth_failed("203.0.113.5", f"user{i}@acme.example", T0 + i)
        other_ip = await m.auth_allowed("203.0.113.6", "user9@acme.example", T0 + 7)
        return seen, other_ip, await store.events()

    seen, other_ip, events = any_store.run(body)
    assert seen == [235] * 5 + [454]
    assert other_ip.accept
    assert any(e.kind == "lockout" for e in events)


def test_existing_and_unknown_logins_are_locked_with_the_same_reply(any_store):
    # The store and rules never look the login up: a real and a made-up login
    # reach the lock after the same number of failures and get the same words.
    async def body(store):
        m = _metering(store)
        replies = {}
        for login in ("alice@acme.example", "nobody-such@acme.example"):
            for i in range(3):
                await m.auth_failed(f"192.0.2.{i}", login, T0 + i)
            replies[login] = (await m.auth_allowed("192.0.2.200", login, T0 + 10)).reply
        return replies

    got = any_store.run(body)
    assert got["alice@acme.example"] == got["nobody-such@acme.example"]
    assert got["alice@acme.example"].code == 454


def test_success_clears_the_login_count_and_is_never_delayed(any_store):
    async def body(store):
        m = _metering(store)
        delays = [await m.auth_failed("192.0.2.1", "carol", T0 + i) for i in range(2)]
        await m.auth_succeeded("192.0.2.1", "carol", T0 + 3)
        # Two more failures: the count restarted, so still below 3.
        for i in range(2):
            await m.auth_failed("192.0.2.1", "carol", T0 + 4 + i)
        return delays, await m.auth_allowed("192.0.2.1", "carol", T0 + 10)

    delays, allowed = any_store.run(body)
    assert delays == [0.5, 0.5]
    assert allowed.accept
