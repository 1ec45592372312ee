"""Hot reload: a valid new policy takes effect for new transactions, an invalid one
is refused with its errors logged and the old config kept, transactions in flight
finish under the config they began with; SIGHUP does it in a real `portcullis serve`
(and its workers)."""

from __future__ import annotations

import copy
import os
import signal
import smtplib
import time

import yaml

from tests.conftest import customer_policies
from tests.support.gateway import GatewayUnderTest
from tests.support.ports import free_port
from tests.support.serve_process import eventually, inbound_rcpt, serve_workers
from tests.support.submission import auth_plain, codes, connect, logged_in, send

ALICE = "alice@acme.example"


def start_gateway(tmp_path, downstream, cert_files, policies):
    return GatewayUnderTest(tmp_path, inbound_url=downstream.url, outbound_url=downstream.url,
                            policies=policies, cert=cert_files).start()


def test_a_valid_policy_change_applies_to_the_next_transaction(tmp_path, downstream, cert_files,
                                                              password_hash, client_tls):
    policies = customer_policies(password_hash)
    gw = start_gateway(tmp_path, downstream, cert_files, policies)
    try:
        with logged_in(gw, client_tls) as c:
            assert codes(send(c, ["a@x.example", "b@x.example"])) == [250, 250]
            new = copy.deepcopy(policies)
            new["acme"]["accounts"][0]["quotas"] = {"recipients_per_message": 1}
            new["acme"]["accounts"].append({"login": "dave@acme.example", "password": password_hash})
            gw.write_policies(new)
            assert gw.reload() is True
            # The same connection, a new transaction: the new limit.
            assert codes(send(c, ["a@x.example", "b@x.example"])) == [250, 452]
        # The YAML account source sees the new directory.
        with connect(gw, client_tls) as c:
            assert auth_plain(c, "dave@acme.example")[0] == 235
    finally:
        gw.stop()


def test_a_transaction_in_flight_keeps_the_config_it_began_with(tmp_path, downstream, cert_files,
                                                               password_hash, client_tls):
    policies = customer_policies(password_hash)
    gw = start_gateway(tmp_path, downstream, cert_files, policies)
    try:
        with logged_in(gw, client_tls) as c:
            c.mail(ALICE)
            assert c.rcpt("a@x.example")[0] == 250
            new = copy.deepcopy(policies)
            new["acme"]["accounts"][0]["quotas"] = {"recipients_per_message": 1}
            gw.write_policies(new)
            assert gw.reload() is True
            assert c.rcpt("b@x.example")[0] == 250  # began before the reload
            assert c.data(b"From: alice@acme.example\r\n\r\nhi\r\n")[0] == 250
            assert codes(send(c, ["a@x.example", "b@x.example"])) == [250, 452]
    finally:
        gw.stop()


def test_an_invalid_policy_is_refused_and_the_old_config_stays(tmp_path, downstream, cert_files,
                                                               password_hash, client_tls, caplog):
    policies = customer_policies(password_hash)
    gw = start_gateway(tmp_path, downstream, cert_files, policies)
    try:
        (gw.policy_dir / "acme.yaml").write_text("customer: acme\ndomains: [acme.example]\nacounts: []\n")
        (gw.policy_dir / "broken.yaml").write_text("customer: [unclosed\n")
        with caplog.at_level("ERROR", logger="portcullis"):
            assert gw.reload() is False
        lines = [r.getMessage() for r in caplog.records if r.name == "portcullis"]
        assert any("acme.yaml: acounts: unknown key" in line for line in lines), lines
        assert any("broken.yaml" in line and "YAML syntax error" in line for line in lines), lines
        assert any("configuration in force is unchanged" in line for line in lines)
        assert all("\n" not in line for line in lines)
        # alice still exists and may still send as before.
        with logged_in(gw, client_tls) as c:
            assert send(c, ["a@x.example"])["data"][0] == 250
    finally:
        gw.stop()


def test_a_listener_change_waits_for_a_restart(tmp_path, downstream, cert_files, password_hash, caplog):
    gw = start_gateway(tmp_path, downstream, cert_files, customer_policies(password_hash))
    try:
        config = yaml.safe_load(gw.config_path.read_text())
        config["listeners"]["inbound"]["port"] = free_port()
        config["limits"]["max_recipients"] = 7
        gw.config_path.write_text(yaml.safe_dump(config))
        with caplog.at_level("WARNING", logger="portcullis"):
            assert gw.reload() is True
        assert any("listeners changed: takes effect at the next restart" in r.getMessage()
                   for r in caplog.records)
        assert gw.runtime.config.listeners.inbound.port == gw.ports["inbound"]
        assert gw.runtime.config.limits.max_recipients == 7
        with smtplib.SMTP("127.0.0.1", gw.ports["inbound"], timeout=10) as c:
            assert c.ehlo("x")[0] == 250
    finally:
        gw.stop()


# --- SIGHUP to a real process -------------------------------------------------------------
def test_sighup_reloads_every_worker_and_refuses_an_invalid_policy(tmp_path, downstream, password_hash):
    proc, port = serve_workers(tmp_path, downstream, password_hash)
    policy = tmp_path / "policy"
    try:
        assert eventually(lambda: inbound_rcpt(port, "x@acme.example") == 250, timeout=15)
        assert inbound_rcpt(port, "x@initech.example") == 550
        (policy / "initech.yaml").write_text("customer: initech\ndomains: [initech.example]\n")
        proc.send_signal(signal.SIGHUP)
        # Both workers: many connections, all see the new customer.
        assert eventually(lambda: all(inbound_rcpt(port, "x@initech.example") == 250
                                      for _ in range(12)), timeout=15)
        (policy / "initech.yaml").write_text("customer: initech\ndomains: [acme.example]\n")
        proc.send_signal(signal.SIGHUP)
        time.sleep(1.5)
        assert all(inbound_rcpt(port, "x@initech.example") == 250 for _ in range(12))
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
        log = proc.stderr.read()
        refused = [line for line in log.splitlines() if "reload refused" in line]
        assert len(refused) == 2, log  # one per worker
        errors = [line for line in log.splitlines() if " reload: " in line and "initech.yaml" in line]
        assert len(errors) == 2, log  # the clash, once per worker, one line each
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)

