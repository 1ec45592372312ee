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
from tests.support.arf import arf_report
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


# The MX's question "do we host this domain?": a domain is ours if an account has it.
DOMAIN_QUERY = "SELECT 1 FROM mailbox WHERE split_part(login, '@', 2) = $1 AND active LIMIT 1"
# Hosted with no account in the database yet: the gateway file lists it (any source).
LISTED = "listed.example"


@pytest.fixture(params=["sql", "ldap"])
def source(request):
    """(the gateway's accounts: section, add_user(login, password, senders), stop the
    source's server: the fixture starts it again for the next test)."""
    if request.param == "sql":
        pg = request.getfixturevalue("postgres")
        section = {"source": "sql", "auth_timeout": 3, "cache": {"enabled": False},
                   "sql": {"dsn": pg.dsn, "query": QUERY, "domain_query": DOMAIN_QUERY,
                           "connect_timeout": 1}}
        return section, lambda login, pw, senders=(): _sql_user(pg, login, pw, senders), pg.stop
    slapd = request.getfixturevalue("slapd")
    section = {"source": "ldap", "auth_timeout": 3, "cache": {"enabled": False},
               "ldap": {"url": slapd.url, "timeout": 2, "mode": "compare",
                        "search_base": PEOPLE, "search_filter": "(mail={login})",
                        "domain_filter": "(mail=*@{domain})",
                        "bind_dn": READER_DN, "bind_password": READER_PW,
                        "senders_attribute": "portcullisSender"}}
    return (section, lambda login, pw, senders=(): slapd.add_user(login, pw,
                                                                  senders=list(senders) or None),
            slapd.stop)


@pytest.fixture
def gw(tmp_path, source, downstream, cert_files, password_hash):
    section, add_user, _ = source
    add_user("erin@acme.example", "erin secret", [f"*@{PARTNER}"])
    # Alice is in acme's policy file too (senders: *@sub.acme.example), with another
    # password: the database says who she is, the file widens what she may send as.
    add_user("alice@acme.example", "alice from the database")
    # Domains no policy file claims: default_policy is their customers' policy.
    add_user("frank@unclaimed.example", "frank secret")
    add_user("gina@keyed.example", "gina secret")
    # Globex is in shadow mode: its database accounts must be too.
    add_user("hank@globex.example", "hank secret")
    policies = customer_policies(password_hash)
    policies["globex"]["shadow"] = True
    policies["acme"]["quotas"] = {"recipients_per_message": 2, "messages_per_hour": 9}
    gateway = GatewayUnderTest(
        tmp_path, inbound_url=downstream.url, outbound_url=downstream.url,
        policies=policies, cert=cert_files,
        extra={"accounts": section,
               "abuse": {"domains": ["isp.example"]},
               "compromise": {"complaint_minimum": 3, "complaint_rate": 0.5},
               "default_policy": {"dkim": {"missing_key": "send-unsigned"},
                                  "quotas": {"recipients_per_message": 1,
                                             "messages_per_hour": 7},
                                  # The tests' resolver answers nothing: every message's
                                  # checks end in temperror, which this turns into a flag.
                                  "inbound": {"default": {"temperror": "quarantine"}},
                                  "domains": [LISTED]}})
    generate_selector(gateway.keys_dir, PARTNER, "test", "ed25519-sha256")
    generate_selector(gateway.keys_dir, "keyed.example", "test", "ed25519-sha256")
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


def test_an_account_no_policy_file_claims_gets_the_default_policy(gw, client_tls, downstream):
    with submit(gw, client_tls, "frank@unclaimed.example", "frank secret") as client:
        # No key for unclaimed.example: default_policy says send-unsigned, not 451.
        assert client.sendmail("frank@unclaimed.example", ["x@elsewhere.example"],
                               message("frank@unclaimed.example")) == {}
        # default_policy's quotas: one recipient per message.
        client.mail("frank@unclaimed.example")
        assert client.rcpt("a@elsewhere.example")[0] == 250
        assert client.rcpt("b@elsewhere.example")[0] == 452
    assert b"DKIM-Signature" not in downstream.messages[0].content
    with submit(gw, client_tls, "gina@keyed.example", "gina secret") as client:
        client.sendmail("gina@keyed.example", ["x@elsewhere.example"], message("gina@keyed.example"))
    # With a key in the key store, the default policy signs (sign: all granted domains).
    assert b"d=keyed.example;" in downstream.messages[1].content.replace(b"\r\n\t", b" ")


def test_check_config_says_what_the_default_policy_does(gw, capsys):
    from gateway.cli import main

    assert main(["check-config", "-c", str(gw.config_path)]) == 0
    out = capsys.readouterr().out
    assert ("accounts whose customer has no policy file: DKIM signs every granted domain; "
            "mail from a domain without a key is sent unsigned") in out
    assert f"keys in the key store for domains no policy file claims: keyed.example, {PARTNER}" in out


def test_accounts_status_of_a_database_login_shows_its_customer_and_limits(gw, capsys):
    from gateway.cli import main

    assert main(["accounts", "-c", str(gw.config_path), "status", "frank@unclaimed.example"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("frank@unclaimed.example (customer unclaimed.example)")
    # default_policy's limit, not the gateway's 200.
    assert ["messages_per_hour", "0", "7"] in [line.split() for line in out.splitlines()], out
    assert main(["accounts", "-c", str(gw.config_path), "status", "erin@acme.example"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("erin@acme.example (customer acme)")
    assert ["messages_per_hour", "0", "9"] in [line.split() for line in out.splitlines()], out


def test_complaints_about_a_shadow_customers_database_account_never_suspend_it(
        gw, client_tls, downstream, caplog):
    login = "hank@globex.example"
    with submit(gw, client_tls, login, "hank secret") as client:
        for i in range(3):
            client.sendmail(login, ["victim@mailbox.example"],
                            message(login).replace(b"body", f"offer {i}".encode()))
    for original in [m.content for m in downstream.messages]:
        with smtplib.SMTP("127.0.0.1", gw.ports["inbound"], timeout=15) as mx:
            mx.ehlo("fbl.mailbox.example")
            mx.mail("fbl@mailbox.example")
            assert mx.rcpt("abuse@globex.example")[0] == 250
            assert mx.data(arf_report(original))[0] == 250
    events = gw.run(gw.runtime.metering.store.events(login))
    assert len([e for e in events if e.kind == "complaint"]) == 3
    # Over the complaint rate: shadow mode logs the suspension it would make, nothing more.
    assert [e for e in events if e.kind == "suspended"] == []
    assert f"shadow: would suspend login={login}" in caplog.text
    with submit(gw, client_tls, login, "hank secret") as client:
        assert client.mail(login)[0] == 250


# --- the MX: domains only the database (or the gateway file) knows ----------------------

def deliver(gw, recipient: str) -> tuple[int, bytes]:
    """One message to ``recipient`` on the MX: the reply to RCPT (and DATA if accepted)."""
    with smtplib.SMTP("127.0.0.1", gw.ports["inbound"], timeout=30) as mx:
        mx.ehlo("mail.sender.example")
        mx.mail("someone@sender.example")
        code, text = mx.rcpt(recipient)
        if code != 250:
            return code, without_id(text)
        body = f"From: someone@sender.example\r\nTo: {recipient}\r\nSubject: hi\r\n\r\nhi\r\n"
        return mx.data(body.encode())[0], b""


def test_mail_for_a_domain_only_the_database_knows_is_accepted_with_the_default_inbound_policy(
        gw, downstream):
    assert deliver(gw, "frank@unclaimed.example") == (250, b"")
    assert deliver(gw, "bob@acme.example") == (250, b"")  # acme's policy file: no inbound:
    first, second = downstream.messages
    assert first.rcpt_tos == ["frank@unclaimed.example"]
    # default_policy.inbound (temperror: quarantine) applied; acme's own built-in
    # default (temperror: tag) only tags.
    assert b"X-Portcullis-Quarantine:" in first.content.split(b"\r\n\r\n")[0]
    assert b"X-Portcullis-Quarantine:" not in second.content.split(b"\r\n\r\n")[0]


def test_a_domain_listed_in_default_policy_is_hosted_whatever_the_source(gw, downstream):
    assert deliver(gw, f"new.customer@{LISTED}") == (250, b"")
    assert downstream.messages[0].rcpt_tos == [f"new.customer@{LISTED}"]
    assert b"X-Portcullis-Quarantine:" in downstream.messages[0].content


@pytest.mark.parametrize("recipient", [
    "frank@stranger.example",
    # An LDAP filter or SQL pattern hidden in the domain must not widen the look-up.
    "frank@*", "frank@*.example", "frank@unclaimed.example.stranger.example",
])
def test_a_strangers_domain_is_refused_as_relay(gw, downstream, recipient):
    code, text = deliver(gw, recipient)
    assert code in (550, 501, 553) and (code != 550 or text == b"5.7.1 Relaying denied")
    assert downstream.messages == []


def test_with_the_source_down_a_database_domain_is_deferred_and_policy_file_domains_work(
        gw, source, downstream):
    _, _, stop = source
    stop()
    assert deliver(gw, "frank@unclaimed.example") == (
        451, b"4.4.3 Cannot check whether we accept mail for this domain right now; try again later")
    # A stranger's domain is not accepted either while the source cannot say.
    assert deliver(gw, "x@stranger.example")[0] == 451
    assert deliver(gw, "bob@acme.example") == (250, b"")
    assert deliver(gw, f"someone@{LISTED}") == (250, b"")
    assert [m.rcpt_tos for m in downstream.messages] == [["bob@acme.example"], [f"someone@{LISTED}"]]


def test_check_config_says_what_the_mx_does_for_unclaimed_domains(gw, capsys):
    from gateway.cli import main

    assert main(["check-config", "-c", str(gw.config_path)]) == 0
    out = capsys.readouterr().out
    lookup = ("accounts.sql.domain_query" if "domain_query" in gw.config_path.read_text()
              else "accounts.ldap.domain_filter")
    assert (f"inbound: the MX also accepts mail for domains no policy file claims that are "
            f"listed under default_policy.domains ({LISTED}) or found by {lookup} (if it "
            "cannot answer: deferred, 451 4.4.3); their inbound policy: dmarc_reject=reject, "
            "dmarc_quarantine=tag, spf_fail=tag, temperror=quarantine") in out
