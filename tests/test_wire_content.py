"""Content scanning on the submission path against a real rspamd: GTUBE refused or
held, ordinary mail untouched, rspamd down gives the configured fallback, held mail
released byte for byte, notices to the account and the abuse desk."""

import smtplib
import time

import pytest

from gateway.cli import main
from tests.conftest import PASSWORD, customer_policies
from tests.support import rspamd_server as _rspamd
from tests.support.gateway import GatewayUnderTest
from tests.support.ports import free_port
from tests.support.rspamd_server import GTUBE

rspamd = _rspamd.rspamd  # module-scoped: one rspamd for this file

ORDINARY = (b"From: alice@acme.example\r\nTo: friend@elsewhere.example\r\n"
            b"Subject: lunch\r\nDate: Mon, 23 Nov 2026 10:00:00 +0000\r\n"
            b"Message-ID: <lunch@acme.example>\r\n\r\nshall we meet at noon?\r\n")
SPAM = ORDINARY.replace(b"shall we", GTUBE + b"\r\nshall we")


def gateway_with(tmp_path, downstream, cert_files, password_hash, url, **acme):
    policies = customer_policies(password_hash)
    policies["acme"].update(acme)
    return GatewayUnderTest(
        tmp_path, inbound_url=downstream.url, outbound_url=downstream.url,
        policies=policies, cert=cert_files,
        extra={"scanner": {"url": url, "timeout": 2},
               "notify": {"abuse_address": "abuse@isp.example", "interval": 3600}}).start()


def submit(gw, client_tls, message):
    with smtplib.SMTP_SSL("127.0.0.1", gw.ports["submissions"], timeout=20, context=client_tls) as c:
        c.login("alice@acme.example", PASSWORD)
        return c.sendmail("alice@acme.example", ["friend@elsewhere.example"], message)


def wait_for(predicate, timeout=10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not predicate():
        time.sleep(0.1)
    return predicate()


def test_gtube_is_refused_with_a_sentence_and_the_account_and_abuse_desk_are_told(
        tmp_path, rspamd, downstream, cert_files, password_hash, client_tls):
    gw = gateway_with(tmp_path, downstream, cert_files, password_hash, rspamd.url)
    try:
        with pytest.raises(smtplib.SMTPDataError) as exc:
            submit(gw, client_tls, SPAM)
        assert (exc.value.smtp_code, exc.value.smtp_error[:5]) == (550, b"5.7.1")
        assert b"GTUBE" not in exc.value.smtp_error  # never rspamd's symbols
        # A second spam in the interval makes no second notice.
        with pytest.raises(smtplib.SMTPDataError):
            submit(gw, client_tls, SPAM)
        assert wait_for(lambda: len(downstream.messages) >= 2)
        time.sleep(0.5)
    finally:
        gw.stop()
    rcpts = sorted(r for m in downstream.messages for r in m.rcpt_tos)
    assert rcpts == ["abuse@isp.example", "alice@acme.example"]
    assert all(GTUBE not in m.content for m in downstream.messages)


def test_ordinary_mail_passes_with_no_headers_beyond_ours(
        tmp_path, rspamd, downstream, cert_files, password_hash, client_tls):
    gw = gateway_with(tmp_path, downstream, cert_files, password_hash, rspamd.url)
    try:
        submit(gw, client_tls, ORDINARY)
    finally:
        gw.stop()
    content = downstream.messages[0].content
    assert content.endswith(ORDINARY)
    added = content[: -len(ORDINARY)]
    names = {line.split(b":")[0] for line in added.split(b"\r\n") if line and line[:1] not in b" \t"}
    assert names == {b"DKIM-Signature", b"Received", b"X-Portcullis-Sender-Id"}


def test_rspamd_down_gives_the_default_tempfail(tmp_path, downstream, cert_files, password_hash,
                                                client_tls):
    gw = gateway_with(tmp_path, downstream, cert_files, password_hash,
                      f"http://127.0.0.1:{free_port()}")
    try:
        with pytest.raises(smtplib.SMTPDataError) as exc:
            submit(gw, client_tls, ORDINARY)
        assert (exc.value.smtp_code, exc.value.smtp_error[:5]) == (451, b"4.7.1")
    finally:
        gw.stop()
    assert downstream.messages == []


def test_held_spam_reaches_the_downstream_only_after_release_byte_for_byte(
        tmp_path, rspamd, downstream, cert_files, password_hash, client_tls, capsys):
    gw = gateway_with(tmp_path, downstream, cert_files, password_hash, rspamd.url,
                      content={"outbound": {"actions": {"reject": "hold"}}})
    try:
        submit(gw, client_tls, SPAM)  # 250: held, not delivered
        time.sleep(0.5)
        delivered_before = [m for m in downstream.messages if GTUBE in m.content]
        assert delivered_before == []
        config = str(gw.config_path)
        assert main(["held", "-c", config, "list"]) == 0
        held_id = capsys.readouterr().out.split()[0]
        assert main(["held", "-c", config, "release", held_id]) == 0
    finally:
        gw.stop()
    released = [m for m in downstream.messages if GTUBE in m.content]
    assert len(released) == 1 and released[0].rcpt_tos == ["friend@elsewhere.example"]
    assert released[0].content.endswith(SPAM)
    assert released[0].content.startswith(b"DKIM-Signature:")  # exactly as it would have gone


def test_a_content_refusal_logs_its_rule_and_score_under_the_id_in_the_reply(
        tmp_path, rspamd, downstream, cert_files, password_hash, client_tls, caplog):
    caplog.set_level("INFO", logger="portcullis.transaction")
    gw = gateway_with(tmp_path, downstream, cert_files, password_hash, rspamd.url)
    try:
        with pytest.raises(smtplib.SMTPDataError) as exc:
            submit(gw, client_tls, SPAM)
        txid = exc.value.smtp_error.rsplit(b"(id ", 1)[1].rstrip(b")").decode()

        def line():
            return [r.fields for r in caplog.records
                    if r.name == "portcullis.transaction" and r.fields["txid"] == txid]
        assert wait_for(line, timeout=5)
    finally:
        gw.stop()
    [fields] = line()
    assert fields["rule"] == "content.reject" and fields["result"] == "550 5.7.1"
    assert fields["score"] >= fields["required_score"] > 0
    assert "GTUBE" in fields["symbols"]
