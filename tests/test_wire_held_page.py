"""The customer's side of a hold (issue 18): the notice to the account holder carries
a signed, expiring link to the ops HTTP port, which lists what was held from that
account and why (never rspamd's symbols); a link altered, expired or made with
another secret shows nothing.  And the abuse desk's release after a suspension is
one command: `accounts unsuspend LOGIN --release-held`."""

from __future__ import annotations

import email
import re
import sys
import time
import urllib.error
import urllib.request
from email.policy import default as default_policy

import pytest

from gateway.cli import build_parser
from gateway.ops.held_page import HeldLinks, customer_view
from tests.conftest import customer_policies
from tests.support.gateway import GatewayUnderTest
from tests.support.ports import free_port
from tests.support.serve_process import eventually
from tests.support.submission import Clock, logged_in, message, send

ALICE = "alice@acme.example"
BOB = "bob@acme.example"


def get(url):
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@pytest.fixture
def gw(tmp_path, downstream, cert_files, password_hash):
    port = free_port()
    policies = customer_policies(password_hash)
    for account in policies["acme"]["accounts"]:
        account["quotas"] = {"messages_per_hour": 1, "at_limit": "hold", "when_suspended": "hold"}
    g = GatewayUnderTest(
        tmp_path, inbound_url=downstream.url, outbound_url=downstream.url, policies=policies,
        cert=cert_files, clock=Clock(),
        extra={"http": {"port": port},
               "store": {"backend": "sqlite", "path": str(tmp_path / "state.db")},
               "notify": {"abuse_address": "abuse@isp.example", "interval": 3600,
                          "held_page_url": f"http://127.0.0.1:{port}", "held_page_days": 2}})
    g.start()
    g.base = f"http://127.0.0.1:{port}"
    try:
        yield g
    finally:
        g.stop()


def account_notice(downstream, login=ALICE):
    assert eventually(lambda: any(m.rcpt_tos == [login] for m in downstream.messages), 10.0)
    return next(m for m in downstream.messages if m.rcpt_tos == [login])


def test_the_notice_links_to_a_page_of_what_was_held_and_why(gw, client_tls, downstream):
    with logged_in(gw, client_tls) as c:
        assert send(c, ["x@elsewhere.example"])["data"][0] == 250
        body = message(body="the quarterly figures").replace(b"Subject: test", b"Subject: Q3 figures")
        assert b"held for review" in send(c, ["y@elsewhere.example"], body=body)["data"][1]
    with logged_in(gw, client_tls, BOB) as c:
        assert send(c, ["z@elsewhere.example"], sender=BOB)["data"][0] == 250
        assert b"held for review" in send(c, ["w@elsewhere.example"], sender=BOB)["data"][1]
    parsed = email.message_from_bytes(account_notice(downstream).content, policy=default_policy)
    notice = parsed.get_content()
    [link] = re.findall(r"http://127\.0\.0\.1:\d+/held\?t=\S+", notice)
    status, page = get(link)
    assert status == 200
    assert "Q3 figures" in page and "y@elsewhere.example" in page
    assert "your account had reached a sending limit" in page and "messages_per_hour" in page
    assert "w@elsewhere.example" not in page  # bob's held mail is bob's
    # Altered (another login, the same signature), or made with another secret: nothing.
    token = link.split("t=", 1)[1]
    login_part, expires, mac = token.split(".")
    forged = f"{HeldLinks(['x' * 32]).make(BOB, time.time() + 3600)}"
    bob_b64 = forged.split(".")[0]
    for bad in (f"{bob_b64}.{expires}.{mac}", forged, "", "not-a-token"):
        assert get(f"{gw.base}/held?t={bad}")[0] == 403
    # Valid for held_page_days: 2 days from the notice.
    assert abs(int(expires) - (time.time() + 2 * 86400)) < 120


def test_an_expired_link_shows_nothing(gw):
    links = gw.runtime.held_links
    assert get(f"{gw.base}/held?t={links.make(ALICE, time.time() - 1)}")[0] == 403
    status, page = get(f"{gw.base}/held?t={links.make(ALICE, time.time() + 60)}")
    assert status == 200 and "Nothing from your account is held now." in page


def test_the_customer_never_sees_rspamds_symbols():
    entry = customer_view(0.0, ["a@b.example"], "hi", "content",
                          {"score": 16.0, "symbols": ["GTUBE", "BAYES_SPAM"], "cause": "action",
                           "action": "reject"})
    assert entry.why == "our spam filter found it suspicious"
    assert entry.facts == (("spam score", "16.0"),)


def test_unsuspend_and_release_is_one_command(gw, client_tls, downstream, capsys):
    def accounts(*args):
        parsed = build_parser().parse_args(["accounts", "-c", str(gw.config_path), *args])
        return parsed.func(parsed, sys.stdout)

    assert accounts("suspend", ALICE, "--reason", "spike reported") == 0
    with logged_in(gw, client_tls) as c:
        for rcpt in ("a@elsewhere.example", "b@elsewhere.example"):
            assert b"held for review" in send(c, [rcpt])["data"][1]
    held = gw.run(gw.runtime.held.list())
    assert [h.reason for h in held] == ["suspended", "suspended"]
    capsys.readouterr()
    assert accounts("unsuspend", ALICE, "--release-held") == 0
    out = capsys.readouterr().out
    assert f"{ALICE}: unsuspended" in out and f"{ALICE}: 2 held messages released" in out
    assert gw.run(gw.runtime.held.list()) == []
    delivered = [m.rcpt_tos for m in downstream.messages if m.mail_from == ALICE]
    assert sorted(delivered) == [["a@elsewhere.example"], ["b@elsewhere.example"]]
    events = [e.kind for e in gw.run(gw.runtime.metering.store.events(ALICE))]
    assert events.count("held released") == 2 and "unsuspended" in events
