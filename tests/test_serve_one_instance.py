"""Only one gateway owns its addresses (issue 14, defect 1).

The listeners are shared by the gateway's own workers (SO_REUSEPORT), but a second
`portcullis serve` on the same addresses must not join them: the kernel would spread
customers' connections over two gateways with different configurations and state.
Like Postfix, the second one refuses to start, on one line naming the address.
"""

from __future__ import annotations

import os
import signal
import smtplib
import subprocess
import sys
import time
from pathlib import Path

import yaml

from gateway.dkim.keystore import generate_selector
from tests.support.ports import free_port

CONNECTIONS = 30


def write_config(directory: Path, hostname: str, ports: dict[str, int], downstream_url: str,
                 cert_files, http_port: int | None = None) -> Path:
    directory.mkdir()
    (directory / "policy").mkdir()
    (directory / "policy" / "a.yaml").write_text("customer: a\ndomains: [a.example]\n")
    generate_selector(directory / "keys", "a.example", "test", "ed25519-sha256")
    tls = {"cert": str(cert_files[0]), "key": str(cert_files[1])}
    cfg: dict = {
        "hostname": hostname,
        "listeners": {"inbound": {"port": ports["inbound"]},
                      "submission": {"port": ports["submission"], "tls": tls}},
        "downstream": {"inbound": downstream_url, "outbound": downstream_url},
        "policy_dir": "policy", "inbound_checks": False,
        "dkim": {"keys_dir": str(directory / "keys"), "check_published": False},
        "limits": {"shutdown_grace": 2},
    }
    if http_port is not None:
        cfg["http"] = {"port": http_port}
    (directory / "gateway.yaml").write_text(yaml.safe_dump(cfg))
    return directory / "gateway.yaml"


def start(config: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "gateway.cli", "serve", "-c", str(config), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def stop(proc: subprocess.Popen) -> str:
    """SIGTERM the gateway (its whole process group if it is stuck) and return its log."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    _, err = proc.communicate(timeout=10)
    return err


def _banner(client: smtplib.SMTP) -> str:
    client.ehlo("probe.test")
    return client.ehlo_resp.decode().splitlines()[0]


def wait_listening(port: int, proc: subprocess.Popen, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[1]
        try:
            with smtplib.SMTP("127.0.0.1", port, timeout=2) as client:
                client.noop()
            return
        except OSError:
            time.sleep(0.1)
    raise AssertionError("gateway did not start")


def hostnames_answering(port: int, count: int = CONNECTIONS) -> list[str]:
    """Which gateway (by the hostname in its EHLO reply) answers each of ``count`` connections."""
    return [_banner(smtplib.SMTP("127.0.0.1", port, timeout=10)) for _ in range(count)]


def assert_refused(second: subprocess.Popen, name: str, port: int) -> None:
    try:
        code = second.wait(20)
    except subprocess.TimeoutExpired:
        raise AssertionError("the second gateway started on the first one's addresses") from None
    err = second.communicate(timeout=10)[1]
    assert code == 2, err
    assert err.strip().splitlines() == [
        f"{name}: 127.0.0.1:{port}: address already in use by another process"], err


def two_configs(tmp_path, downstream, cert_files, http: bool = False):
    ports = {"inbound": free_port(), "submission": free_port()}
    http_port = free_port() if http else None
    first = write_config(tmp_path / "first", "first.test", ports, downstream.url, cert_files, http_port)
    second = write_config(tmp_path / "second", "second.test", ports, downstream.url, cert_files,
                          http_port)
    return first, second, ports, http_port


def test_a_second_gateway_on_the_same_ports_is_refused_and_the_first_keeps_every_connection(
        tmp_path, downstream, cert_files):
    first_config, second_config, ports, _ = two_configs(tmp_path, downstream, cert_files)
    first = start(first_config)
    second = None
    try:
        wait_listening(ports["inbound"], first)
        second = start(second_config)
        assert_refused(second, "listeners.inbound", ports["inbound"])
        for port in ports.values():
            assert set(hostnames_answering(port)) == {"first.test"}
    finally:
        if second is not None:
            stop(second)
        stop(first)


def test_a_second_gateway_is_refused_by_one_with_workers_whose_workers_share(
        tmp_path, downstream, cert_files):
    first_config, second_config, ports, _ = two_configs(tmp_path, downstream, cert_files)
    first = start(first_config, "--workers", "2")
    seconds = []
    try:
        wait_listening(ports["inbound"], first)
        for workers in ("1", "2"):
            seconds.append(start(second_config, "--workers", workers))
            assert_refused(seconds[-1], "listeners.inbound", ports["inbound"])
        for i in range(CONNECTIONS):
            with smtplib.SMTP("127.0.0.1", ports["inbound"], timeout=10) as client:
                assert _banner(client) == "first.test"
                client.sendmail("a@other.example", ["x@a.example"],
                                f"From: a@other.example\r\n\r\nmessage {i}\r\n".encode())
    finally:
        for proc in seconds:
            stop(proc)
        log = stop(first)
    assert len(downstream.messages) == CONNECTIONS
    worker_pids = {line.split()[2] for line in log.splitlines() if "txid=" in line}
    assert len(worker_pids) == 2, log  # both workers took connections


def children(pid: int) -> set[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return {int(p) for p in path.read_text().split()}


def listening_inodes(pid: int) -> set[str]:
    """The socket inodes a process holds open (``socket:[inode]`` in /proc/PID/fd)."""
    found = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:"):
            found.add(target)
    return found


def test_a_worker_killed_is_restarted_on_the_same_sockets_and_the_ports_stay_ours(
        tmp_path, downstream, cert_files):
    first_config, second_config, ports, _ = two_configs(tmp_path, downstream, cert_files)
    first = start(first_config, "--workers", "2")
    second = None
    try:
        wait_listening(ports["inbound"], first)
        deadline = time.monotonic() + 10
        while len(children(first.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        before = children(first.pid)
        victim = min(before)
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            now = children(first.pid)
            if len(now) == 2 and victim not in now:
                break
            time.sleep(0.1)
        (restarted,) = children(first.pid) - before
        # While its worker was down and after, the supervisor held the slot's socket:
        # nobody else could take the address, and the new worker serves that socket.
        second = start(second_config)
        assert_refused(second, "listeners.inbound", ports["inbound"])
        assert listening_inodes(restarted) & listening_inodes(first.pid)
        for i in range(CONNECTIONS):
            with smtplib.SMTP("127.0.0.1", ports["inbound"], timeout=10) as client:
                assert _banner(client) == "first.test"
                client.sendmail("a@other.example", ["x@a.example"],
                                f"From: a@other.example\r\n\r\nmessage {i}\r\n".encode())
    finally:
        if second is not None:
            stop(second)
        log = stop(first)
    assert len(downstream.messages) == CONNECTIONS
    worker_pids = {line.split()[2] for line in log.splitlines() if "txid=" in line}
    assert str(restarted) in worker_pids, log


def test_a_second_gateway_on_the_same_ops_http_port_is_refused(tmp_path, downstream, cert_files):
    first_config, _, ports, http_port = two_configs(tmp_path, downstream, cert_files, http=True)
    # Other SMTP ports: only the HTTP port is shared.
    other = {"inbound": free_port(), "submission": free_port()}
    second_config = write_config(tmp_path / "other", "second.test", other, downstream.url,
                                 cert_files, http_port)
    first = start(first_config, "--workers", "2")
    second = None
    try:
        wait_listening(ports["inbound"], first)
        second = start(second_config)
        assert_refused(second, "http", http_port)
    finally:
        if second is not None:
            stop(second)
        stop(first)
