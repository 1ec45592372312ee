"""Held mail: stored durably, reviewed, released byte for byte to a real recording MTA,
deleted, expired by policy; and the `portcullis held` commands on a real config."""

from __future__ import annotations

import argparse
import asyncio
import io
import logging
import os
import time

import pytest
import yaml

from gateway.accounts.passwords import hash_password
from gateway.config.model import Downstream as DownstreamSettings
from gateway.downstream.smtp import SmtpDownstream
from gateway.held_commands import EXIT_NOT_DELIVERED, EXIT_NOT_FOUND, add_held_parser
from gateway.store.held import MAGIC, HeldBusy, HeldNotFound, HeldStore
from tests.support.recorder import RecordingMTA

T0 = 1_800_000_000.0
DAY = 86400.0
# Bytes as they would have gone downstream: our stamps, a DKIM signature, 8-bit text,
# a line that starts with a dot (the downstream client dot-stuffs, we must not).
MESSAGE = (
    b"Received: from laptop (laptop [192.0.2.10]) by gw.isp.example with ESMTPSA id tx-1\r\n"
    b"DKIM-Signature: v=1; a=rsa-sha256; d=acme.example; s=s1; bh=abc=; b=def=\r\n"
    b"From: Alice <alice@acme.example>\r\n"
    b"To: bob@example.org, carol@example.net\r\n"
    b"Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\r\n"
    b"Message-ID: <held-1@acme.example>\r\n"
    b"\r\n"
    b"Gr\xc3\xbc\xc3\x9fe,\r\n.a line starting with a dot\r\n\r\nAlice\r\n"
)


@pytest.fixture
def mta():
    server = RecordingMTA().start()
    try:
        yield server
    finally:
        server.stop()


def downstream_for(mta: RecordingMTA) -> SmtpDownstream:
    return SmtpDownstream(DownstreamSettings(url=mta.url, timeout=5), "gw.isp.example", "outbound")


def hold(store: HeldStore, now: float = T0, recipients=("bob@example.org", "carol@example.net"),
         direction="outbound", **extra):
    return asyncio.run(store.hold(
        message=MESSAGE, sender="alice@acme.example", recipients=list(recipients),
        direction=direction, reason="content", reply="250 2.0.0 held for review",
        evidence={"score": 16.0, "symbols": ["GTUBE"]}, login="alice@acme.example",
        txid="tx-1", mail_options=["BODY=8BITMIME"], now=now, **extra))


def release(store: HeldStore, held_id: str, mta: RecordingMTA, force: bool = False):
    async def main():
        ds = downstream_for(mta)
        try:
            return await store.release(held_id, ds, force=force)
        finally:
            await ds.close()

    return asyncio.run(main())


# --- holding ---------------------------------------------------------------------


def test_held_message_is_on_disk_whole_when_hold_returns(tmp_path):
    store = HeldStore(tmp_path / "held")
    held = hold(store)
    files = list((tmp_path / "held" / "new").iterdir())
    assert [f.name for f in files] == [f"{held.id}.held"]
    data = files[0].read_bytes()
    assert data.startswith(MAGIC) and data.endswith(MESSAGE)
    assert oct(files[0].stat().st_mode & 0o777) == "0o600"
    assert list((tmp_path / "held" / "tmp").iterdir()) == []  # nothing half-written left


def test_held_message_survives_a_restart(tmp_path):
    held = hold(HeldStore(tmp_path / "held"))
    again = HeldStore(tmp_path / "held")  # a new gateway process on the same directory
    listed = asyncio.run(again.list())
    assert [h.id for h in listed] == [held.id]
    got = listed[0]
    assert got.recipients == ("bob@example.org", "carol@example.net")
    assert got.mail_options == ("BODY=8BITMIME",)
    assert got.evidence == {"score": 16.0, "symbols": ["GTUBE"]}
    assert (got.login, got.txid, got.reason, got.direction) == ("alice@acme.example", "tx-1",
                                                                  "content", "outbound")
    assert asyncio.run(again.message(held.id)) == MESSAGE


def test_ids_sort_by_time_and_never_reach_the_file_system_unchecked(tmp_path):
    store = HeldStore(tmp_path / "held")
    late, early = hold(store, now=T0 + 60), hold(store, now=T0)
    assert [h.id for h in asyncio.run(store.list())] == [early.id, late.id]
    for bad in ("../../etc/passwd", "x", early.id + "/..", ""):
        with pytest.raises(HeldNotFound):
            asyncio.run(store.get(bad))


def test_null_sender_is_released_as_the_null_sender(tmp_path, mta):
    store = HeldStore(tmp_path / "held")
    held = asyncio.run(store.hold(message=MESSAGE, sender="<>", recipients=["bob@example.org"],
                                  direction="inbound", reason="inbound", reply="250", now=T0))
    assert held.sender == ""
    assert release(store, held.id, mta).removed
    assert mta.messages[0].mail_from == "<>" and mta.messages[0].content == MESSAGE


def test_hold_refuses_an_envelope_without_recipients(tmp_path):
    with pytest.raises(ValueError):
        hold(HeldStore(tmp_path / "held"), recipients=())


# --- release and delete --------------------------------------------------------------


def test_release_delivers_byte_for_byte_only_after_release(tmp_path, mta):
    store = HeldStore(tmp_path / "held")
    held = hold(store)
    assert mta.messages == [] and mta.handler.mail_commands == 0  # held: nothing went out
    result = release(store, held.id, mta)
    assert result.ok and result.removed
    assert result.delivered == ("bob@example.org", "carol@example.net")
    [got] = mta.messages
    assert got.content == MESSAGE
    assert got.mail_from == "alice@acme.example"
    assert got.rcpt_tos == ["bob@example.org", "carol@example.net"]
    assert got.mail_options == ["BODY=8BITMIME"]
    assert asyncio.run(store.list()) == []


def test_release_to_a_refusing_downstream_keeps_the_message(tmp_path, mta):
    store = HeldStore(tmp_path / "held")
    held = hold(store)
    mta.behaviour.data_reply = "451 4.3.0 try later"
    result = release(store, held.id, mta)
    assert not result.ok and not result.removed
    assert [h.id for h in asyncio.run(store.list())] == [held.id]
    mta.behaviour.data_reply = None
    assert release(store, held.id, mta).removed
    assert [m.content for m in mta.messages] == [MESSAGE]


def test_release_keeps_recipients_deferred_and_drops_those_refused_for_good(tmp_path, mta):
    store = HeldStore(tmp_path / "held")
    held = hold(store, recipients=("bob@example.org", "carol@example.net", "dan@example.com"))
    mta.behaviour.refuse_rcpt = {"carol@example.net": "450 4.2.0 mailbox busy",
                                 "dan@example.com": "550 5.1.1 no such user"}
    result = release(store, held.id, mta)
    assert result.delivered == ("bob@example.org",)
    assert [r for r, _ in result.deferred] == ["carol@example.net"]
    assert [r for r, _ in result.refused] == ["dan@example.com"]
    assert not result.removed
    [rest] = asyncio.run(store.list())
    assert rest.recipients == ("carol@example.net",)
    mta.behaviour.refuse_rcpt = {}
    assert release(store, rest.id, mta).removed
    assert [m.rcpt_tos for m in mta.messages] == [["bob@example.org"], ["carol@example.net"]]
    assert all(m.content == MESSAGE for m in mta.messages)


def test_release_with_the_downstream_down_keeps_the_message(tmp_path):
    store = HeldStore(tmp_path / "held")
    held = hold(store)
    dead = RecordingMTA()  # never started: connection refused
    result = release(store, held.id, dead)
    assert not result.ok
    assert [h.state for h in asyncio.run(store.list())] == ["held"]


def test_a_message_being_released_cannot_be_released_or_deleted_twice(tmp_path, mta):
    store = HeldStore(tmp_path / "held")
    held = hold(store)
    # An interrupted release leaves the file claimed, as a crash between claim and send would.
    os.rename(tmp_path / "held" / "new" / f"{held.id}.held",
              tmp_path / "held" / "releasing" / f"{held.id}.held")
    assert [h.state for h in asyncio.run(store.list())] == ["releasing"]
    with pytest.raises(HeldBusy):
        release(store, held.id, mta)
    with pytest.raises(HeldBusy):
        asyncio.run(store.delete(held.id))
    assert mta.messages == []
    assert release(store, held.id, mta, force=True).removed
    assert [m.content for m in mta.messages] == [MESSAGE]


def test_concurrent_releases_send_once(tmp_path, mta):
    store = HeldStore(tmp_path / "held")
    held = hold(store)

    async def main():
        ds = downstream_for(mta)
        try:
            return await asyncio.gather(*(store.release(held.id, ds) for _ in range(5)),
                                        return_exceptions=True)
        finally:
            await ds.close()

    results = asyncio.run(main())
    assert sum(1 for r in results if not isinstance(r, Exception) and r.ok) == 1
    assert all(isinstance(r, HeldNotFound | HeldBusy) for r in results if isinstance(r, Exception))
    assert len(mta.messages) == 1


def test_delete_removes_it_and_nothing_is_sent(tmp_path, mta):
    store = HeldStore(tmp_path / "held")
    held = hold(store)
    asyncio.run(store.delete(held.id))
    assert asyncio.run(store.list()) == []
    assert not any((tmp_path / "held" / "new").iterdir())
    with pytest.raises(HeldNotFound):
        release(store, held.id, mta)
    assert mta.handler.mail_commands == 0


# --- expiry --------------------------------------------------------------------------


def expire(store, now, at_max_age, mta):
    async def main():
        ds = downstream_for(mta) if mta else None
        try:
            return await store.expire(now, 7 * DAY, at_max_age, {"outbound": ds, "inbound": None})
        finally:
            if ds:
                await ds.close()

    return asyncio.run(main())


def test_expiry_releases_old_mail_and_logs_it(tmp_path, mta, caplog):
    store = HeldStore(tmp_path / "held")
    old, young = hold(store, now=T0), hold(store, now=T0 + 6 * DAY)
    with caplog.at_level(logging.WARNING, logger="portcullis.held"):
        decisions = expire(store, T0 + 7 * DAY, "release", mta)
    assert [(d.id, d.action) for d in decisions] == [(old.id, "released")]
    assert [h.id for h in asyncio.run(store.list())] == [young.id]
    assert [m.content for m in mta.messages] == [MESSAGE]
    assert any(old.id in r.message and "released" in r.message for r in caplog.records)


def test_expiry_removes_files_a_crash_left_half_written(tmp_path, mta):
    store = HeldStore(tmp_path / "held")
    stale = tmp_path / "held" / "tmp" / "20270101000000-0000000000.123"
    stale.write_bytes(MAGIC)
    os.utime(stale, (T0 - 2 * DAY, T0 - 2 * DAY))
    fresh = tmp_path / "held" / "tmp" / "20270115000000-0000000000.124"
    fresh.write_bytes(MAGIC)
    os.utime(fresh, (T0, T0))
    expire(store, T0 + 60, "release", mta)
    assert sorted(p.name for p in (tmp_path / "held" / "tmp").iterdir()) == [fresh.name]


def test_expiry_deletes_by_policy_and_logs_it(tmp_path, mta, caplog):
    store = HeldStore(tmp_path / "held")
    old = hold(store, now=T0)
    with caplog.at_level(logging.WARNING, logger="portcullis.held"):
        decisions = expire(store, T0 + 8 * DAY, "delete", mta)
    assert [(d.id, d.action) for d in decisions] == [(old.id, "deleted")]
    assert asyncio.run(store.list()) == [] and mta.messages == []
    assert any(old.id in r.message and "deleted" in r.message for r in caplog.records)


def test_expiry_that_cannot_release_keeps_the_message_and_says_so(tmp_path, caplog):
    store = HeldStore(tmp_path / "held")
    inbound = hold(store, now=T0, direction="inbound")
    with caplog.at_level(logging.ERROR, logger="portcullis.held"):
        decisions = expire(store, T0 + 30 * DAY, "release", None)
    assert [(d.id, d.action) for d in decisions] == [(inbound.id, "kept")]
    assert [h.id for h in asyncio.run(store.list())] == [inbound.id]
    assert any(inbound.id in r.message and "kept" in r.message for r in caplog.records)


# --- the commands ----------------------------------------------------------------------


def write_config(tmp_path, mta: RecordingMTA):
    (tmp_path / "policy").mkdir()
    (tmp_path / "policy" / "acme.yaml").write_text(yaml.safe_dump({
        "customer": "acme", "domains": ["acme.example"],
        "dkim": {"sign": []},  # no keys in this test: nothing signed
        "accounts": [{"login": "alice@acme.example", "password": hash_password("pw")}]}))
    (tmp_path / "gateway.yaml").write_text(yaml.safe_dump({
        "hostname": "gw.isp.example", "policy_dir": "policy",
        "listeners": {"submission": {"port": 2587}},
        "downstream": {"outbound": mta.url}}))
    return str(tmp_path / "gateway.yaml")


def cli(*argv: str) -> tuple[int, str]:
    parser = argparse.ArgumentParser(prog="portcullis")
    add_held_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(list(argv))
    out = io.StringIO()
    return args.func(args, out), out.getvalue()


def test_held_commands_list_show_release_delete(tmp_path, mta):
    config = write_config(tmp_path, mta)
    store = HeldStore(tmp_path / "held")  # hold.path defaults to "held" next to the config
    first, second = hold(store), hold(store, now=T0 + 1)

    code, text = cli("held", "-c", config, "list")
    assert code == 0 and first.id in text and second.id in text and "content" in text
    code, text = cli("held", "-c", config, "show", first.id)
    assert code == 0
    assert "recipient:   <carol@example.net>" in text and "GTUBE" in text
    assert "Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=" in text
    assert cli("held", "-c", config, "show", "20990101000000-0000000000")[0] == EXIT_NOT_FOUND

    code, text = cli("held", "-c", config, "release", first.id)
    assert code == 0 and "released and removed" in text
    assert [m.content for m in mta.messages] == [MESSAGE]

    code, text = cli("held", "-c", config, "delete", second.id)
    assert code == 0 and "deleted" in text
    assert cli("held", "-c", config, "list")[1].strip() == "no held messages"
    assert len(mta.messages) == 1


def test_held_release_command_reports_a_refusing_downstream(tmp_path, mta):
    config = write_config(tmp_path, mta)
    held = hold(HeldStore(tmp_path / "held"))
    mta.behaviour.refuse_mail = "421 4.3.2 shutting down"
    code, text = cli("held", "-c", config, "release", held.id)
    assert code == EXIT_NOT_DELIVERED and "still held" in text


def test_held_expire_command_uses_the_default_policy(tmp_path, mta):
    config = write_config(tmp_path, mta)
    store = HeldStore(tmp_path / "held")
    hold(store, now=time.time() - 8 * DAY)  # past the 7-day default
    hold(store, now=time.time() - 1 * DAY)
    code, text = cli("held", "-c", config, "expire")
    assert code == 0 and "released" in text and "1 held messages past 7 days" in text
    assert [m.content for m in mta.messages] == [MESSAGE]
    assert len(asyncio.run(store.list())) == 1
