"""Before-queue forwarding: the client hears the downstream's own answers, and
nothing gets a 250 that the downstream did not take."""

import smtplib
import time

import pytest

from tests.support.gateway import GatewayUnderTest
from tests.support.ports import free_port
from tests.support.reply_ids import without_id

MSG = b"From: a@other.example\r\nSubject: hi\r\n\r\nhello\r\n"


def inbound(gw):
    c = smtplib.SMTP("127.0.0.1", gw.ports["inbound"], timeout=15)
    c.ehlo("client.example")
    return c


def test_recipient_refused_downstream_is_refused_at_rcpt_time(gateway, downstream):
    downstream.behaviour.refuse_rcpt["gone@acme.example"] = "550 5.1.1 No such user here"
    with inbound(gateway) as c:
        c.mail("a@other.example")
        assert c.rcpt("gone@acme.example") == (550, b"5.1.1 No such user here")
        assert c.rcpt("bob@acme.example")[0] == 250
        assert c.data(MSG)[0] == 250
    assert downstream.messages[0].rcpt_tos == ["bob@acme.example"]


def test_temporary_recipient_refusal_is_passed_back_as_4xx(gateway, downstream):
    downstream.behaviour.refuse_rcpt["full@acme.example"] = "452 4.2.2 Mailbox full"
    with inbound(gateway) as c:
        c.mail("a@other.example")
        assert c.rcpt("full@acme.example") == (452, b"4.2.2 Mailbox full")


@pytest.mark.parametrize("reply", ["554 5.7.1 Message rejected as spam", "451 4.3.0 Try later"])
def test_data_refusal_downstream_reaches_the_client_with_its_code(gateway, downstream, reply):
    downstream.behaviour.data_reply = reply
    with inbound(gateway) as c:
        c.mail("a@other.example")
        c.rcpt("bob@acme.example")
        code, msg = c.data(MSG)
    assert f"{code} {msg.decode()}" == reply
    assert downstream.messages == []


def test_downstream_refusing_the_sender_is_heard_at_rcpt(gateway, downstream):
    downstream.behaviour.refuse_mail = "550 5.1.8 Sender domain blacklisted"
    with inbound(gateway) as c:
        c.mail("a@other.example")
        assert c.rcpt("bob@acme.example") == (550, b"5.1.8 Sender domain blacklisted")


def test_downstream_down_gives_451_441_and_nothing_is_acknowledged(tmp_path, cert_files, password_hash):
    from tests.conftest import customer_policies

    dead = f"smtp://127.0.0.1:{free_port()}"
    gw = GatewayUnderTest(tmp_path, inbound_url=dead, outbound_url=dead,
                          policies=customer_policies(password_hash), cert=cert_files).start()
    try:
        with inbound(gw) as c:
            c.mail("a@other.example")
            code, text = c.rcpt("bob@acme.example")
            assert (code, without_id(text)) == (
                451, b"4.4.1 Downstream mail server unavailable, try again later")
            code, _ = c.docmd("DATA")
            assert code == 503  # no recipient was accepted: nothing to take
    finally:
        gw.stop()


def test_slow_downstream_gives_451_442_before_the_client_gives_up(gateway, downstream):
    downstream.behaviour.data_delay = 6  # the gateway's downstream timeout is 3 s
    with inbound(gateway) as c:
        c.mail("a@other.example")
        c.rcpt("bob@acme.example")
        start = time.monotonic()
        code, msg = c.data(MSG)
        assert (code, msg[:5]) == (451, b"4.4.2")
        assert time.monotonic() - start < 5


def test_downstream_connection_is_reused_between_messages(gateway, downstream):
    peers = set()
    original = downstream.handler.handle_MAIL

    async def spy(server, session, envelope, address, options):
        peers.add(session.peer)
        return await original(server, session, envelope, address, options)

    downstream.handler.handle_MAIL = spy
    for _ in range(5):
        with inbound(gateway) as c:
            c.sendmail("a@other.example", ["bob@acme.example"], MSG)
    assert len(downstream.messages) == 5
    assert len(peers) == 1  # one pooled downstream connection carried all five


def test_rset_abandons_the_downstream_transaction(gateway, downstream):
    with inbound(gateway) as c:
        c.mail("a@other.example")
        c.rcpt("bob@acme.example")
        c.rset()
        c.sendmail("b@other.example", ["carol@acme.example"], MSG)
    assert [(m.mail_from, m.rcpt_tos) for m in downstream.messages] == [
        ("b@other.example", ["carol@acme.example"])]


def test_disconnect_mid_transaction_delivers_nothing(gateway, downstream):
    c = inbound(gateway)
    c.mail("a@other.example")
    c.rcpt("bob@acme.example")
    c.docmd("DATA")
    c.send(b"From: a@other.example\r\n\r\npartial")
    c.close()
    time.sleep(0.5)
    with inbound(gateway) as c2:
        c2.sendmail("a@other.example", ["bob@acme.example"], MSG)
    assert len(downstream.messages) == 1
    assert downstream.messages[0].content.endswith(MSG)


def test_8bitmime_body_parameter_is_passed_on(gateway, downstream):
    with inbound(gateway) as c:
        c.sendmail("a@other.example", ["bob@acme.example"],
                   "From: a@other.example\r\n\r\nGrüße\r\n".encode(), mail_options=["BODY=8BITMIME"])
    assert "BODY=8BITMIME" in downstream.messages[0].mail_options
    assert "Grüße".encode() in downstream.messages[0].content
