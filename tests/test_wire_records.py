"""Every refusal on record: each transaction and each connection ends in exactly one
log line, whatever the stage it ended at, naming the rule that decided a refusal and
its facts; every 4xx/5xx we write carries the id of that line (issue 14)."""

from __future__ import annotations

import copy
import io
import json
import logging
import re
import smtplib
import socket
import time

import pytest

from gateway.serve import JsonFormatter
from gateway.smtp.protocol import new_connection_id, with_id
from tests.conftest import customer_policies
from tests.support.gateway import GatewayUnderTest
from tests.support.submission import Clock, auth_plain, connect, logged_in

ID = re.compile(rb"\(id ([A-Z2-7]{12}(?:\.\d+)?)\)$")
TX = "portcullis.transaction"
CONN = "portcullis.connection"
# docs/operations.md, "Log lines": the fields every line of each kind has.
TX_FIELDS = {"txid", "listener", "client", "login", "from", "stage", "rcpts", "refused_rcpts",
             "rcpt_rules", "size", "checks", "result", "rule", "ended", "ms", "reply"}
CONN_FIELDS = {"cid", "listener", "client", "tls", "login", "ended", "transactions", "errors",
               "tempfails", "auth_failures", "auth_rule", "ms"}


@pytest.fixture
def records(caplog):
    caplog.set_level(logging.INFO, logger="portcullis")
    return caplog


def wait_for(caplog, logger, timeout=5.0, **fields):
    """The lines of ``logger`` whose fields include ``fields``, once at least one is
    there: the gateway writes a line just after its reply, in its own thread."""
    deadline = time.monotonic() + timeout
    while True:
        found = [r.fields for r in list(caplog.records) if r.name == logger
                 and all(r.fields.get(k) == v for k, v in fields.items())]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.02)


def id_in(text: bytes) -> str:
    m = ID.search(text)
    assert m, f"no id in {text!r}"
    return m.group(1).decode()


@pytest.fixture
def gw(tmp_path, downstream, cert_files, password_hash):
    policies = copy.deepcopy(customer_policies(password_hash))
    policies["acme"]["accounts"][0]["quotas"] = {"recipients_per_hour": 2}
    # No DNS answers here (tests/support/gateway.py): every inbound check is a temperror,
    # which globex's policy answers with 451.
    policies["globex"]["inbound"] = {"default": {"temperror": "tempfail"}}
    g = GatewayUnderTest(tmp_path, inbound_url=downstream.url, outbound_url=downstream.url,
                         policies=policies, cert=cert_files, clock=Clock(),
                         extra={"limits": {"max_errors": 3}}).start()
    try:
        yield g
    finally:
        g.stop()


def mx(gw) -> smtplib.SMTP:
    c = smtplib.SMTP("127.0.0.1", gw.ports["inbound"], timeout=10)
    c.ehlo("sender.example")
    return c


# --- MAIL --------------------------------------------------------------------------
def test_a_refused_mail_is_a_transaction_ended_at_mail_naming_the_senders_rule(gw, client_tls, records):
    with logged_in(gw, client_tls) as c:
        code, text = c.mail("carol@globex.example")
    assert code == 553
    txid = id_in(text)
    [line] = wait_for(records, TX, txid=txid)
    assert line["stage"] == "mail" and line["result"] == "553 5.7.1"
    assert line["rule"] == "senders.envelope" and line["sender"] == "carol@globex.example"
    assert line["login"] == "alice@acme.example" and line["ended"] == "reply"


def test_a_mail_the_protocol_refuses_is_on_record_too(gw, records):
    with mx(gw) as c:
        code, text = c.docmd("MAIL", "FROM:not-an-address")
    assert code == 553
    [line] = wait_for(records, TX, txid=id_in(text))
    assert line["stage"] == "mail" and line["rule"] == "smtp.protocol"


# --- RCPT --------------------------------------------------------------------------
def test_relay_refusals_at_rcpt_are_counted_in_the_transaction_that_goes_on(gw, downstream, records):
    with mx(gw) as c:
        c.mail("someone@sender.example")
        code, text = c.rcpt("victim@third-party.example")
        assert code == 550
        txid = id_in(text)
        assert c.rcpt("bob@acme.example")[0] == 250
        code, _ = c.data(b"From: someone@sender.example\r\nSubject: hi\r\n\r\nhello\r\n")
        assert code == 250
    [line] = wait_for(records, TX, txid=txid)
    assert line["stage"] == "data" and line["result"] == "250 2.0.0"
    assert (line["rcpts"], line["refused_rcpts"], line["rcpt_rules"]) == (1, 1, "relay")
    assert line["rule"] == ""  # accepted: no rule decided its end


def test_a_quota_refusal_at_rcpt_names_the_limit(gw, client_tls, records):
    with logged_in(gw, client_tls) as c:
        c.mail("alice@acme.example")
        assert c.rcpt("a@elsewhere.example")[0] == 250
        assert c.rcpt("b@elsewhere.example")[0] == 250
        code, text = c.rcpt("c@elsewhere.example")
        assert code == 451
        txid = id_in(text)
        c.rset()
        [line] = wait_for(records, TX, txid=txid)
    assert line["ended"] == "reset" and line["stage"] == "rcpt"
    assert (line["rcpts"], line["refused_rcpts"]) == (2, 1)
    assert line["rcpt_rules"] == "quota.recipients_per_hour"


def test_a_recipient_the_downstream_accepts_hears_our_2_1_5(gw, downstream):
    # RFC 3463: X.1.5 is "destination address valid"; a downstream's bare "250 OK"
    # reaches us as 2.0.0, which is not the client's answer to RCPT.
    downstream.behaviour.rcpt_reply = "250 OK"
    with mx(gw) as c:
        c.mail("someone@sender.example")
        code, text = c.rcpt("bob@acme.example")
    assert code == 250 and text.startswith(b"2.1.5")


def test_a_downstream_refusal_is_passed_on_in_its_own_words_and_recorded(gw, downstream, records):
    downstream.behaviour.refuse_rcpt = {"gone@acme.example": "550 5.1.1 No such user here"}
    with mx(gw) as c:
        c.mail("someone@sender.example")
        code, text = c.rcpt("gone@acme.example")
        assert (code, text) == (550, b"5.1.1 No such user here")
        c.rset()
    [line] = wait_for(records, TX, ended="reset", rcpt_rules="downstream")
    assert line["refused_rcpts"] == 1


# --- DATA --------------------------------------------------------------------------
def test_a_foreign_from_header_is_refused_at_data_naming_the_field(gw, client_tls, records):
    with logged_in(gw, client_tls) as c:
        with pytest.raises(smtplib.SMTPDataError) as exc:
            c.sendmail("alice@acme.example", ["x@elsewhere.example"],
                       b"From: ceo@globex.example\r\nSubject: pay\r\n\r\nnow\r\n")
    txid = id_in(exc.value.smtp_error)
    [line] = wait_for(records, TX, txid=txid)
    assert line["stage"] == "data" and line["result"] == "550 5.7.1"
    assert (line["rule"], line["field"], line["address"]) == (
        "senders.header", "From", "ceo@globex.example")


@pytest.mark.parametrize("field", ["Resent-From", "Resent-Sender"])
def test_someone_elses_resent_field_is_refused_like_from(gw, client_tls, downstream, records, field):
    # RFC 5322 §3.6.6: the resender names itself in Resent-From:/Resent-Sender:.
    message = (f"{field}: ceo@globex.example\r\nFrom: alice@acme.example\r\n"
               "Subject: fwd\r\n\r\nhi\r\n").encode()
    with logged_in(gw, client_tls) as c:
        with pytest.raises(smtplib.SMTPDataError) as exc:
            c.sendmail("alice@acme.example", ["x@elsewhere.example"], message)
    assert exc.value.smtp_code == 550 and exc.value.smtp_error.startswith(b"5.7.1")
    assert f"{field}: address <ceo@globex.example>".encode() in exc.value.smtp_error
    assert downstream.messages == []
    [line] = wait_for(records, TX, txid=id_in(exc.value.smtp_error))
    assert line["rule"] == "senders.header" and line["field"] == field


def test_the_accounts_own_resent_from_is_accepted(gw, client_tls, downstream):
    message = (b"Resent-From: alice@acme.example\r\nResent-Sender: info@acme.example\r\n"
               b"From: alice@acme.example\r\nSubject: fwd\r\n\r\nhi\r\n")
    with logged_in(gw, client_tls) as c:
        assert c.sendmail("alice@acme.example", ["x@elsewhere.example"], message) == {}
    assert len(downstream.messages) == 1


def test_an_inbound_policy_refusal_names_the_check_and_the_action(gw, records):
    with mx(gw) as c:
        c.mail("someone@sender.example")
        assert c.rcpt("carol@globex.example")[0] == 250
        code, text = c.data(b"From: someone@sender.example\r\nSubject: hi\r\n\r\nhello\r\n")
    assert code == 451
    [line] = wait_for(records, TX, txid=id_in(text))
    assert line["rule"] == "dns.tempfail" and line["spf"] == "temperror"
    assert "spf=temperror" in line["checks"]


def test_a_message_refused_while_read_names_the_reason(gw, records):
    with mx(gw) as c:
        c.mail("someone@sender.example")
        c.rcpt("bob@acme.example")
        code, text = c.data(b"Subject: hi\r\n\r\nbare\nnewline\r\n")
    assert code == 550
    [line] = wait_for(records, TX, txid=id_in(text))
    assert line["rule"] == "data.bare_newline" and line["stage"] == "data"


def test_a_nul_octet_refused_while_reading_is_recorded_as_message_nul(gw, records):
    with mx(gw) as c:
        c.mail("someone@sender.example")
        c.rcpt("bob@acme.example")
        code, text = c.data(b"Subject: hi\r\n\r\nnul \x00 here\r\n")
    assert (code, text[:5]) == (554, b"5.6.0")
    [line] = wait_for(records, TX, txid=id_in(text))
    assert line["rule"] == "message.nul" and line["stage"] == "data"


# --- the connection ----------------------------------------------------------------
def test_quit_ends_the_connection_line_with_its_counts(gw, client_tls, records):
    c = connect(gw, client_tls)
    assert auth_plain(c, "alice@acme.example", "wrong")[0] == 535
    assert auth_plain(c, "alice@acme.example")[0] == 235
    c.sendmail("alice@acme.example", ["x@elsewhere.example"],
               b"From: alice@acme.example\r\nSubject: hi\r\n\r\nhello\r\n")
    c.quit()
    [line] = wait_for(records, CONN, ended="quit")
    assert line["listener"] == "submissions" and line["login"] == "alice@acme.example"
    assert line["transactions"] == 1 and line["auth_failures"] == 1
    assert line["auth_rule"] == "auth.credentials" and line["tls"].startswith("TLS")


def test_a_client_gone_mid_transaction_leaves_both_lines(gw, records):
    s = socket.create_connection(("127.0.0.1", gw.ports["inbound"]), timeout=10)
    f = s.makefile("rb")
    f.readline()
    s.sendall(b"EHLO sender.example\r\n")
    while f.readline()[3:4] == b"-":
        pass
    s.sendall(b"MAIL FROM:<someone@sender.example>\r\n")
    assert f.readline().startswith(b"250")
    s.sendall(b"RCPT TO:<bob@acme.example>\r\n")
    assert f.readline().startswith(b"250")
    f.close()  # the socket closes with its last file object
    s.close()
    [conn] = wait_for(records, CONN, ended="disconnect")
    [tx] = wait_for(records, TX, txid=f"{conn['cid']}.1")
    assert (tx["stage"], tx["ended"], tx["result"], tx["rcpts"]) == ("rcpt", "disconnect", "-", 1)


def test_too_many_errors_ends_the_connection_with_an_id_in_the_421(gw, records):
    with mx(gw) as c:
        for _ in range(2):
            code, text = c.docmd("RCPT", "TO:<bob@acme.example>")  # no MAIL: 503
            assert code == 503
        cid = id_in(text)
        code, text = c.docmd("RCPT", "TO:<bob@acme.example>")
        assert code == 503
        # The third error's reply and the 421 leave together.
        assert c.getreply()[0] == 421
    [line] = wait_for(records, CONN, cid=cid)
    assert line["ended"] == "too_many_errors" and line["errors"] == 3


def test_every_line_is_one_json_object_with_the_documented_keys(gw, client_tls):
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter())
    loggers = [logging.getLogger(TX), logging.getLogger(CONN)]
    for logger in loggers:
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    try:
        with logged_in(gw, client_tls) as c:
            c.mail("carol@globex.example")
            c.sendmail("alice@acme.example", ["x@elsewhere.example"],
                       b"From: alice@acme.example\r\nSubject: hi\r\n\r\nhello\r\n")
        deadline = time.monotonic() + 5
        while '"cid"' not in out.getvalue() and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        for logger in loggers:
            logger.removeHandler(handler)
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    txs = [d for d in lines if d["logger"] == TX]
    conns = [d for d in lines if d["logger"] == CONN]
    assert len(txs) == 2 and len(conns) == 1
    for d in txs:
        assert TX_FIELDS <= d.keys()
    assert CONN_FIELDS <= conns[0].keys()
    assert txs[0]["rule"] == "senders.envelope" and txs[1]["result"] == "250 2.0.0"
    assert conns[0]["transactions"] == 2


def test_every_transaction_has_exactly_one_line(gw, client_tls, records):
    with logged_in(gw, client_tls) as c:
        c.mail("carol@globex.example")             # 1: refused at MAIL
        c.mail("alice@acme.example")               # 2: reset by RSET
        c.rcpt("x@elsewhere.example")
        c.rset()
        c.sendmail("alice@acme.example", ["y@elsewhere.example"],  # 3: delivered
                   b"From: alice@acme.example\r\nSubject: hi\r\n\r\nhello\r\n")
        c.mail("alice@acme.example")               # 4: cut by QUIT
        c.quit()
    [conn] = wait_for(records, CONN, ended="quit")
    lines = wait_for(records, TX)
    txids = sorted(line["txid"] for line in lines if line["txid"].startswith(conn["cid"]))
    assert txids == [f"{conn['cid']}.{n}" for n in (1, 2, 3, 4)]
    assert conn["transactions"] == 4


def test_the_connection_line_knows_tls_begun_by_starttls(gw, client_tls, records):
    c = smtplib.SMTP("127.0.0.1", gw.ports["submission"], timeout=10)
    c.ehlo("client.example")
    c.starttls(context=client_tls)
    c.ehlo("client.example")
    c.quit()
    [line] = wait_for(records, CONN, listener="submission", ended="quit")
    assert line["tls"].startswith("TLSv1.")


@pytest.mark.parametrize("status", [
    "550 5.7.1 short",
    "550 5.7.1 " + "x" * 600,                       # the text gives way, never the id
    "451-4.7.1 first line\r\n451 4.7.1 " + "y" * 600,  # the id goes on the last line
])
def test_an_id_never_takes_a_reply_line_past_rfc_5321s_512_octets(status):
    marked = with_id(status, "K3M2Q7ZP4XAB.12")
    assert marked.endswith(" (id K3M2Q7ZP4XAB.12)")
    assert all(len(line) + 2 <= 512 for line in marked.split("\r\n"))
    assert marked.split("\r\n")[0][:9] == status[:9]


def test_connection_ids_drawn_in_batches_stay_twelve_base32_characters_and_unique():
    ids = [new_connection_id() for _ in range(3 * 256 + 7)]  # across several draws
    assert all(re.fullmatch(r"[A-Z2-7]{12}", i) for i in ids)
    assert len(set(ids)) == len(ids)


def test_a_forked_worker_never_hands_out_an_id_its_parent_drew():
    import os

    new_connection_id()  # the parent holds a drawn batch
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the worker: its first ids, then gone
        os.write(write, " ".join(new_connection_id() for _ in range(5)).encode())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    with os.fdopen(read) as pipe:
        child = set(pipe.read().split())
    parent = {new_connection_id() for _ in range(300)}  # the rest of its batch and more
    assert len(child) == 5 and not child & parent
