"""AUTH delegated to a real Dovecot (dovecot-core, passwd-file passdb) on loopback."""

from __future__ import annotations

import asyncio
import time

from gateway.accounts.customers import CustomerMap
from gateway.accounts.dovecot import DovecotAuth, parse_reply
from gateway.accounts.factory import build_source, probe
from gateway.accounts.source import Outcome
from gateway.config.accounts import AccountsConfig, DovecotSettings
from tests.support.accounts import ACME, FakeClock, directory, run, silent_tcp_server
from tests.support.dovecot_server import dovecot_fixture  # noqa: F401

FIELDS = {"customer_field": "portcullis_customer", "senders_field": "portcullis_senders"}


def source(server, **settings) -> DovecotAuth:
    s = DovecotSettings(address=f"inet:127.0.0.1:{server.port}", **settings)
    return DovecotAuth(s, CustomerMap(directory(ACME)))


def config(server, **cache) -> AccountsConfig:
    return AccountsConfig.model_validate({
        "source": "dovecot", "auth_timeout": 2,
        "dovecot": {"address": f"inet:127.0.0.1:{server.port}", **FIELDS},
        "cache": {"ttl": 60, "negative_ttl": 5, **cache}})


def test_right_password_gives_the_account_with_customer_and_senders_from_extra_fields(dovecot):
    dovecot.set_user("alice@acme.example", "s3cret", portcullis_customer="acme-gold",
                     portcullis_senders="sales@acme.example,*@shop.acme.example")

    async def go():
        src = source(dovecot, **FIELDS)
        try:
            return await src.authenticate("alice@acme.example", "s3cret")
        finally:
            await src.close()

    answer = run(go())
    assert answer.outcome is Outcome.OK
    assert answer.identity.login == "alice@acme.example"
    assert answer.identity.customer == "acme-gold"
    assert answer.identity.senders == {"alice@acme.example", "sales@acme.example",
                                       "*@shop.acme.example"}


def test_without_extra_fields_the_customer_is_the_owner_of_the_login_domain(dovecot):
    dovecot.set_user("bob@acme.example", "pw-bob")
    dovecot.set_user("carol@elsewhere.example", "pw-carol")

    async def go():
        src = source(dovecot)
        try:
            return (await src.authenticate("bob@acme.example", "pw-bob"),
                    await src.authenticate("carol@elsewhere.example", "pw-carol"))
        finally:
            await src.close()

    bob, carol = run(go())
    assert bob.identity.customer == "acme"
    # No policy file owns elsewhere.example: a customer of that name, on gateway defaults.
    assert carol.identity.customer == "elsewhere.example"
    assert carol.identity.senders == {"carol@elsewhere.example"}


def test_wrong_password_and_unknown_login_get_the_same_answer(dovecot):
    dovecot.set_user("alice@acme.example", "s3cret")

    async def go():
        src = source(dovecot)
        try:
            return (await src.authenticate("alice@acme.example", "wrong"),
                    await src.authenticate("nobody@acme.example", "wrong"))
        finally:
            await src.close()

    wrong, unknown = run(go())
    assert wrong.outcome is Outcome.INVALID and unknown.outcome is Outcome.INVALID
    assert wrong == unknown


def test_unix_socket_listener_works_like_tcp(dovecot):
    dovecot.set_user("alice@acme.example", "s3cret")

    async def go():
        s = DovecotSettings(address=f"unix:{dovecot.unix_socket}")
        src = DovecotAuth(s, CustomerMap(directory(ACME)))
        try:
            return (await src.authenticate("alice@acme.example", "s3cret"),
                    await src.authenticate("alice@acme.example", "nope"))
        finally:
            await src.close()

    ok, bad = run(go())
    assert ok.outcome is Outcome.OK and bad.outcome is Outcome.INVALID


def test_concurrent_requests_share_one_connection_and_each_gets_its_own_answer(dovecot):
    for i in range(10):
        dovecot.set_user(f"u{i}@acme.example", f"pw{i}")

    async def go():
        src = source(dovecot)
        try:
            answers = await asyncio.gather(*(
                src.authenticate(f"u{i % 10}@acme.example", f"pw{i % 10}" if i % 3 else "bad")
                for i in range(60)))
            return answers, src._conn
        finally:
            await src.close()

    answers, conn = run(go())
    for i, answer in enumerate(answers):
        if i % 3:
            assert answer.outcome is Outcome.OK
            assert answer.identity.login == f"u{i % 10}@acme.example"
        else:
            assert answer.outcome is Outcome.INVALID
    assert conn is not None and not conn.pending


def test_a_login_with_a_tab_cannot_inject_protocol_fields(dovecot):
    dovecot.set_user("alice@acme.example", "s3cret")

    async def go():
        src = source(dovecot)
        try:
            return await src.authenticate("x\tuser=alice@acme.example", "s3cret")
        finally:
            await src.close()

    assert run(go()).outcome is Outcome.INVALID


def test_dovecot_stopped_mid_test_gives_tempfail_then_recovers_after_restart(dovecot):
    dovecot.set_user("alice@acme.example", "s3cret")

    async def go():
        src = build_source(config(dovecot, enabled=False), directory(ACME))
        try:
            first = await src.authenticate("alice@acme.example", "s3cret")
            dovecot.stop()
            started = time.monotonic()
            during = await src.authenticate("alice@acme.example", "s3cret")
            during_wrong = await src.authenticate("alice@acme.example", "wrong")
            took = time.monotonic() - started
            dovecot.start()
            after = await src.authenticate("alice@acme.example", "s3cret")
            return first, during, during_wrong, took, after
        finally:
            await src.close()

    first, during, during_wrong, took, after = run(go())
    assert first.outcome is Outcome.OK
    assert during.outcome is Outcome.TEMPFAIL
    assert during_wrong.outcome is Outcome.TEMPFAIL  # never 535 while we cannot tell
    assert took < 4  # two look-ups, each bounded by auth_timeout (2 s)
    assert after.outcome is Outcome.OK


def test_a_hung_dovecot_gives_tempfail_within_the_auth_timeout():
    with silent_tcp_server() as port:
        cfg = AccountsConfig.model_validate({
            "source": "dovecot", "auth_timeout": 0.5, "cache": {"enabled": False},
            "dovecot": {"address": f"127.0.0.1:{port}", "connect_timeout": 5}})

        async def go():
            src = build_source(cfg, directory(ACME))
            try:
                started = time.monotonic()
                answer = await src.authenticate("alice@acme.example", "s3cret")
                return answer, time.monotonic() - started
            finally:
                await src.close()

        answer, took = run(go())
    assert answer.outcome is Outcome.TEMPFAIL
    assert took < 1.5


def test_passdb_failure_reported_as_temp_by_dovecot_is_tempfail(dovecot):
    dovecot.set_user("alice@acme.example", "s3cret")

    dovecot.break_passdb()

    async def go():
        src = source(dovecot)
        try:
            return await src.authenticate("alice@acme.example", "s3cret")
        finally:
            await src.close()

    assert run(go()).outcome is Outcome.TEMPFAIL


def test_cached_success_is_reused_within_ttl_but_not_beyond(dovecot):
    dovecot.set_user("alice@acme.example", "s3cret")
    clock = FakeClock()

    async def go():
        src = build_source(config(dovecot, ttl=60), directory(ACME), clock=clock)
        try:
            assert (await src.authenticate("alice@acme.example", "s3cret")).outcome is Outcome.OK
            dovecot.stop()
            clock.advance(59)
            within = await src.authenticate("alice@acme.example", "s3cret")
            clock.advance(2)
            beyond = await src.authenticate("alice@acme.example", "s3cret")
            return within, beyond
        finally:
            await src.close()

    within, beyond = run(go())
    assert within.outcome is Outcome.OK  # from the cache: Dovecot is down
    assert beyond.outcome is Outcome.TEMPFAIL  # expired: had to ask, and could not


def test_password_change_takes_effect_and_the_old_password_stops_once_the_new_is_used(dovecot):
    dovecot.set_user("alice@acme.example", "old-pw")
    clock = FakeClock()

    async def go():
        src = build_source(config(dovecot, ttl=300), directory(ACME), clock=clock)
        try:
            assert (await src.authenticate("alice@acme.example", "old-pw")).outcome is Outcome.OK
            dovecot.change_password("alice@acme.example", "new-pw")
            new = await src.authenticate("alice@acme.example", "new-pw")
            old = await src.authenticate("alice@acme.example", "old-pw")
            return new, old
        finally:
            await src.close()

    new, old = run(go())
    assert new.outcome is Outcome.OK
    assert old.outcome is Outcome.INVALID


def test_repeated_wrong_password_is_answered_from_the_negative_cache(dovecot):
    dovecot.set_user("alice@acme.example", "s3cret")
    clock = FakeClock()

    async def go():
        src = build_source(config(dovecot, negative_ttl=5), directory(ACME), clock=clock)
        try:
            first = await src.authenticate("alice@acme.example", "guess")
            dovecot.stop()
            again = await src.authenticate("alice@acme.example", "guess")  # no Dovecot needed
            clock.advance(6)
            later = await src.authenticate("alice@acme.example", "guess")
            return first, again, later
        finally:
            await src.close()

    first, again, later = run(go())
    assert first.outcome is Outcome.INVALID and again.outcome is Outcome.INVALID
    assert later.outcome is Outcome.TEMPFAIL


def test_probe_reports_a_dead_dovecot_in_one_line(dovecot):
    live = config(dovecot)
    dead = AccountsConfig.model_validate({
        "source": "dovecot", "auth_timeout": 2,
        "dovecot": {"address": f"unix:{dovecot.dir}/no-such-socket"}})
    assert run(probe(live)) == []
    problems = run(probe(dead))
    assert len(problems) == 1 and "\n" not in problems[0]
    assert problems[0].startswith("accounts.dovecot: cannot use Dovecot auth at unix:")


def test_reply_parameters_are_unescaped():
    values, flags = parse_reply(["user=a\x01tb", "temp", "reason=x\x01ny"])
    assert values == {"user": "a\tb", "reason": "x\ny"}
    assert flags == {"temp"}


def test_plain_response_carries_undecodable_password_bytes_unchanged():
    import base64

    from gateway.accounts.dovecot import plain_response

    password = b"caf\xe9".decode("utf-8", "surrogateescape")  # Latin-1 from an old client
    assert base64.b64decode(plain_response("a@acme.example", password)) == b"\0a@acme.example\0caf\xe9"
