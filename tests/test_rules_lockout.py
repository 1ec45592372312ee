"""Brute-force defence: per IP and per login, same reply for every case, no delay on success."""

from __future__ import annotations

import asyncio

import pytest

from gateway.config.quota import LockoutSettings, QuotaSettings
from gateway.metering import Metering
from gateway.rules.lockout import (
    after_failure,
    decide_auth_attempt,
    lockout_keys,
    verification_budget,
)
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


@pytest.mark.parametrize("accepted,locked_until,full_until,minutes", [
    (True, None, None, None),            # counted: the password is checked
    (False, T0 + 600, None, 10),         # the IP or login is locked
    (False, None, T0 + 120, 2),          # as many failures and attempts in flight as the limit
    (False, T0 + 60, T0 + 900, 15),      # both: the later end
    (False, None, None, 1),              # refused, the window slid in between: soon
    (False, T0 - 5, None, 1),
])
def test_an_attempt_is_checked_only_when_the_store_counted_it(accepted, locked_until, full_until, minutes):
    v = decide_auth_attempt(accepted, locked_until, full_until, T0)
    if minutes is None:
        assert v.accept
        return
    assert not v.accept and (v.reply.code, v.reply.enhanced) == (454, "4.7.0")
    assert v.reply.text == f"Too many failed login attempts; try again in {minutes} minutes"


@pytest.mark.parametrize("source,command,delay,budget", [
    (5.0, 300.0, 1.0, 5.0),    # the default: the source's own deadline
    (5.0, 3.0, 1.0, 1.25),     # a short command timeout: answered before it fires
    (5.0, 3.0, 0.0, 2.25),
    (15.0, 10.0, 1.0, 8.0),
    (5.0, 1.0, 2.0, 0.1),      # a delay longer than the timeout: never below 0.1 s
])
def test_the_password_check_ends_before_the_command_timeout(source, command, delay, budget):
    got = verification_budget(source, command, delay)
    assert got == pytest.approx(budget)
    assert got <= source


def _metering(store) -> Metering:
    return Metering(store, QuotaSettings(lockout=LOCK))


async def _fail(m: Metering, ip: str, login: str, now: float) -> int:
    """One AUTH with a wrong password, as the handler runs it: the reply code."""
    attempt = await m.auth_begin(ip, login, now)
    if not attempt.verdict.accept:
        return attempt.verdict.reply.code
    await m.auth_failed(attempt, now)
    return 535


async def _succeed(m: Metering, ip: str, login: str, now: float) -> int:
    attempt = await m.auth_begin(ip, login, now)
    if not attempt.verdict.accept:
        return attempt.verdict.reply.code
    await m.auth_succeeded(attempt)
    return 235


def test_per_login_lockout_after_exactly_n_failures_from_many_addresses(any_store):
    async def body(store):
        m = _metering(store)
        # A distributed guesser: a new address every time.
        seen = [await _fail(m, f"198.51.100.{i}", "alice@acme.example", T0 + i) for i in range(4)]
        other_login = await _succeed(m, "198.51.100.9", "bob@acme.example", T0 + 5)
        after = await _succeed(m, "198.51.100.9", "alice@acme.example", T0 + 2 + 900)
        return seen, other_login, after

    seen, other_login, after = any_store.run(body)
    assert seen == [535, 535, 535, 454]
    assert other_login == 235
    assert after == 235


def test_per_ip_lockout_after_exactly_n_failures_over_many_logins(any_store):
    async def body(store):
        m = _metering(store)
        seen = [await _fail(m, "203.0.113.5", f"user{i}@acme.example", T0 + i) for i in range(6)]
        other_ip = await _succeed(m, "203.0.113.6", "user9@acme.example", T0 + 7)
        return seen, other_ip, await store.events()

    seen, other_ip, events = any_store.run(body)
    assert seen == [535] * 5 + [454]
    assert other_ip == 235
    assert any(e.kind == "lockout" for e in events)


def test_existing_and_unknown_logins_are_locked_with_the_same_reply(any_store):
    # The store and rules never look the login up: a real and a made-up login
    # reach the lock after the same number of failures and get the same words.
    async def body(store):
        m = _metering(store)
        replies = {}
        for login in ("alice@acme.example", "nobody-such@acme.example"):
            for i in range(3):
                await _fail(m, f"192.0.2.{i}", login, T0 + i)
            replies[login] = (await m.auth_begin("192.0.2.200", login, T0 + 10)).verdict.reply
        return replies

    got = any_store.run(body)
    assert got["alice@acme.example"] == got["nobody-such@acme.example"]
    assert got["alice@acme.example"].code == 454


def test_success_is_never_delayed_and_leaves_the_failures_counted(any_store):
    async def body(store):
        m = _metering(store)
        delays = []
        for i in range(2):
            attempt = await m.auth_begin("192.0.2.1", "carol", T0 + i)
            delays.append(await m.auth_failed(attempt, T0 + i))
        ok = await _succeed(m, "192.0.2.1", "carol", T0 + 3)
        # The two failures still count: one more reaches login_failures (3).
        await _fail(m, "192.0.2.1", "carol", T0 + 4)
        locked = await _succeed(m, "192.0.2.1", "carol", T0 + 5)
        # Once the lock and the window have passed, the right password gets in again.
        later = await _succeed(m, "192.0.2.1", "carol", T0 + 4 + LOCK.duration + LOCK.window)
        return delays, ok, locked, later

    delays, ok, locked, later = any_store.run(body)
    assert delays == [0.5, 0.5]
    assert (ok, locked, later) == (235, 454, 235)


def test_a_right_password_amid_guesses_frees_no_place_for_more_guesses(any_store):
    """Issue 14, defect 2: the race the auth-storm wire test caught.  Wrong passwords
    settled before the right one was checked stay counted after it succeeds."""
    async def body(store):
        m = _metering(store)
        for i in range(2):  # two guesses, answered 535
            await _fail(m, f"192.0.2.{i}", "frank", T0)
        assert await _succeed(m, "192.0.2.9", "frank", T0 + 1) == 235  # the owner logs in
        guess = await m.auth_begin("192.0.2.3", "frank", T0 + 1)   # the third and last place
        await m.auth_failed(guess, T0 + 1)
        return (await m.auth_begin("192.0.2.4", "frank", T0 + 2)).verdict.reply.code

    assert any_store.run(body) == 454


def test_attempts_in_flight_count_so_simultaneous_ones_check_at_most_the_limit(any_store):
    """Issue 14, defect 2: every password check is reserved before it starts."""
    async def body(store):
        m = _metering(store)
        # Ten simultaneous attempts for one login from ten addresses, none answered yet.
        attempts = await asyncio.gather(*(m.auth_begin(f"192.0.2.{i}", "dave", T0) for i in range(10)))
        checked = [a for a in attempts if a.verdict.accept]
        # One of the checked ones had the right password: it gives its place back, but
        # the others still in flight keep theirs.
        await m.auth_succeeded(checked[0])
        late = await m.auth_begin("192.0.2.50", "dave", T0 + 1)
        for a in checked[1:]:
            await m.auth_failed(a, T0 + 1)
        locked = await m.auth_begin("192.0.2.51", "dave", T0 + 2)
        return [a.verdict.reply.code for a in attempts], late.verdict.reply.code, locked.verdict.reply

    codes, late, locked = any_store.run(body)
    assert sorted(codes) == [235, 235, 235] + [454] * 7
    assert late == 235  # the right password's place
    assert (locked.code, locked.enhanced) == (454, "4.7.0")


def test_an_attempt_never_checked_is_given_back(any_store):
    async def body(store):
        m = _metering(store)
        for i in range(3):
            attempt = await m.auth_begin("192.0.2.1", "erin", T0 + i)
            await m.auth_abandoned(attempt)  # the account source was down
        return (await m.auth_begin("192.0.2.1", "erin", T0 + 5)).verdict
    assert any_store.run(body).accept
