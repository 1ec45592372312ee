"""SIGHUP, section by section (issue 17): every section of the gateway file either
applies on reload, with what it configures rebuilt, or the reload logs that its
change waits for a restart.  One real `portcullis serve` process for the module;
each test writes the base configuration plus its one change, sends SIGHUP, waits
for the reload's log line and observes the effect on the wire (or the line).
"""

from __future__ import annotations

import smtplib
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from gateway.config.model import Config
from gateway.dkim.keystore import generate_selector
from gateway.reload import APPLIED_SECTIONS, RESTART_FIELDS, RESTART_SECTIONS
from tests.support.live_gateway import ServeProcess
from tests.support.ports import free_port
from tests.support.recorder import RecordingMTA
from tests.support.submission import auth_plain, message, send

ALICE = "alice@acme.example"


def test_every_section_of_the_gateway_file_applies_or_waits_for_a_restart():
    sections = set(Config.model_fields)
    assert set(RESTART_SECTIONS) | set(APPLIED_SECTIONS) == sections
    assert not set(RESTART_SECTIONS) & set(APPLIED_SECTIONS)
    for name, fields in RESTART_FIELDS.items():
        model = Config.model_fields[name].annotation.__args__[0]  # X | None
        assert set(fields) <= set(model.model_fields), name


@pytest.fixture(scope="module")
def mta():
    m = RecordingMTA().start()
    yield m
    m.stop()


@pytest.fixture(scope="module")
def served(tmp_path_factory, mta, cert_files, password_hash):
    gw = ServeProcess(tmp_path_factory.mktemp("reload"), mta, cert_files, password_hash)
    yield gw
    gw.stop()
    assert gw.proc.returncode == 0, gw.log()


@pytest.fixture
def gw(served, mta):
    """Each test starts from the base configuration in force, the recorder emptied."""
    served.reload()
    mta.handler.messages.clear()
    return served


def submit(gw: ServeProcess, client_tls, rcpts=("someone@elsewhere.example",),
           login: str = ALICE) -> dict:
    with smtplib.SMTP_SSL("127.0.0.1", gw.ports["submissions"], timeout=15,
                          context=client_tls) as c:
        c.ehlo("client.example")
        code, _ = auth_plain(c, login)
        if code != 235:
            return {"auth": code}
        return {"auth": code, **send(c, list(rcpts), sender=login, body=message(login))}


def mx(gw: ServeProcess, rcpt: str, body: bytes | None = None) -> tuple[int, int | None]:
    """(RCPT reply, DATA reply or None) for one message to the MX."""
    with smtplib.SMTP("127.0.0.1", gw.ports["inbound"], timeout=15) as c:
        c.ehlo("sender.example")
        c.mail("someone@sender.example")
        code = c.rcpt(rcpt)[0]
        if code != 250:
            return code, None
        return code, c.data(body or b"From: someone@sender.example\r\nSubject: hi\r\n\r\nhi\r\n")[0]


def http_status(gw: ServeProcess, path: str) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{gw.ports['http']}{path}", timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code


def waits(lines: list[str], section: str) -> bool:
    return any(f"reload: {section} changed: takes effect at the next restart" in line
               for line in lines)


def applied(lines: list[str], section: str) -> bool:
    return any("reload: applied" in line and section in line.split("reload: applied", 1)[1]
               for line in lines)


# --- sections that wait for a restart: the log says so, the old value stays ---------------

def test_hostname_waits_for_a_restart(gw):
    lines = gw.reload(hostname="other.test")
    assert waits(lines, "hostname"), lines
    with smtplib.SMTP("127.0.0.1", gw.ports["inbound"], timeout=10) as c:
        assert b"mx.test" in c.ehlo("x")[1]


def test_listeners_wait_for_a_restart(gw):
    lines = gw.reload(**{"listeners.inbound.port": free_port()})
    assert waits(lines, "listeners"), lines
    assert mx(gw, "x@acme.example")[0] == 250  # the old port still serves


def test_downstream_waits_for_a_restart(gw):
    lines = gw.reload(**{"downstream.inbound.timeout": 7})
    assert waits(lines, "downstream"), lines


def test_store_waits_for_a_restart(gw):
    lines = gw.reload(store={"backend": "sqlite", "path": "elsewhere.db"})
    assert waits(lines, "store"), lines
    assert not (gw.tmp / "elsewhere.db").exists()


def test_dns_waits_for_a_restart(gw):
    lines = gw.reload(**{"dns.timeout": 2})
    assert waits(lines, "dns"), lines


def test_the_http_port_waits_for_a_restart_and_autoconfig_applies(gw):
    lines = gw.reload(**{"http.port": free_port(), "http.autoconfig": None})
    assert waits(lines, "http.port"), lines
    assert applied(lines, "http"), lines
    assert http_status(gw, "/healthz") == 200  # the old port
    assert http_status(gw, "/mail/config-v1.1.xml?emailaddress=alice@acme.example") == 404


def test_turning_the_admin_listener_on_waits_for_a_restart(gw):
    lines = gw.reload(admin={"port": free_port()})
    assert waits(lines, "admin"), lines


# --- sections that apply: the effect, on the wire --------------------------------------

def test_limits_apply_to_new_connections(gw):
    with smtplib.SMTP("127.0.0.1", gw.ports["inbound"], timeout=10) as c:
        c.ehlo("x")
        assert c.esmtp_features["size"] != "12345"
    lines = gw.reload(**{"limits.max_message_size": 12345})
    assert applied(lines, "limits"), lines
    with smtplib.SMTP("127.0.0.1", gw.ports["inbound"], timeout=10) as c:
        c.ehlo("x")
        assert c.esmtp_features["size"] == "12345"


def test_policy_dir_applies(gw):
    other = gw.tmp / "policy-2"
    other.mkdir(exist_ok=True)
    for name, p in gw.policies.items():
        (other / f"{name}.yaml").write_text(yaml.safe_dump(p))
    (other / "initech.yaml").write_text("customer: initech\ndomains: [initech.example]\n")
    generate_selector(gw.keys, "initech.example", "test", "ed25519-sha256")
    assert mx(gw, "x@initech.example")[0] == 550
    lines = gw.reload(policy_dir="policy-2")
    assert applied(lines, "policy_dir"), lines
    assert mx(gw, "x@initech.example")[0] == 250


def test_quotas_apply(gw, client_tls):
    assert [c for c, _ in submit(gw, client_tls, ["a@x.example", "b@x.example"])["rcpt"]] == [250, 250]
    gw.reload(**{"quotas.recipients_per_message": 1})
    assert [c for c, _ in submit(gw, client_tls, ["a@x.example", "b@x.example"])["rcpt"]] == [250, 452]


def test_lockout_applies(gw, client_tls):
    gw.reload(**{"lockout.login_failures": 1, "lockout.failure_delay": 0})
    with smtplib.SMTP_SSL("127.0.0.1", gw.ports["submissions"], timeout=15,
                          context=client_tls) as c:
        c.ehlo("x")
        assert auth_plain(c, "bob@acme.example", "wrong")[0] == 535
    with smtplib.SMTP_SSL("127.0.0.1", gw.ports["submissions"], timeout=15,
                          context=client_tls) as c:
        c.ehlo("x")
        assert auth_plain(c, "bob@acme.example")[0] == 454  # locked out after one


def test_compromise_applies(gw, client_tls):
    assert submit(gw, client_tls, login="carol@globex.example")["mail"][0] == 250
    gw.reload(**{"compromise.ceiling_recipients_per_hour": 1})
    submit(gw, client_tls, ["a@x.example", "b@x.example"], login="carol@globex.example")
    assert submit(gw, client_tls, login="carol@globex.example")["rcpt"][0][0] == 550  # suspended


def test_abuse_applies(gw):
    assert mx(gw, "abuse@isp.example")[0] == 550
    gw.reload(**{"abuse.domains": ["isp.example"]})
    assert mx(gw, "abuse@isp.example")[0] == 250


def test_accounts_rebuild_the_account_source(gw, client_tls):
    assert submit(gw, client_tls)["auth"] == 235
    lines = gw.reload(accounts={"source": "dovecot",
                                "dovecot": {"address": f"unix:{gw.tmp}/no-dovecot-here"}})
    assert applied(lines, "accounts"), lines
    assert submit(gw, client_tls)["auth"] == 454  # the new source, which cannot answer
    gw.reload()
    assert submit(gw, client_tls)["auth"] == 235


def test_dkim_applies(gw, mta, client_tls):
    assert submit(gw, client_tls)["data"][0] == 250
    assert b"s=test;" in mta.handler.messages[-1].content
    for domain in ("acme.example", "sub.acme.example", "globex.example"):
        generate_selector(gw.tmp / "keys-2", domain, "rotated", "ed25519-sha256")
    gw.reload(**{"dkim.keys_dir": "keys-2"})
    assert submit(gw, client_tls)["data"][0] == 250
    assert b"s=rotated;" in mta.handler.messages[-1].content


def dead_scanner(unreachable: str) -> dict:
    return {"url": f"http://127.0.0.1:{free_port()}", "timeout": 1,
            "outbound": {"unreachable": unreachable}}


def test_scanner_rebuilds_the_rspamd_client(gw, client_tls):
    assert submit(gw, client_tls)["data"][0] == 250
    lines = gw.reload(scanner=dead_scanner("tempfail"))
    assert applied(lines, "scanner"), lines
    assert submit(gw, client_tls)["data"][0] == 451
    gw.reload()
    assert submit(gw, client_tls)["data"][0] == 250


def held_files(path: Path) -> list[Path]:
    return [p for p in path.rglob("*") if p.is_file()] if path.exists() else []


def test_hold_rebuilds_the_hold_store(gw, client_tls):
    scanner = dead_scanner("hold")
    gw.reload(scanner=scanner, hold={"path": "held-1"})
    assert submit(gw, client_tls)["data"][0] == 250
    assert held_files(gw.tmp / "held-1")
    gw.reload(scanner=scanner, hold={"path": "held-2"})
    assert submit(gw, client_tls)["data"][0] == 250
    assert held_files(gw.tmp / "held-2")


def test_notify_rebuilds_the_notifier(gw, mta, client_tls):
    scanner = dead_scanner("hold")
    gw.reload(scanner=scanner)
    submit(gw, client_tls)
    time.sleep(1)
    assert not [m for m in mta.handler.messages if "abuse-desk@isp.example" in m.rcpt_tos]
    gw.reload(scanner=scanner, notify={"abuse_address": "abuse-desk@isp.example",
                                       "notify_account": False})
    submit(gw, client_tls)
    deadline = time.monotonic() + 10
    while not [m for m in mta.handler.messages if "abuse-desk@isp.example" in m.rcpt_tos]:
        assert time.monotonic() < deadline, gw.log()
        time.sleep(0.1)


def test_inbound_checks_and_authserv_id_apply(gw, mta):
    assert mx(gw, "x@acme.example")[1] == 250
    assert b"Authentication-Results:" not in mta.handler.messages[-1].content
    lines = gw.reload(inbound_checks=True, authserv_id="checks.isp.example")
    assert applied(lines, "inbound_checks") and applied(lines, "authserv_id"), lines
    assert mx(gw, "x@acme.example")[1] == 250
    assert b"Authentication-Results: checks.isp.example" in mta.handler.messages[-1].content


def test_screening_applies(gw):
    assert mx(gw, "x@acme.example")[0] == 250
    assert mx(gw, "x@acme.example")[0] == 250
    gw.reload(screening={"limits": {"connections_per_minute": 1}})
    mx(gw, "x@acme.example")
    with pytest.raises(smtplib.SMTPConnectError) as refused:
        smtplib.SMTP("127.0.0.1", gw.ports["inbound"], timeout=10)
    assert refused.value.smtp_code == 421


def test_publish_applies(gw):
    # Only `portcullis dns records` and the console read it: nothing long-lived to rebuild.
    lines = gw.reload(publish={"spf": "v=spf1 include:spf.isp.example -all"})
    assert applied(lines, "publish"), lines


def test_default_policy_applies(gw):
    # Read from the runtime in force on every transaction (accounts only an external
    # source knows; this gateway's accounts all have policy files): nothing to rebuild.
    lines = gw.reload(default_policy={"dkim": {"missing_key": "send-unsigned"}, "shadow": True})
    assert applied(lines, "default_policy"), lines


def test_arc_seal_applies(gw):
    # Read from the runtime in force by the sealing step, per message: nothing to rebuild.
    # (Its key comes from the DKIM key store, which a reload re-reads: test_dkim_applies.)
    # A sealing domain needs inbound checks and an active RSA key (refused otherwise).
    for domain in ("acme.example", "sub.acme.example", "globex.example"):
        generate_selector(gw.tmp / "keys-arc", domain, "test", "ed25519-sha256")
    generate_selector(gw.tmp / "keys-arc", "acme.example", "seal", "rsa-sha256", bits=2048)
    lines = gw.reload(arc_seal={"domain": "acme.example"}, inbound_checks=True,
                      **{"dkim.keys_dir": "keys-arc"})
    assert applied(lines, "arc_seal"), lines


def test_the_reload_section_applies(gw):
    (gw.policy / "globex.yaml").rename(gw.tmp / "globex.yaml")
    try:
        lines = gw.reload(**{"reload.max_customer_drop": 0})
        assert any("reload refused: it would drop 1 of 2 customers" in line for line in lines), lines
        assert mx(gw, "x@globex.example")[0] == 250
        lines = gw.reload()  # the default (0.5) lets one of two go
        assert any("reload: drops 1 of 2 customers" in line for line in lines), lines
        assert mx(gw, "x@globex.example")[0] == 550
    finally:
        (gw.tmp / "globex.yaml").rename(gw.policy / "globex.yaml")
