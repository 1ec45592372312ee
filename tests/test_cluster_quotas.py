"""Two gateway processes (real `portcullis serve`, as on two hosts) share one real
Redis; one account hammers both at once: exactly the limit gets through."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import yaml

from gateway.dkim.keystore import generate_selector
from tests.conftest import customer_policies
from tests.support import redis_server as _redis
from tests.support.ports import free_port
from tests.support.submission import auth_plain, connect, message

redis_server = _redis.redis_server

LIMIT = 15


class Ports:
    def __init__(self, port):
        self.ports = {"submissions": port}


def start_gateway(tmp_path, name, downstream_url, redis_url, cert_files):
    port = free_port()
    cfg = {
        "hostname": f"{name}.gateway.test",
        "listeners": {"submissions": {"port": port, "tls": {"cert": str(cert_files[0]),
                                                            "key": str(cert_files[1])}}},
        "downstream": {"outbound": downstream_url},
        "policy_dir": "policy",
        "dkim": {"keys_dir": "keys", "check_published": False},
        "store": {"backend": "redis", "url": redis_url, "prefix": "cluster:"},
        "limits": {"shutdown_grace": 2},
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "serve", "-c", str(path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    return proc, Ports(port)


def wait_ready(gw, proc, client_tls, timeout=20):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read()
        try:
            connect(gw, client_tls).close()
            return
        except OSError:
            time.sleep(0.1)
    raise AssertionError("gateway did not start")


def test_two_gateways_sharing_redis_accept_exactly_the_limit(tmp_path, downstream, cert_files,
                                                           password_hash, client_tls, redis_server):
    redis_server.flush()
    policies = customer_policies(password_hash)
    policies["acme"]["accounts"][0]["quotas"] = {"messages_per_hour": LIMIT,
                                                 "concurrent_connections": 100}
    (tmp_path / "policy").mkdir()
    for name, p in policies.items():
        (tmp_path / "policy" / f"{name}.yaml").write_text(yaml.safe_dump(p))
        for domain in p["domains"]:  # outbound mail is DKIM-signed: both gateways share keys
            generate_selector(tmp_path / "keys", domain, "test", "ed25519-sha256")
    procs = [start_gateway(tmp_path, n, downstream.url, redis_server.url, cert_files)
             for n in ("a", "b")]
    lock = threading.Lock()
    results: list[int] = []

    def hammer(i: int) -> None:
        gw = procs[i % 2][1]
        with connect(gw, client_tls) as c:
            assert auth_plain(c, "alice@acme.example")[0] == 235
            for _ in range(3):
                c.mail("alice@acme.example")
                code, _text = c.rcpt("x@elsewhere.example")
                if code == 250:
                    code = c.data(message())[0]
                else:
                    c.rset()
                with lock:
                    results.append(code)

    try:
        for proc, gw in procs:
            wait_ready(gw, proc, client_tls)
        with ThreadPoolExecutor(12) as pool:
            list(pool.map(hammer, range(12)))  # 36 attempts, both gateways at once
    finally:
        for proc, _ in procs:
            proc.terminate()
        for proc, _ in procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
    assert len(results) == 36
    assert results.count(250) == LIMIT
    assert results.count(451) == 36 - LIMIT
    assert len(downstream.messages) == LIMIT
