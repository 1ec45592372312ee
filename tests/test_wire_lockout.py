"""Brute-force defence on the real submission listener, on both stores: failed AUTH
counted per client address and per login, 454 4.7.0 past the threshold, the same
answer for real and made-up logins, and a right password never slowed down."""

from __future__ import annotations

import time

from tests.support import redis_server as _redis
from tests.support import submission
from tests.support.reply_ids import without_id
from tests.support.submission import Clock, auth_plain, connect

redis_server = _redis.redis_server
store_config = submission.store_config
make_gateway = submission.make_gateway

LOCKED = b"4.7.0 Too many failed login attempts; try again in 15 minutes"


def attempt(gw, client_tls, login, password="wrong", source=None):
    with connect(gw, client_tls, source) as c:
        code, text = auth_plain(c, login, password) if password else auth_plain(c, login)
    # Each answer names its own connection: the words are what must not differ.
    return code, without_id(text) if code >= 400 else text


def test_an_address_is_locked_after_its_failures_whatever_the_logins(make_gateway, client_tls):
    clock = Clock()
    gw = make_gateway(extra={"lockout": {"ip_failures": 3, "login_failures": 100}}, clock=clock)
    # Three guesses at three logins (one of them real) from 127.0.0.1.
    for login in ("alice@acme.example", "nobody@acme.example", "ghost@nowhere.example"):
        assert attempt(gw, client_tls, login)[0] == 535
    # Now even the right password from that address is not checked.
    assert attempt(gw, client_tls, "bob@acme.example", password=None) == (454, LOCKED)
    # Another address is not locked.
    assert attempt(gw, client_tls, "bob@acme.example", password=None, source="127.0.0.2")[0] == 235
    clock.advance(15 * 60)  # lockout.duration
    assert attempt(gw, client_tls, "bob@acme.example", password=None)[0] == 235


def test_a_login_is_locked_from_every_address_and_a_made_up_one_looks_the_same(make_gateway, client_tls):
    gw = make_gateway(extra={"lockout": {"ip_failures": 100, "login_failures": 3}})
    for login in ("alice@acme.example", "nobody@acme.example"):
        for i in range(3):
            assert attempt(gw, client_tls, login, source=f"127.0.0.{i + 2}")[0] == 535
    real = attempt(gw, client_tls, "alice@acme.example", password=None, source="127.0.0.9")
    made_up = attempt(gw, client_tls, "nobody@acme.example", source="127.0.0.9")
    # No enumeration: an existing and a non-existent login are locked with the same words.
    assert real == made_up == (454, LOCKED)
    # Other logins from the same addresses still work.
    assert attempt(gw, client_tls, "bob@acme.example", password=None, source="127.0.0.2")[0] == 235


def test_failures_wait_and_a_right_password_does_not(make_gateway, client_tls):
    gw = make_gateway(extra={"lockout": {"failure_delay": 1.0}})
    start = time.monotonic()
    assert attempt(gw, client_tls, "alice@acme.example")[0] == 535
    failed = time.monotonic() - start
    start = time.monotonic()
    assert attempt(gw, client_tls, "alice@acme.example", password=None)[0] == 235
    succeeded = time.monotonic() - start
    assert failed >= 1.0
    assert succeeded < failed - 0.5
