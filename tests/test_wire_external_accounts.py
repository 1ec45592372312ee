"""Accounts from the ISP's database over SMTP: a real PostgreSQL (source `sql`) and a
real OpenLDAP slapd (source `ldap`), as tests/test_wire_accounts.py does for Dovecot.

AUTH, the sender rules (the source's grants and the policy file's `senders:`, the
same answer at MAIL, at the end of DATA and at signing), the customer's quotas and
DKIM signing, each through the real submission listener."""

from __future__ import annotations

import smtplib

import pytest

from gateway.accounts import passwords
from gateway.dkim.keystore import generate_selector
from tests.conftest import customer_policies
from tests.support.gateway import GatewayUnderTest
from tests.support.postgres_server import postgres_fixture, postgres_server, quote  # noqa: F401
from tests.support.reply_ids import without_id
from tests.support.slapd_server import (  # noqa: F401
    PEOPLE,
    READER_DN,
    READER_PW,
    slapd_fixture,
    slapd_server,
)

QUERY = "SELECT password, customer, senders FROM mailbox WHERE login = lower($1) AND active"
# A domain no policy file claims: only the database grants it.
PARTNER = "shop.partner.example"


def _sql_user(pg, login, password, senders=()):
    send = "ARRAY[" + ",".join(quote(s) for s in senders) + "]" if senders else "NULL"
    pg.sql(f"INSERT INTO mailbox (login, password, customer, senders) VALUES "
           f"({quote(login)}, {quote(passwords.hash_password(password))}, NULL, {send})")


@pytest.fixture(params=["sql", "ldap"])
def source(request):
    """(the gateway's accounts: section, add_user(login, password, senders))."""
    if request.param == "sql":
        pg = request.getfixturevalue("postgres")
        section = {"source": "sql", "auth_timeout": 3, "cache": {"enabled": False},
                   "sql": {"dsn": pg.dsn, "query": QUERY}}
        return section, lambda login, pw, senders=(): _sql_user(pg, login, pw, senders)
    slapd = request.getfixturevalue("slapd")
    section = {"source": "ldap", "auth_timeout": 3, "cache": {"enabled": False},
               "ldap": {"url": slapd.url, "timeout": 2, "mode": "compare",
                        "search_base": PEOPLE, "search_filter": "(mail={login})",
                        "bind_dn": READER_DN, "bind_password": READER_PW,
                        "senders_attribute": "portcullisSender"}}
    return section, lambda login, pw, senders=(): slapd.add_user(login, pw,
                                                                 senders=list(senders) or None)


@pytest.fixture
def gw(tmp_path, source, downstream, cert_files, password_hash):
    section, add_user = source
    add_user("erin@acme.example", "erin secret", [f"*@{PARTNER}"])
    # Alice is in acme's policy file too (senders: *@sub.acme.example), with another
    # password: the database says who she is, the file widens what she may send as.
    add_user("alice@acme.example", "alice from the database")
    policies = customer_policies(password_hash)
    policies["acme"]["quotas"] = {"recipients_per_message": 2}
    gateway = GatewayUnderTest(tmp_path, inbound_url=downstream.url, outbound_url=downstream.url,
                               policies=policies, cert=cert_files, extra={"accounts": section})
    generate_selector(gateway.keys_dir, PARTNER, "test", "ed25519-sha256")
    gateway.start()
    try:
        yield gateway
    finally:
        gateway.stop()


def submit(gw, client_tls, login, password):
    client = smtplib.SMTP_SSL("127.0.0.1", gw.ports["submissions"], timeout=20, context=client_tls)
    client.login(login, password)
    return client


def message(sender: str) -> bytes:
    return f"From: {sender}\r\nTo: x@elsewhere.example\r\nSubject: s\r\n\r\nbody\r\n".encode()


def test_auth_checks_the_database_password(gw, client_tls):
    with smtplib.SMTP_SSL("127.0.0.1", gw.ports["submissions"], timeout=20,
                          context=client_tls) as client:
        assert client.login("erin@acme.example", "erin secret")[0] == 235
    for login, password in [("erin@acme.example", "wrong"), ("nobody@acme.example", "x"),
                            # The policy file's hash is not the password: the source is.
                            ("alice@acme.example", "correct horse battery staple")]:
        with smtplib.SMTP_SSL("127.0.0.1", gw.ports["submissions"], timeout=20,
                              context=client_tls) as client:
            with pytest.raises(smtplib.SMTPAuthenticationError) as refused:
                client.login(login, password)
            assert (refused.value.smtp_code, without_id(refused.value.smtp_error)) == (
                535, b"5.7.8 Authentication credentials invalid")


def test_a_sender_granted_by_the_database_passes_mail_data_and_is_signed(gw, client_tls, downstream):
    with submit(gw, client_tls, "erin@acme.example", "erin secret") as client:
        sender = f"orders@{PARTNER}"
        assert client.sendmail(sender, ["x@elsewhere.example"], message(sender)) == {}
    content = downstream.messages[0].content
    # Signed for the granted domain, not refused at signing (550 5.7.1) after MAIL said yes.
    assert f"d={PARTNER};".encode() in content.split(b"\r\n\r\n")[0].replace(b"\r\n\t", b" ")


def test_a_sender_not_granted_is_refused_at_mail_and_in_from(gw, client_tls, downstream):
    with submit(gw, client_tls, "erin@acme.example", "erin secret") as client:
        assert client.mail("bob@acme.example")[0] == 553
        client.rset()
        # Envelope granted, From: not: refused at the end of DATA by the same rule.
        client.mail("erin@acme.example")
        client.rcpt("x@elsewhere.example")
        code, text = client.data(message("bob@acme.example"))
        assert code == 550 and b"<bob@acme.example> not allowed" in text
    assert downstream.messages == []


def test_the_policy_files_senders_widen_a_database_account(gw, client_tls, downstream):
    with submit(gw, client_tls, "alice@acme.example", "alice from the database") as client:
        sender = "team@sub.acme.example"
        assert client.sendmail(sender, ["x@elsewhere.example"], message(sender)) == {}
    assert b"d=sub.acme.example;" in downstream.messages[0].content.replace(b"\r\n\t", b" ")


def test_a_database_account_gets_its_customers_quotas(gw, client_tls):
    with submit(gw, client_tls, "erin@acme.example", "erin secret") as client:
        client.mail("erin@acme.example")
        assert client.rcpt("a@elsewhere.example")[0] == 250
        assert client.rcpt("b@elsewhere.example")[0] == 250
        # acme's policy file: recipients_per_message 2.
        assert client.rcpt("c@elsewhere.example")[0] == 452
