"""Authenticated submission: AUTH only over TLS, 465 works, no user enumeration."""

import base64
import re
import smtplib
import time

import pytest

from tests.conftest import PASSWORD


def starttls_client(gw, client_tls):
    c = smtplib.SMTP("127.0.0.1", gw.ports["submission"], timeout=10)
    c.ehlo("client.example")
    c.starttls(context=client_tls)
    c.ehlo("client.example")
    return c


def test_587_offers_auth_only_after_starttls(gateway, client_tls):
    with smtplib.SMTP("127.0.0.1", gateway.ports["submission"], timeout=10) as c:
        c.ehlo("client.example")
        assert c.has_extn("starttls")
        assert not c.has_extn("auth")
        # RFC 3207 §4: nothing but EHLO/STARTTLS/NOOP/QUIT before TLS.
        code, msg = c.docmd("AUTH", "PLAIN " + base64.b64encode(b"\0alice@acme.example\0x").decode())
        assert code == 530 and msg.startswith(b"5.7.0")
        code, _ = c.docmd("MAIL", "FROM:<alice@acme.example>")
        assert code == 530
        c.starttls(context=client_tls)
        c.ehlo("client.example")
        assert c.has_extn("auth")
        assert set(c.esmtp_features["auth"].split()) == {"PLAIN", "LOGIN"}


def test_465_authenticates_over_implicit_tls(gateway, client_tls, downstream):
    with smtplib.SMTP_SSL("127.0.0.1", gateway.ports["submissions"], timeout=10,
                          context=client_tls) as c:
        c.ehlo("client.example")
        assert c.has_extn("auth")
        assert c.login("alice@acme.example", PASSWORD)[0] == 235
        c.sendmail("alice@acme.example", ["dest@elsewhere.example"],
                   b"From: alice@acme.example\r\nTo: dest@elsewhere.example\r\n\r\nhi\r\n")
    received = downstream.messages[0].content
    assert b"with ESMTPSA id" in received
    assert b"(using TLSv1.3 with cipher" in received


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_both_mechanisms_work_on_587(gateway, client_tls, mechanism):
    with starttls_client(gateway, client_tls) as c:
        c.user, c.password = "bob@acme.example", PASSWORD
        auth = c.auth_plain if mechanism == "PLAIN" else c.auth_login
        code, msg = c.auth(mechanism, auth)
        assert (code, msg[:5]) == (235, b"2.7.0")


def test_login_is_case_insensitive(gateway, client_tls):
    with starttls_client(gateway, client_tls) as c:
        assert c.login("Alice@ACME.example", PASSWORD)[0] == 235


def test_wrong_password_and_unknown_login_get_the_same_answer(gateway, client_tls):
    answers = []
    for login, password in [("alice@acme.example", "wrong"), ("nobody@acme.example", "wrong"),
                            ("nobody@nowhere.example", PASSWORD)]:
        with starttls_client(gateway, client_tls) as c:
            start = time.monotonic()
            with pytest.raises(smtplib.SMTPAuthenticationError) as exc:
                c.login(login, password)
            # Each answer names its own connection (the log line's id), nothing else differs.
            answers.append((exc.value.smtp_code,
                            re.sub(rb" \(id [A-Z2-7]{12}\)$", b"", exc.value.smtp_error)))
            elapsed = time.monotonic() - start
            assert elapsed > 0.02  # an unknown login still costs a hash verification
    assert answers[0] == answers[1] == answers[2] == (535, b"5.7.8 Authentication credentials invalid")


def test_plain_with_a_foreign_authorization_identity_is_refused(gateway, client_tls):
    with starttls_client(gateway, client_tls) as c:
        blob = base64.b64encode(f"bob@acme.example\0alice@acme.example\0{PASSWORD}".encode()).decode()
        code, msg = c.docmd("AUTH", "PLAIN " + blob)
        assert (code, msg[:5]) == (535, b"5.7.8")
        blob = base64.b64encode(f"alice@acme.example\0alice@acme.example\0{PASSWORD}".encode()).decode()
        assert c.docmd("AUTH", "PLAIN " + blob)[0] == 235


def test_garbage_auth_gets_a_syntax_error_not_a_crash(gateway, client_tls):
    with starttls_client(gateway, client_tls) as c:
        code, msg = c.docmd("AUTH", "PLAIN !!!notbase64")
        assert (code, msg[:5]) == (501, b"5.5.2")
        code, msg = c.docmd("AUTH", "CRAM-MD5")
        assert (code, msg[:5]) == (504, b"5.5.4")
        # The connection still works.
        assert c.login("alice@acme.example", PASSWORD)[0] == 235


def test_auth_twice_is_a_bad_sequence(gateway, client_tls):
    with starttls_client(gateway, client_tls) as c:
        c.login("alice@acme.example", PASSWORD)
        code, msg = c.docmd("AUTH", "PLAIN " + base64.b64encode(b"\0a\0b").decode())
        assert (code, msg[:5]) == (503, b"5.5.1")


def test_password_never_reaches_the_downstream_or_the_received_header(gateway, client_tls, downstream):
    with starttls_client(gateway, client_tls) as c:
        c.login("alice@acme.example", PASSWORD)
        c.sendmail("alice@acme.example", ["x@elsewhere.example"],
                   b"From: alice@acme.example\r\n\r\nbody\r\n")
    content = downstream.messages[0].content
    assert PASSWORD.encode() not in content
    assert b"argon2" not in content
    assert b"ESMTPSA" in content
