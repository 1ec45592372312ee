"""The typed transaction and the declared pipelines, seen over the wire: the state
is ours (made at MAIL on our connection object, dropped at RSET and at the end of
DATA), a step added to a list runs in its place, and a refusal a step decides is
on record with its own rule."""

from __future__ import annotations

import copy
import logging
import re
import smtplib
import time

import pytest
from aiosmtpd.smtp import Envelope

from gateway import replies
from gateway.smtp.pipeline.pipelines import SUBMISSION
from gateway.smtp.pipeline.products import PRODUCTS
from gateway.smtp.pipeline.step import Step, refuse
from gateway.smtp.state import Transaction
from tests.conftest import customer_policies
from tests.support.gateway import GatewayUnderTest
from tests.support.submission import Clock, logged_in, message, send

ID = re.compile(rb"\(id ([A-Z2-7]{12}(?:\.\d+)?)\)$")
ENVELOPE_FIELDS = set(vars(Envelope()))


@pytest.fixture
def records(caplog):
    caplog.set_level(logging.INFO, logger="portcullis")
    return caplog


def transaction_line(caplog, txid: str, timeout: float = 5.0) -> dict:
    """The transaction's one log line (written just after the reply, in the gateway's thread)."""
    deadline = time.monotonic() + timeout
    while True:
        found = [r.fields for r in list(caplog.records)
                 if r.name == "portcullis.transaction" and r.fields.get("txid") == txid]
        if found or time.monotonic() > deadline:
            assert len(found) == 1, found
            return found[0]
        time.sleep(0.02)


def id_in(text: bytes) -> str:
    m = ID.search(text)
    assert m, f"no id in {text!r}"
    return m.group(1).decode()


def connection_state(gw, listener: str) -> dict:
    """What the gateway's one connection on ``listener`` holds, read on its own loop."""
    async def read() -> dict:
        [conn] = [c for s in gw.gateway.listeners.states if s.name == listener
                  for c in s.connections]
        tx = conn.tx
        return {"tx": tx, "record": conn.tx_record, "session": conn.facts,
                "envelope_fields": set(vars(conn.envelope)) if conn.envelope else set(),
                "recipients": list(tx.recipients) if tx else None,
                "has_downstream": tx is not None and tx.downstream is not None}
    return gw.run(read())


def test_the_transaction_is_ours_made_at_mail_and_dropped_at_rset_and_at_the_end_of_data(
        gateway, downstream):
    with smtplib.SMTP("127.0.0.1", gateway.ports["inbound"], timeout=10) as c:
        c.ehlo("sender.example")
        assert connection_state(gateway, "inbound")["tx"] is None
        assert c.mail("someone@sender.example")[0] == 250
        state = connection_state(gateway, "inbound")
        tx = state["tx"]
        assert isinstance(tx, Transaction)
        assert (tx.sender, tx.helo, tx.extended, tx.direction) == (
            "someone@sender.example", "sender.example", True, "inbound")
        assert tx.txid == state["record"].txid and tx.session is state["session"]
        assert tx.runtime is gateway.runtime  # the configuration in force at MAIL
        assert c.rcpt("bob@acme.example")[0] == 250
        state = connection_state(gateway, "inbound")
        assert state["recipients"] == ["bob@acme.example"] and state["has_downstream"]
        # aiosmtpd's envelope carries its own fields only.
        assert state["envelope_fields"] <= ENVELOPE_FIELDS
        assert c.rset()[0] == 250
        assert connection_state(gateway, "inbound")["tx"] is None
        assert downstream.messages == []
        c.mail("someone@sender.example")
        c.rcpt("bob@acme.example")
        assert c.data(b"From: someone@sender.example\r\nSubject: hi\r\n\r\nhello\r\n")[0] == 250
        state = connection_state(gateway, "inbound")
        assert state["tx"] is None and state["envelope_fields"] <= ENVELOPE_FIELDS
    assert len(downstream.messages) == 1


def test_a_step_added_to_a_pipeline_runs_in_its_place_and_its_refusal_is_on_record(
        gateway, downstream, client_tls, records, monkeypatch):
    seen: list[dict] = []

    async def screening(tx: Transaction):
        seen.append({"login": tx.session.login, "recipients": list(tx.recipients),
                     "stamped": b"\r\nReceived:" in tx.prefix,
                     "signed": tx.prefix.startswith(b"DKIM-Signature:")})
        return refuse(replies.MALFORMED_HEADER.with_text("Screened out"), "test.screening",
                      {"screened": "yes"})

    names = [step.name for step in SUBMISSION]
    at = names.index("hold for review")  # after signing, before the message could leave
    monkeypatch.setattr(PRODUCTS["outbound"], "pipeline",
                        (*SUBMISSION[:at], Step("screening", screening), *SUBMISSION[at:]))
    with logged_in(gateway, client_tls) as c:
        result = send(c, ["someone@elsewhere.example"])
    code, text = result["data"]
    assert code == 550 and b"Screened out" in text
    assert seen == [{"login": "alice@acme.example", "recipients": ["someone@elsewhere.example"],
                     "stamped": True, "signed": True}]
    line = transaction_line(records, id_in(text))
    assert line["rule"] == "test.screening" and line["screened"] == "yes"
    assert downstream.messages == []


@pytest.fixture
def sized(tmp_path, downstream, cert_files, password_hash):
    policies = copy.deepcopy(customer_policies(password_hash))
    policies["acme"]["accounts"][0]["quotas"] = {"max_message_size": 2048}
    gw = GatewayUnderTest(tmp_path, inbound_url=downstream.url, outbound_url=downstream.url,
                          policies=policies, cert=cert_files, clock=Clock()).start()
    try:
        yield gw
    finally:
        gw.stop()


def test_a_message_over_the_accounts_size_is_on_record_with_the_quota_rule(
        sized, client_tls, records, downstream):
    with logged_in(sized, client_tls) as c:
        result = send(c, ["x@elsewhere.example"], body=message(pad=40))  # ~3 KB, no SIZE=
    code, text = result["data"]
    assert code == 552 and text.startswith(b"5.3.4")
    line = transaction_line(records, id_in(text))
    # Before the pipelines the rule was lost on the way to the reply (smtp.protocol).
    assert line["rule"] == "quota.max_message_size"
    assert line["quota_login"] == "alice@acme.example"
    assert downstream.messages == []
