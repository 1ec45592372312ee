"""Held on one gateway, released from another (issue 18): two real `portcullis
serve` processes, as on two hosts, each with its own directory (policy files,
keys, no shared hold directory), sharing a real Redis (quotas) and a real
PostgreSQL (held mail, ``hold.postgres``).  A message held by gateway A for an
over-limit account is listed and released by `portcullis held` on gateway B's
config; the release is charged to the account and journaled with who."""

from __future__ import annotations

import getpass
import subprocess
import sys

import yaml

from gateway.dkim.keystore import generate_selector
from gateway.store.held_postgres import _SCHEMA
from tests.conftest import customer_policies
from tests.support import postgres_server as _pg
from tests.support import redis_server as _redis
from tests.support.ports import free_port
from tests.support.submission import auth_plain, connect, message
from tests.test_cluster_quotas import Ports, wait_ready

redis_server = _redis.redis_server
postgres_server = _pg.postgres_server
ALICE = "alice@acme.example"


def node(tmp_path, name, downstream_url, redis_url, pg_dsn, cert_files, password_hash):
    """One gateway's own directory and config: nothing on disk shared with the other."""
    home = tmp_path / name
    (home / "policy").mkdir(parents=True)
    policies = customer_policies(password_hash)
    policies["acme"]["accounts"][0]["quotas"] = {"messages_per_hour": 1, "at_limit": "hold"}
    for cust, p in policies.items():
        (home / "policy" / f"{cust}.yaml").write_text(yaml.safe_dump(p))
        for domain in p["domains"]:
            generate_selector(home / "keys", domain, "test", "ed25519-sha256")
    port = free_port()
    path = home / "gateway.yaml"
    path.write_text(yaml.safe_dump({
        "hostname": f"{name}.gateway.test",
        "listeners": {"submissions": {"port": port, "tls": {"cert": str(cert_files[0]),
                                                            "key": str(cert_files[1])}}},
        "downstream": {"outbound": downstream_url},
        "policy_dir": "policy", "dkim": {"keys_dir": "keys", "check_published": False},
        "store": {"backend": "redis", "url": redis_url, "prefix": "heldcluster:"},
        "hold": {"postgres": pg_dsn},
        "limits": {"shutdown_grace": 2},
    }))
    return path, Ports(port)


def portcullis(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gateway.cli", *args], capture_output=True,
                          text=True, timeout=60)


def test_held_on_one_gateway_is_listed_and_released_from_the_other(
        tmp_path, downstream, cert_files, password_hash, client_tls, redis_server, postgres_server):
    redis_server.flush()
    pg = postgres_server
    # The ISP's DBA creates the table and grants the gateway's role what it needs.
    pg.sql(_SCHEMA)
    pg.sql("GRANT SELECT, INSERT, UPDATE, DELETE ON portcullis_held TO portcullis")
    pg.sql("TRUNCATE portcullis_held")
    configs = [node(tmp_path, n, downstream.url, redis_server.url, pg.dsn, cert_files, password_hash)
               for n in ("a", "b")]
    (a_cfg, a), (b_cfg, _b) = configs
    proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "serve", "-c", str(a_cfg)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_ready(a, proc, client_tls)
        with connect(a, client_tls) as c:
            assert auth_plain(c, ALICE)[0] == 235
            assert c.sendmail(ALICE, ["x@elsewhere.example"], message()) == {}
            c.mail(ALICE)
            assert c.rcpt("y@elsewhere.example")[0] == 250  # over the limit: to be held
            code, text = c.data(message())
    finally:
        proc.terminate()
        proc.wait(15)
    assert code == 250 and b"held for review" in text, proc.stderr.read()[-3000:]
    assert [m.rcpt_tos for m in downstream.messages] == [["x@elsewhere.example"]]
    # Nothing of it on gateway A's disk: no hold directory at all.
    assert not (tmp_path / "a" / "held").exists() and not (tmp_path / "b" / "held").exists()

    listed = portcullis("held", "-c", str(b_cfg), "list", "--json")
    assert listed.returncode == 0, listed.stderr
    [record] = [yaml.safe_load(line) for line in listed.stdout.splitlines()]
    assert (record["reason"], record["login"], record["recipients"]) == (
        "quota", ALICE, ["y@elsewhere.example"])
    released = portcullis("held", "-c", str(b_cfg), "release", record["id"])
    assert released.returncode == 0, released.stderr
    assert "released and removed" in released.stdout
    assert downstream.messages[1].rcpt_tos == ["y@elsewhere.example"]
    assert b"Subject: test" in downstream.messages[1].content
    assert pg.sql("SELECT count(*) FROM portcullis_held").strip() == "0"

    # Charged when released: alice's hour now holds two messages; journaled with who.
    status = portcullis("accounts", "-c", str(a_cfg), "status", ALICE)
    assert status.returncode == 0, status.stderr
    line = next(x for x in status.stdout.splitlines() if x.strip().startswith("messages_per_hour"))
    assert line.split() == ["messages_per_hour", "2", "1"], status.stdout  # used 2 of 1
    explained = portcullis("explain", "-c", str(a_cfg), record["txid"])
    assert explained.returncode == 0, explained.stderr
    assert f"released by {getpass.getuser()} (command line)" in explained.stdout
