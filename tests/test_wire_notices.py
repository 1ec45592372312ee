"""A notice on every containment (issue 18), on the wire: a suspension by each path
(the ceiling at RCPT, a dead-address run, complaints, an operator) makes exactly one
notice per burst to the account holder, one to the abuse desk and one webhook POST,
with the evidence; each notice is DKIM-signed, and dkimpy verifies it against the
public key the gateway's key store would publish."""

from __future__ import annotations

import email
import json
import sys
import threading
import time
from email.policy import default as default_policy
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import dkim
import pytest

from gateway.admin import actions
from gateway.cli import build_parser
from gateway.dkim.keystore import KeyStore, generate_selector
from tests.conftest import customer_policies
from tests.support.arf import arf_report
from tests.support.gateway import GatewayUnderTest
from tests.support.ports import free_port
from tests.support.submission import Clock, codes, logged_in, message, send
from tests.test_wire_abuse import report_to_mx

ALICE = "alice@acme.example"
ABUSE = "abuse@isp.example"
NOTICE_SENDER = "postmaster@isp.example"


class Webhook:
    """A real HTTP server on loopback keeping every JSON body posted to it."""

    def __init__(self) -> None:
        received = self.received = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture
def webhook():
    hook = Webhook()
    try:
        yield hook
    finally:
        hook.stop()


@pytest.fixture
def make_gw(tmp_path, downstream, cert_files, password_hash, webhook):
    started = []
    # The ISP's own domain signs its notices (RSA: every verifier knows it).
    generate_selector(tmp_path / "keys", "isp.example", "notice", "rsa-sha256")

    def make(compromise: dict, alice_quotas: dict | None = None) -> GatewayUnderTest:
        policies = customer_policies(password_hash)
        if alice_quotas:
            policies["acme"]["accounts"][0]["quotas"] = alice_quotas
        gw = GatewayUnderTest(
            tmp_path, inbound_url=downstream.url, outbound_url=downstream.url, policies=policies,
            cert=cert_files, clock=Clock(),
            extra={"store": {"backend": "sqlite", "path": str(tmp_path / "state.db")},
                   "compromise": compromise, "abuse": {"domains": ["isp.example"]},
                   "notify": {"abuse_address": ABUSE, "sender": NOTICE_SENDER,
                              "webhook_url": webhook.url, "interval": 3600}})
        started.append(gw.start())
        return gw

    try:
        yield make
    finally:
        for gw in started:
            gw.stop()


def notices(downstream) -> list:
    return [m for m in downstream.messages if m.mail_from == NOTICE_SENDER]


def wait_for_notices(downstream, webhook, n_mail=2, n_hook=1, timeout=10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(notices(downstream)) >= n_mail and len(webhook.received) >= n_hook:
            time.sleep(0.3)  # and nothing more arrives
            return
        time.sleep(0.05)


def verifies(raw: bytes, keys_dir) -> bool:
    selector = KeyStore.load(keys_dir).selectors("isp.example")[0]

    def dnsfunc(name, timeout=5):
        name = name.decode() if isinstance(name, bytes) else name
        assert name.rstrip(".") == "notice._domainkey.isp.example", name
        return selector.dns_value().encode()

    return dkim.verify(raw, dnsfunc=dnsfunc)


def check_one_notice_each(gw, downstream, webhook, detected: str, evidence_key: str) -> None:
    wait_for_notices(downstream, webhook)
    sent = notices(downstream)
    assert sorted(m.rcpt_tos[0] for m in sent) == sorted([ALICE, ABUSE])
    for m in sent:
        assert b"DKIM-Signature:" in m.content and verifies(m.content, gw.keys_dir)
        parsed = email.message_from_bytes(m.content, policy=default_policy)
        assert parsed["X-Portcullis-Notice"] == "suspended"
        body = parsed.get_content()
        if m.rcpt_tos == [ABUSE]:
            assert f"Login:     {ALICE}" in body and evidence_key in body
    [hook] = webhook.received
    assert (hook["event"], hook["login"]) == ("suspended", ALICE)
    assert evidence_key in hook["evidence"]
    if detected:
        assert hook["evidence"]["detected_at"] == detected


def test_the_ceiling_crossed_at_rcpt_notifies_once_per_burst(make_gw, client_tls, downstream,
                                                            webhook):
    gw = make_gw({"ceiling_recipients_per_hour": 4}, {"recipients_per_hour": 2})
    with logged_in(gw, client_tls) as c:
        result = send(c, [f"r{i}@elsewhere.example" for i in range(8)])
        assert codes(result) == [250, 250] + [451] * 6
        assert codes(send(c, ["x@elsewhere.example"])) == [550]  # suspended
    check_one_notice_each(gw, downstream, webhook, "RCPT", "reason")
    # Lifted and tripped again within the interval: the same burst, no new notice.
    assert gw.run(actions.unsuspend_account(gw.runtime.metering, ALICE, gw.runtime.clock())) is True
    with logged_in(gw, client_tls) as c:
        send(c, [f"s{i}@elsewhere.example" for i in range(3)])
    time.sleep(0.5)
    events = gw.run(gw.runtime.metering.store.events(ALICE))
    assert [e.kind for e in events].count("suspended") == 2  # suspended twice, told once
    assert len(notices(downstream)) == 2 and len(webhook.received) == 1


def test_a_dead_address_run_notifies(make_gw, client_tls, downstream, webhook):
    gw = make_gw({"refusal_minimum": 4, "refusal_share": 0.5})
    downstream.behaviour.refuse_rcpt = {f"u{i}@victim.example": "550 5.1.1 no such user"
                                        for i in range(4)}
    with logged_in(gw, client_tls) as c:
        assert codes(send(c, [f"u{i}@victim.example" for i in range(4)])) == [550] * 4
    check_one_notice_each(gw, downstream, webhook, "end of a transaction refused downstream",
                          "refused_last_hour")


def test_complaints_that_suspend_notify(make_gw, client_tls, downstream, webhook):
    gw = make_gw({"complaint_minimum": 3, "complaint_rate": 0.5})
    with logged_in(gw, client_tls) as c:
        for i in range(3):
            assert send(c, ["victim@mailbox.example"], body=message(body=f"offer {i}"))["data"][0] == 250
    sent = [m.content for m in downstream.messages]
    for original in sent:
        assert report_to_mx(gw, arf_report(original)) == 250
    check_one_notice_each(gw, downstream, webhook, "", "about_txid")
    account = next(m for m in notices(downstream) if m.rcpt_tos == [ALICE])
    assert b"recipients reported mail from it as spam" in account.content


def test_an_operator_suspension_notifies_with_who(make_gw, client_tls, downstream, webhook, capsys):
    gw = make_gw({})
    parsed = build_parser().parse_args(["accounts", "-c", str(gw.config_path), "suspend", ALICE,
                                        "--reason", "phishing kit found"])
    assert parsed.func(parsed, sys.stdout) == 0
    check_one_notice_each(gw, downstream, webhook, "", "by")
    assert webhook.received[0]["evidence"]["reason"] == "phishing kit found"
    account = next(m for m in notices(downstream) if m.rcpt_tos == [ALICE])
    assert b"abuse desk stopped it from sending" in account.content
