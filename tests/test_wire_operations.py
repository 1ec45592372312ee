"""The operations port of a running gateway: metrics move with traffic, readiness
follows the downstream, autoconfig serves the submission settings, logs are JSON
on request."""

import json
import smtplib
import subprocess
import sys
import time
import urllib.error
import urllib.request
import xml.etree.ElementTree as ET

import pytest
import yaml

from tests.conftest import PASSWORD, customer_policies
from tests.support.gateway import GatewayUnderTest
from tests.support.ports import free_port
from tests.support.recorder import RecordingMTA


@pytest.fixture
def ops(tmp_path, cert_files, password_hash):
    mta = RecordingMTA().start()
    port = free_port()
    gw = GatewayUnderTest(tmp_path, inbound_url=mta.url, outbound_url=mta.url,
                          policies=customer_policies(password_hash), cert=cert_files,
                          extra={"http": {"port": port}}).start()
    try:
        yield gw, mta, f"http://127.0.0.1:{port}"
    finally:
        gw.stop()
        mta.stop()


def get(url):
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def metric(text, name, **labels):
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith(f"{name}{{{want}}}") or (not labels and line.startswith(name + " ")):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_metrics_change_as_mail_flows(ops, client_tls):
    gw, mta, base = ops
    _, before = get(base + "/metrics")
    with smtplib.SMTP("127.0.0.1", gw.ports["inbound"], timeout=10) as c:
        c.sendmail("a@other.example", ["bob@acme.example"], b"From: a@other.example\r\n\r\nhi\r\n")
        c.ehlo("x")
        c.mail("a@other.example")
        c.rcpt("victim@third.example")  # relay denied: a 5xx
    with smtplib.SMTP_SSL("127.0.0.1", gw.ports["submissions"], timeout=10, context=client_tls) as c:
        c.login("alice@acme.example", PASSWORD)
        c.sendmail("alice@acme.example", ["x@elsewhere.example"],
                   b"From: alice@acme.example\r\n\r\nsigned\r\n")
    _, after = get(base + "/metrics")
    for name, labels, delta in [
        ("portcullis_messages_total", {"listener": "inbound", "outcome": "accepted"}, 1),
        ("portcullis_messages_total", {"listener": "submissions", "outcome": "accepted"}, 1),
        ("portcullis_smtp_replies_total", {"listener": "inbound", "class": "5xx"}, 1),
        ("portcullis_auth_attempts_total", {"listener": "submissions", "result": "success"}, 1),
        ("portcullis_dkim_signatures_total", {"algorithm": "ed25519-sha256"}, 1),
        ("portcullis_connections_total", {"listener": "inbound", "outcome": "accepted"}, 1),
    ]:
        assert metric(after, name, **labels) - metric(before, name, **labels) >= delta, (name, labels)
    assert metric(after, "portcullis_downstream_seconds_count", downstream="inbound") >= 1
    assert metric(after, "portcullis_inbound_auth_results_total", method="spf",
                  result="temperror") >= 1


def test_readiness_follows_the_downstream(ops):
    gw, mta, base = ops
    assert get(base + "/healthz")[0] == 200
    assert get(base + "/readyz")[0] == 200
    mta.stop()
    status, body = get(base + "/readyz")
    assert status == 503 and "inbound" in body
    assert get(base + "/healthz")[0] == 200  # the process is still up
    back = RecordingMTA(port=mta.port).start()  # the downstream comes back
    try:
        deadline = time.monotonic() + 10
        while get(base + "/readyz")[0] != 200 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert get(base + "/readyz")[0] == 200
    finally:
        back.stop()


def test_thunderbird_autoconfig_advertises_only_authenticated_submission(ops):
    gw, _, base = ops
    status, body = get(base + "/mail/config-v1.1.xml?emailaddress=alice@acme.example")
    assert status == 200
    servers = ET.fromstring(body).findall(".//outgoingServer")
    ports = [(s.findtext("port"), s.findtext("socketType")) for s in servers]
    assert ports[0] == (str(gw.ports["submissions"]), "SSL")  # 465-style first (RFC 8314)
    assert (str(gw.ports["submission"]), "STARTTLS") in ports
    assert str(gw.ports["inbound"]) not in {p for p, _ in ports}
    assert get(base + "/mail/config-v1.1.xml?emailaddress=x@not-ours.example")[0] == 404


def test_json_log_line_per_transaction(tmp_path, downstream, password_hash):
    policy = tmp_path / "policy"
    policy.mkdir()
    (policy / "acme.yaml").write_text(yaml.safe_dump(customer_policies(password_hash)["acme"]))
    port = free_port()
    (tmp_path / "g.yaml").write_text(yaml.safe_dump({
        "hostname": "mx.test", "listeners": {"inbound": {"port": port}},
        "downstream": {"inbound": downstream.url}, "policy_dir": "policy",
        "inbound_checks": False}))
    proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "serve", "-c",
                             str(tmp_path / "g.yaml"), "--log-format", "json"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                c = smtplib.SMTP("127.0.0.1", port, timeout=5)
                break
            except OSError:
                assert time.monotonic() < deadline
                time.sleep(0.1)
        with c:
            c.sendmail("a@other.example", ["bob@acme.example"], b"From: a@other.example\r\n\r\nx\r\n")
    finally:
        proc.terminate()
        err = proc.communicate(timeout=20)[1]
    # Every line is one JSON object (docs/operations.md, "Log lines").
    lines = [json.loads(line) for line in err.splitlines()]
    tx = [entry for entry in lines if entry["logger"] == "portcullis.transaction"]
    assert len(tx) == 1
    assert tx[0]["client"] == "127.0.0.1" and tx[0]["from"] == "a@other.example"
    assert tx[0]["rcpts"] == 1 and tx[0]["result"] == "250 2.0.0"
    assert "queued" in tx[0]["reply"]
    assert tx[0]["txid"].split(".")[0] in tx[0]["message"]
    [conn] = [entry for entry in lines if entry["logger"] == "portcullis.connection"]
    assert conn["cid"] == tx[0]["txid"].split(".")[0]
    assert (conn["ended"], conn["transactions"]) == ("quit", 1)
