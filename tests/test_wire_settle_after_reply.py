"""Issue 16: a submitted message's quotas are settled after its 250, not before.

The client's reply to DATA is the downstream's; the settle (commit or release the
holds, count, assess the compromise signals: one store round trip) runs after it
is written, as a task of the connection's.  Proved on both stores with the store
itself held while the message ends: a stopped redis-server (SIGSTOP), or the
SQLite file's write lock taken by another connection (BEGIN IMMEDIATE).  The 250
arrives while the store is held; the charge lands once it is released, also when
the client has hung up; the session's next command waits for it (it sees the
suspension the settle wrote); shutdown waits for it before the store closes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import smtplib
import sqlite3
import threading
import time
from collections.abc import Iterator

import pytest

from gateway.config.quota import RedisStoreSettings, SQLiteStoreSettings
from gateway.store import open_store
from tests.conftest import customer_policies
from tests.support import redis_server as _redis
from tests.support import submission
from tests.support.gateway import GatewayUnderTest
from tests.support.redis_server import RedisServer
from tests.support.reply_ids import ID
from tests.support.submission import T0, Clock, logged_in, message

redis_server = _redis.redis_server
store_config = submission.store_config
make_gateway = submission.make_gateway

ALICE = "alice@acme.example"
# Well under the stores' own patience (redis timeout and SQLite busy_timeout, 5 s
# here): a 250 that waited for the held store would come after this.
PROMPT = 1.5
RECEIVED_ID = re.compile(rb"\(Portcullis\) with \w+ id ([A-Z2-7]{12}\.\d+)")


@pytest.fixture
def patient_store(store_config):
    """The store config, patient enough to outlast the holds below."""
    if store_config["backend"] == "redis":
        return {**store_config, "timeout": 5}
    return store_config


@pytest.fixture
def hold_store(request, patient_store):
    """``with hold_store():`` — the store answers nothing until the block ends."""

    @contextlib.contextmanager
    def hold() -> Iterator[None]:
        if patient_store["backend"] == "redis":
            server: RedisServer = request.getfixturevalue("redis_server")
            assert server.proc is not None
            os.kill(server.proc.pid, signal.SIGSTOP)
            try:
                yield
            finally:
                os.kill(server.proc.pid, signal.SIGCONT)
        else:
            db = sqlite3.connect(patient_store["path"], isolation_level=None, timeout=5)
            try:
                db.execute("BEGIN IMMEDIATE")
                try:
                    yield
                finally:
                    db.execute("ROLLBACK")
            finally:
                db.close()

    return hold


def gateway(make_gateway, patient_store, **kwargs):
    extra = kwargs.pop("extra", {})
    return make_gateway(extra={"store": patient_store, **extra}, **kwargs)


# A new account's volume-spike minimum is its ceiling: two recipients delivered
# cross it, and only the settle (which adds them to the series) can see that.  The
# suspension is the settle's last write: a settle cut short leaves it undone (its
# first one, the charge, may already be with the store).
SPIKE_AT_TWO = {"compromise": {"spike_minimum": 2, "ceiling_recipients_per_hour": None}}


def read_store(store_config: dict, read):
    """``read(store)``'s answer, with a fresh connection to the store."""
    settings = (RedisStoreSettings(**store_config) if store_config["backend"] == "redis"
                else SQLiteStoreSettings(**store_config))

    async def main():
        store = open_store(settings)
        try:
            return await read(store)
        finally:
            await store.close()

    return asyncio.run(main())


def messages_charged(store_config: dict, login: str = ALICE) -> int:
    """The account's delivered messages (the ``messages:`` series, added only when a
    message is committed)."""
    return read_store(store_config, lambda store: store.read_series(
        f"messages:{login}", T0 - 86400, T0 + 60, bucket=86400))


def is_suspended(store_config: dict, login: str = ALICE) -> bool:
    return read_store(store_config, lambda store: store.suspension(login)) is not None


def until(check, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def open_data(c: smtplib.SMTP, rcpts: list[str]) -> None:
    assert c.mail(ALICE)[0] == 250
    for r in rcpts:
        assert c.rcpt(r)[0] == 250
    assert c.docmd("DATA")[0] == 354


def end_data(c: smtplib.SMTP, then: bytes = b"") -> tuple[int, bytes, float]:
    """The message and its end (and ``then``, pipelined behind it): the reply and
    how long it took."""
    started = time.monotonic()
    c.send(message() + b".\r\n" + then)
    code, text = c.getreply()
    return code, text, time.monotonic() - started


def test_the_250_is_written_while_the_store_is_held_and_the_charge_lands_after(
        make_gateway, patient_store, hold_store, client_tls, downstream):
    gw = gateway(make_gateway, patient_store)
    with logged_in(gw, client_tls) as c:
        open_data(c, ["x@elsewhere.example"])
        with hold_store():
            code, _, took = end_data(c)
            assert code == 250 and took < PROMPT, (code, took)
            assert len(downstream.messages) == 1
        # The next command is answered once the settle is done: the charge is in.
        assert c.noop()[0] == 250
        assert messages_charged(patient_store) == 1


def test_a_client_that_hangs_up_right_after_its_250_is_charged_all_the_same(
        make_gateway, patient_store, hold_store, client_tls, downstream, caplog):
    caplog.set_level("INFO", logger="portcullis")
    gw = gateway(make_gateway, patient_store, extra=SPIKE_AT_TWO)
    c = logged_in(gw, client_tls)
    open_data(c, ["a@elsewhere.example", "b@elsewhere.example"])
    with hold_store():
        code, _, took = end_data(c)
        assert code == 250 and took < PROMPT
        c.close()  # no QUIT: the connection's end cancels the command in flight
        time.sleep(0.3)  # aiosmtpd has seen the connection lost while the store is held
    assert until(lambda: is_suspended(patient_store))
    assert messages_charged(patient_store) == 1
    assert len(downstream.messages) == 1
    # The transaction's line says what its client heard, and comes before the
    # connection's (written once the settle is done).
    assert until(lambda: any(r.name == "portcullis.connection" for r in caplog.records))
    lines = [r for r in caplog.records if r.name in ("portcullis.transaction", "portcullis.connection")]
    assert [r.name for r in lines] == ["portcullis.transaction", "portcullis.connection"]
    fields = lines[0].fields  # type: ignore[attr-defined]
    assert (fields["result"], fields["ended"]) == ("250 2.0.0", "reply"), fields
    # Its time is the client's wait, to the reply: not the held store's.
    assert fields["ms"] < 300, fields


def test_a_suspension_found_by_the_settle_refuses_the_sessions_very_next_transaction(
        make_gateway, patient_store, hold_store, client_tls, downstream):
    gw = gateway(make_gateway, patient_store, extra=SPIKE_AT_TWO)
    with logged_in(gw, client_tls) as c:
        open_data(c, ["a@elsewhere.example", "b@elsewhere.example"])
        with hold_store():
            # The next MAIL is pipelined behind the message: it is here before the
            # settle starts, and must not be run before the settle is done.
            code, _, took = end_data(c, b"MAIL FROM:<alice@acme.example>\r\n")
            assert code == 250 and took < PROMPT
        code, text = c.getreply()
        if code == 250:  # the suspension may be read at the first RCPT instead
            code, text = c.rcpt("c@elsewhere.example")
        assert (code, text[:5]) == (550, b"5.7.1"), (code, text)
    assert len(downstream.messages) == 1
    # The transaction whose settle suspended the account has it on record.
    txid = RECEIVED_ID.search(downstream.messages[0].content).group(1).decode()
    assert ID.search(text).group(1).decode().rpartition(".")[0] == txid.rpartition(".")[0]
    journal = gw.runtime.journal.store

    def suspended_on_record() -> bool:
        found = gw.run(journal.journal_find(txid))
        return any(s["outcome"] == "suspended" for e in found for s in e.record["steps"])

    assert until(suspended_on_record)


def test_a_message_refused_at_data_is_released_after_the_reply(
        make_gateway, patient_store, hold_store, client_tls, downstream):
    gw = gateway(make_gateway, patient_store, alice={"messages_per_hour": 1})
    with logged_in(gw, client_tls) as c:
        downstream.behaviour.data_reply = "554 5.7.1 spam"
        open_data(c, ["x@elsewhere.example"])
        with hold_store():
            code, _, took = end_data(c)
            assert code == 554 and took < PROMPT
        downstream.behaviour.data_reply = None
        # Released, not charged: the hour's one message is still to be sent.
        assert submission.send(c, ["x@elsewhere.example"])["data"][0] == 250
        assert c.noop()[0] == 250
    assert messages_charged(patient_store) == 1


def test_shutdown_waits_for_a_settle_in_flight_before_the_store_closes(
        make_gateway, patient_store, hold_store, client_tls, downstream):
    gw = gateway(make_gateway, patient_store, extra=SPIKE_AT_TWO)
    c = logged_in(gw, client_tls)
    open_data(c, ["a@elsewhere.example", "b@elsewhere.example"])
    stopped = threading.Event()
    with hold_store():
        code, _, took = end_data(c)
        assert code == 250 and took < PROMPT
        c.close()  # gone: only the connection's clean-up task still holds the settle
        time.sleep(0.3)
        stopper = threading.Thread(target=lambda: (gw.stop(), stopped.set()))
        stopper.start()
        time.sleep(0.5)
        assert not stopped.is_set()  # waiting for the settle, the store still open
    stopper.join(30)
    assert stopped.is_set()
    assert messages_charged(patient_store) == 1
    assert is_suspended(patient_store)


def test_store_down_during_the_settle_is_logged_and_the_client_keeps_its_250(
        tmp_path, downstream, cert_files, password_hash, client_tls, caplog):
    server = RedisServer().start()
    gw = GatewayUnderTest(
        tmp_path, inbound_url=downstream.url, outbound_url=downstream.url,
        policies=customer_policies(password_hash), cert=cert_files, clock=Clock(),
        extra={"store": {"backend": "redis", "url": server.url, "timeout": 0.5}})
    gw.start()
    caplog.set_level("INFO", logger="portcullis")
    try:
        with logged_in(gw, client_tls) as c:
            open_data(c, ["x@elsewhere.example"])
            assert server.proc is not None
            os.kill(server.proc.pid, signal.SIGSTOP)
            try:
                code, _, took = end_data(c)
                assert code == 250 and took < PROMPT
                assert until(lambda: any("could not settle" in r.getMessage()
                                         for r in caplog.records))
            finally:
                os.kill(server.proc.pid, signal.SIGCONT)
            # Nothing else changes: the session goes on.
            assert submission.send(c, ["y@elsewhere.example"])["data"][0] == 250
        assert len(downstream.messages) == 2
        results = [r.fields["result"] for r in caplog.records  # type: ignore[attr-defined]
                   if r.name == "portcullis.transaction"]
        assert results == ["250 2.0.0", "250 2.0.0"]
    finally:
        gw.stop()
        server.stop()
