"""Two gateway processes (real `portcullis serve`, as on two hosts) share one real
Redis: a refusal on one is explained by `portcullis explain` run with the other's
gateway file, because the journal lives in the shared store."""

from __future__ import annotations

import subprocess

import yaml

from gateway.dkim.keystore import generate_selector
from tests.conftest import customer_policies
from tests.support import redis_server as _redis
from tests.support.submission import auth_plain, connect
from tests.test_cluster_quotas import start_gateway, wait_ready
from tests.test_wire_explain import explain, id_of

redis_server = _redis.redis_server


def test_a_refusal_on_one_gateway_is_explained_with_the_other_gateways_config(
        tmp_path, downstream, cert_files, password_hash, client_tls, redis_server):
    redis_server.flush()
    (tmp_path / "policy").mkdir()
    for name, policy in customer_policies(password_hash).items():
        (tmp_path / "policy" / f"{name}.yaml").write_text(yaml.safe_dump(policy))
        for domain in policy["domains"]:  # as in production: both gateways share the keys
            generate_selector(tmp_path / "keys", domain, "test", "ed25519-sha256")
    procs = [start_gateway(tmp_path, n, downstream.url, redis_server.url, cert_files) for n in ("a", "b")]
    try:
        for proc, gw in procs:
            wait_ready(gw, proc, client_tls)
        with connect(procs[0][1], client_tls) as c:  # on gateway a
            assert auth_plain(c, "alice@acme.example")[0] == 235
            code, text = c.mail("carol@globex.example")
        assert code == 553
        txid = id_of(text)
        done = explain(tmp_path / "b.yaml", txid)  # asked of gateway b's store
    finally:
        for proc, _ in procs:
            proc.terminate()
        for proc, _ in procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
    assert done.returncode == 0, done.stderr
    assert f"transaction {txid} on submissions" in done.stdout
    assert "refused at MAIL by rule senders.envelope" in done.stdout
    assert "facts: sender=carol@globex.example" in done.stdout
