"""Every metric docs/operations.md documents exists on /metrics and moves (issue 17).

The list comes from the table in docs/operations.md, so the documentation and the
code cannot drift; /metrics is read with prometheus_client's own parser from a
real `portcullis serve`, after traffic that should move each metric.
"""

from __future__ import annotations

import contextlib
import re
import signal
import smtplib
import socket
import ssl
import time
import urllib.request
from pathlib import Path

import pytest
from cryptography import x509
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import customer_policies
from tests.support.arf import arf_report
from tests.support.live_gateway import ServeProcess
from tests.support.ports import free_port
from tests.support.recorder import RecordingMTA
from tests.support.redis_server import RedisServer
from tests.support.submission import auth_plain, message, send

DOCS = Path(__file__).resolve().parent.parent / "docs" / "operations.md"
ROW = re.compile(r"^\| `(portcullis_[a-z_]+)` \| (counter|gauge|histogram) \|", re.M)


def documented_metrics() -> dict[str, str]:
    """name → type, from the Metrics table of docs/operations.md."""
    found = dict(ROW.findall(DOCS.read_text()))
    assert len(found) >= 12, found  # the table is where this test thinks it is
    return found


def scrape(port: int) -> dict[str, float]:
    """Every sample on /metrics: 'name{label="v",...}' → value, and per family
    the sum of its samples under the family's documented name."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        # The parser names a counter's family without _total; the docs name the series.
        name = family.name + "_total" if family.type == "counter" else family.name
        out.setdefault(name, 0.0)
        for sample in family.samples:
            if sample.name.endswith(("_created", "_bucket")):
                continue
            if family.type == "histogram" and not sample.name.endswith("_count"):
                continue
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            out[f"{sample.name}{{{labels}}}"] = sample.value
            out[name] += sample.value
    return out


@pytest.fixture(scope="module")
def mta():
    m = RecordingMTA().start()
    yield m
    m.stop()


@pytest.fixture(scope="module")
def gw(tmp_path_factory, mta, cert_files, password_hash):
    policies = customer_policies(password_hash)
    # globex's mail is held when rspamd cannot be reached; acme's passes unscanned.
    policies["globex"]["content"] = {"outbound": {"unreachable": "hold"}}
    policies["acme"]["content"] = {"outbound": {"unreachable": "pass"}}
    gw = ServeProcess(tmp_path_factory.mktemp("metrics"), mta, cert_files, password_hash,
                      policies=policies, extra={
                          "inbound_checks": True,
                          "scanner": {"url": f"http://127.0.0.1:{free_port()}", "timeout": 1},
                          "quotas": {"recipients_per_message": 2},
                          "lockout": {"login_failures": 1},
                          "screening": {"dynamic_ranges": ["127.0.0.2/32"]},
                          "compromise": {"complaint_minimum": 1, "complaint_rate": 0.001},
                      })
    yield gw
    gw.stop()


def submit(gw, client_tls, rcpts, login="alice@acme.example", port="submissions"):
    with smtplib.SMTP_SSL("127.0.0.1", gw.ports[port], timeout=15, context=client_tls) as c:
        c.ehlo("client.example")
        code, _ = auth_plain(c, login)
        if code != 235:
            return {"auth": code}
        return {"auth": code, **send(c, list(rcpts), sender=login, body=message(login))}


def mx(gw, rcpt, body=b"From: a@sender.example\r\nSubject: x\r\n\r\nhi\r\n", source=None):
    with smtplib.SMTP("127.0.0.1", gw.ports["inbound"], timeout=15,
                      source_address=(source, 0) if source else None) as c:
        c.ehlo("sender.example")
        c.mail("a@sender.example")
        code = c.rcpt(rcpt)[0]
        return code if code != 250 else c.data(body)[0]


def failed_starttls(gw) -> None:
    """EHLO, STARTTLS, then bytes that are no TLS ClientHello."""
    with socket.create_connection(("127.0.0.1", gw.ports["submission"]), timeout=10) as s:
        f = s.makefile("rb")
        f.readline()
        s.sendall(b"EHLO x\r\n")
        while not f.readline().startswith(b"250 "):
            pass
        s.sendall(b"STARTTLS\r\n")
        assert f.readline().startswith(b"220")
        s.sendall(b"this is not a TLS handshake\r\n" * 20)
        s.settimeout(10)
        while s.recv(4096):
            pass


def eventually(check, timeout=20.0):
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline
        time.sleep(0.2)


def test_every_documented_metric_is_exported_and_moves(gw, mta, client_tls, cert_files):
    documented = documented_metrics()
    before = scrape(gw.ports["http"])
    missing = sorted(n for n in documented if n not in before)
    assert not missing, f"documented in docs/operations.md but not on /metrics: {missing}"

    # Traffic that should move every one of them.
    assert submit(gw, client_tls, ["a@x.example"])["data"][0] == 250  # signed, scanned (pass)
    assert submit(gw, client_tls, ["a@x.example", "b@x.example", "c@x.example"])["rcpt"][2][0] == 452
    assert submit(gw, client_tls, ["a@x.example"], login="carol@globex.example")["data"][0] == 250  # held
    with smtplib.SMTP_SSL("127.0.0.1", gw.ports["submissions"], timeout=15,
                          context=client_tls) as c:
        c.ehlo("x")
        assert auth_plain(c, "bob@acme.example", "wrong")[0] == 535
        assert auth_plain(c, "bob@acme.example")[0] == 454  # locked out
    with smtplib.SMTP("127.0.0.1", gw.ports["inbound"], timeout=15) as c:
        c.ehlo("x")
        assert scrape(gw.ports["http"])['portcullis_connections_open{listener="inbound"}'] >= 1
    assert mx(gw, "x@acme.example") == 250  # checked (SPF/DKIM/DMARC temperror), forwarded
    mta.handler.behaviour.data_reply = "451 4.3.0 downstream busy"
    try:
        assert mx(gw, "x@acme.example") == 451  # a downstream error
    finally:
        mta.handler.behaviour.data_reply = None
    assert mx(gw, "x@acme.example", source="127.0.0.2") == 550  # a dynamic range
    failed_starttls(gw)
    # A complaint: our own message, reported back to abuse@ through the MX.
    assert submit(gw, client_tls, ["someone@x.example"])["data"][0] == 250
    sent = mta.handler.messages[-1].content
    assert mx(gw, "abuse@acme.example", body=arf_report(sent)) == 250
    gw.proc.send_signal(signal.SIGHUP)

    moved_by_traffic = {
        "portcullis_connections_total", "portcullis_messages_total", "portcullis_smtp_replies_total",
        "portcullis_auth_attempts_total", "portcullis_quota_refusals_total",
        "portcullis_screening_total", "portcullis_dkim_signatures_total",
        "portcullis_inbound_auth_results_total", "portcullis_downstream_seconds",
        "portcullis_downstream_errors_total", "portcullis_auth_lockouts_total",
        "portcullis_complaints_total", "portcullis_scanner_results_total",
        "portcullis_scanner_errors_total", "portcullis_held_total", "portcullis_reloads_total",
    }
    # Moved by a set-up of their own (a real DNS server, a sealing key), where their
    # wire tests scrape them: named here so that a test must exist for each.
    moved_elsewhere = {
        "portcullis_dkim_key_checks_total": "test_dkim_publication.py",
        "portcullis_dkim_selectors_held_back": "test_dkim_publication.py",
        "portcullis_arc_seals_total": "test_wire_arc_sealing.py",
        "portcullis_log_lines_dropped_total": "test_log_output.py",
    }
    for name, test in moved_elsewhere.items():
        assert f'"{name}"' in (Path(__file__).parent / test).read_text(), (name, test)
    # Gauges: a connection was seen open above; the rest have values of their own.
    assert set(documented) - moved_by_traffic - set(moved_elsewhere) == {
        "portcullis_connections_open", "portcullis_suspended_accounts", "portcullis_store_up",
        "portcullis_tls_certificate_expiry_timestamp_seconds"}, "a new metric needs a check here"

    def all_moved() -> bool:
        after = scrape(gw.ports["http"])
        return all(after[name] > before[name] for name in moved_by_traffic)

    try:
        eventually(all_moved)
    finally:
        after = scrape(gw.ports["http"])
        still = sorted(n for n in moved_by_traffic if after[n] <= before[n])
        assert not still, f"did not move: {still}"
    assert after['portcullis_connections_total{listener="submission",outcome="tls_failed"}'] == 1
    # The complaint suspended alice; the gauge follows without anyone asking /readyz.
    eventually(lambda: scrape(gw.ports["http"])["portcullis_suspended_accounts"] >= 1, timeout=25)
    assert after["portcullis_store_up"] == 1
    cert = x509.load_pem_x509_certificate(Path(cert_files[0]).read_bytes())
    assert after['portcullis_tls_certificate_expiry_timestamp_seconds{listener="submissions"}'] \
        == cert.not_valid_after_utc.timestamp()


def test_a_failed_handshake_on_465_counts_as_tls_failed(gw):
    """asyncio never hands a connection whose handshake failed to the protocol: it is
    counted once the handshake deadline (30 s) has passed; a good one never is."""
    key = 'portcullis_connections_total{listener="submissions",outcome="tls_failed"}'
    before = scrape(gw.ports["http"]).get(key, 0.0)
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    with smtplib.SMTP_SSL("127.0.0.1", gw.ports["submissions"], timeout=10, context=ctx) as c:
        c.ehlo("x")  # first: its deadline passes before the bad one's
    with socket.create_connection(("127.0.0.1", gw.ports["submissions"]), timeout=10) as s:
        s.sendall(b"EHLO not-tls\r\n" * 20)
        with contextlib.suppress(OSError):  # the gateway hangs up, or resets
            while s.recv(4096):
                pass
    eventually(lambda: scrape(gw.ports["http"]).get(key, 0.0) >= before + 1, timeout=45)
    assert scrape(gw.ports["http"])[key] == before + 1


def test_store_up_follows_the_redis_store_without_readyz(tmp_path, cert_files, password_hash):
    """The gauges are read from the store every 10 s, by the gateway itself."""
    redis = RedisServer().start()
    mta = RecordingMTA().start()
    gw = None
    try:
        gw = ServeProcess(tmp_path, mta, cert_files, password_hash,
                          extra={"store": {"backend": "redis", "url": redis.url}})
        eventually(lambda: scrape(gw.ports["http"])["portcullis_store_up"] == 1, timeout=25)
        redis.stop()
        eventually(lambda: scrape(gw.ports["http"])["portcullis_store_up"] == 0, timeout=30)
    finally:
        if gw is not None:
            gw.stop()
        redis.stop()
        mta.stop()
