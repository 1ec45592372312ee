"""Stopping the gateway releases every session's connection slot before it closes
the store, on both stores (SQLite and a real redis-server): the idle sessions'
and that of a session whose transaction outlived the grace (its client hears
421 4.3.2).  Read afterwards from the store itself, with a fresh connection."""

from __future__ import annotations

import asyncio
import smtplib
import threading
import time

from gateway.config.quota import RedisStoreSettings, SQLiteStoreSettings
from gateway.store import open_store
from tests.support import redis_server as _redis
from tests.support import submission
from tests.support.reply_ids import without_id
from tests.support.submission import T0, logged_in

redis_server = _redis.redis_server
store_config = submission.store_config
make_gateway = submission.make_gateway


def slots_in_use(store_config: dict, login: str) -> int:
    settings = (RedisStoreSettings(**store_config) if store_config["backend"] == "redis"
                else SQLiteStoreSettings(**store_config))

    async def read() -> int:
        store = open_store(settings)
        try:
            return await store.slots_in_use(f"conn:{login}", T0 + 1)
        finally:
            await store.close()

    return asyncio.run(read())


def test_stop_releases_every_session_slot_before_the_store_closes(
        make_gateway, downstream, client_tls, store_config):
    gw = make_gateway(extra={"limits": {"shutdown_grace": 1}})
    downstream.behaviour.data_delay = 6  # beyond the grace
    sessions = [logged_in(gw, client_tls) for _ in range(3)]
    assert slots_in_use(store_config, "alice@acme.example") == 3
    result: dict[str, object] = {}

    def send() -> None:
        c = sessions[0]
        c.mail("alice@acme.example")
        c.rcpt("someone@elsewhere.example")
        try:
            result["data"] = c.data(b"From: alice@acme.example\r\n\r\nin flight\r\n")
        except smtplib.SMTPException as exc:
            result["data"] = exc

    sender = threading.Thread(target=send)
    sender.start()
    time.sleep(0.8)  # the message is with the downstream
    gw.stop()
    sender.join(10)
    for c in sessions:
        c.close()
    code, text = result["data"]
    assert (code, without_id(text)) == (421, b"4.3.2 Service shutting down, try again later")
    assert slots_in_use(store_config, "alice@acme.example") == 0
