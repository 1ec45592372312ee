"""A reload never silently drops a customer, never stalls the listeners, and refuses
hostile files with the old configuration still serving (issue 14, defects 3 and 4).

Before: a directory or a dangling symlink named acme.yaml made a SIGHUP drop acme
(its domains 550, its logins 535) without a word; an alias bomb made a reload take
a minute and gigabytes while SMTP stalled; a deep nesting ended the reload task in a
traceback without "reload refused".
"""

from __future__ import annotations

import os
import shutil
import signal
import smtplib
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import customer_policies
from tests.support.gateway import GatewayUnderTest
from tests.support.serve_process import eventually, inbound_rcpt, serve_workers, worker_pids

HOSTILE = Path(__file__).parent / "hostile_yaml"


def start(tmp_path, downstream, cert_files, password_hash, extra=None):
    return GatewayUnderTest(tmp_path, inbound_url=downstream.url, outbound_url=downstream.url,
                            policies=customer_policies(password_hash), cert=cert_files,
                            extra=extra).start()


def portcullis_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "portcullis"]


def make_directory(path: Path) -> None:
    path.unlink()
    path.mkdir()


def make_dangling_link(path: Path) -> None:
    path.unlink()
    path.symlink_to(path.parent / "gone" / path.name)


@pytest.mark.parametrize("breakage", [make_directory, make_dangling_link],
                         ids=["directory", "dangling-symlink"])
def test_a_policy_entry_that_is_not_a_file_refuses_the_reload_and_the_customer_stays(
        tmp_path, downstream, cert_files, password_hash, caplog, breakage):
    gw = start(tmp_path, downstream, cert_files, password_hash)
    try:
        breakage(gw.policy_dir / "acme.yaml")
        with caplog.at_level("INFO", logger="portcullis"):
            assert gw.reload() is False
        lines = portcullis_lines(caplog)
        assert any(f"{gw.policy_dir}/acme.yaml: is a" in line for line in lines), lines
        assert any(line.startswith("reload refused") for line in lines), lines
        assert inbound_rcpt(gw.ports["inbound"], "x@acme.example") == 250
    finally:
        gw.stop()


def test_a_reload_that_drops_a_customer_names_it_and_logs_the_counts_before_and_after(
        tmp_path, downstream, cert_files, password_hash, caplog):
    gw = start(tmp_path, downstream, cert_files, password_hash)  # max_customer_drop 0.5
    try:
        (gw.policy_dir / "globex.yaml").unlink()  # 1 of 2: not more than half
        with caplog.at_level("INFO", logger="portcullis"):
            assert gw.reload() is True
        lines = portcullis_lines(caplog)
        assert any("reload: drops 1 of 2 customers (50%): globex" in line for line in lines), lines
        assert (f"reloaded {gw.config_path}: 1 customers, 2 domains, 2 accounts "
                "(before: 2 customers, 3 domains, 3 accounts)") in lines
        assert inbound_rcpt(gw.ports["inbound"], "x@globex.example") == 550
    finally:
        gw.stop()


def test_a_reload_dropping_more_than_max_customer_drop_is_refused(
        tmp_path, downstream, cert_files, password_hash, caplog):
    gw = start(tmp_path, downstream, cert_files, password_hash,
               extra={"reload": {"max_customer_drop": 0.25}})
    try:
        (gw.policy_dir / "globex.yaml").unlink()
        with caplog.at_level("INFO", logger="portcullis"):
            assert gw.reload() is False
        lines = portcullis_lines(caplog)
        assert any(line.startswith("reload refused: it would drop 1 of 2 customers (50%): globex")
                   and "reload.max_customer_drop (0.25)" in line for line in lines), lines
        assert inbound_rcpt(gw.ports["inbound"], "x@globex.example") == 250
    finally:
        gw.stop()


@pytest.mark.parametrize("name", sorted(p.name for p in HOSTILE.iterdir()))
def test_a_hostile_policy_file_is_refused_on_reload_and_the_old_config_serves(
        tmp_path, downstream, cert_files, password_hash, caplog, name):
    gw = start(tmp_path, downstream, cert_files, password_hash)
    try:
        shutil.copy(HOSTILE / name, gw.policy_dir / "hostile.yaml")
        started = time.monotonic()
        with caplog.at_level("INFO", logger="portcullis"):
            ok, times = noop_round_trips_during(gw, gw.reload)
        assert ok is False
        assert time.monotonic() - started < 5
        assert max(times, default=0) < 0.25, times
        lines = portcullis_lines(caplog)
        assert any(line.startswith(f"reload: {gw.policy_dir}/hostile.yaml: ") for line in lines), lines
        assert any(line.startswith("reload refused") for line in lines), lines
        assert all(len(line) < 400 and "\n" not in line for line in lines), lines
        assert inbound_rcpt(gw.ports["inbound"], "x@acme.example") == 250
    finally:
        gw.stop()


def big_policy(path: Path, domains: int) -> None:
    path.write_text("customer: hosting\ndkim: {missing_key: send-unsigned}\ndomains:\n"
                    + "".join(f"  - d{i}.hosting.example\n" for i in range(domains)))


def noop_round_trips_during(gw: GatewayUnderTest, action) -> tuple[object, list[float]]:
    """``action()`` in a thread while one client sends NOOPs; its result and the NOOP
    round-trip times measured meanwhile."""
    result: list[object] = []
    worker = threading.Thread(target=lambda: result.append(action()))
    times: list[float] = []
    with smtplib.SMTP("127.0.0.1", gw.ports["inbound"], timeout=10) as c:
        c.ehlo("x")
        worker.start()
        deadline = time.monotonic() + 60  # bounded, whatever happens to the reload
        while worker.is_alive() and time.monotonic() < deadline:
            t = time.monotonic()
            assert c.noop()[0] == 250
            times.append(time.monotonic() - t)
            time.sleep(0.002)
    worker.join(60)
    return result[0] if result else None, times


def test_smtp_keeps_answering_while_a_large_policy_file_reloads(
        tmp_path, downstream, cert_files, password_hash):
    gw = start(tmp_path, downstream, cert_files, password_hash)
    try:
        big_policy(gw.policy_dir / "hosting.yaml", 150_000)  # 5 MB: a second or more to load
        ok, times = noop_round_trips_during(gw, gw.reload)
        assert ok is True
        assert len(times) > 10  # the reload took a while: the measure means something
        # The reload thread shares the GIL: a collection over its millions of new objects,
        # or one long C call, would show here as a NOOP answered late.
        assert max(times) < 0.25, sorted(times)[-5:]
        assert gw.runtime.directory.customer_for_domain("d149999.hosting.example") == "hosting"
    finally:
        gw.stop()


def test_a_reload_past_its_time_bound_is_refused_and_the_next_waits_for_it(
        tmp_path, downstream, cert_files, password_hash, caplog):
    gw = start(tmp_path, downstream, cert_files, password_hash,
               extra={"reload": {"timeout": 0.05}})
    try:
        big_policy(gw.policy_dir / "hosting.yaml", 150_000)
        with caplog.at_level("INFO", logger="portcullis"):
            assert gw.reload() is False
            assert gw.reload() is False  # the slow load still runs in its thread
        lines = portcullis_lines(caplog)
        assert any(line.startswith("reload refused: loading took longer than reload.timeout (0.05s)")
                   for line in lines), lines
        assert any(line.startswith("reload refused: the previous reload is still loading")
                   for line in lines), lines
        assert gw.runtime.directory.customer_for_domain("d1.hosting.example") is None
        assert inbound_rcpt(gw.ports["inbound"], "x@acme.example") == 250
    finally:
        # Let the abandoned load finish before the gateway's loop goes away.
        deadline = time.monotonic() + 60
        while gw.gateway._loading is not None and not gw.gateway._loading.done() \
                and time.monotonic() < deadline:
            time.sleep(0.1)
        gw.stop()


# --- SIGHUP to a real `portcullis serve --workers 2` ---------------------------------------
def test_sighup_with_an_alias_bomb_is_refused_by_every_worker_and_a_new_worker_too(
        tmp_path, downstream, password_hash):
    proc, port = serve_workers(tmp_path, downstream, password_hash)
    policy = tmp_path / "policy"
    try:
        assert eventually(lambda: inbound_rcpt(port, "x@acme.example") == 250)
        assert eventually(lambda: len(worker_pids(proc.pid)) == 2)
        first_workers = set(worker_pids(proc.pid))
        shutil.copy(HOSTILE / "alias-bomb.yaml", policy / "bomb.yaml")
        proc.send_signal(signal.SIGHUP)
        time.sleep(1.5)
        # A worker dies: its replacement loads the files itself, and refuses them too.
        os.kill(worker_pids(proc.pid)[0], signal.SIGKILL)
        assert eventually(lambda: len(worker_pids(proc.pid)) == 2)
        time.sleep(1.5)
        assert all(inbound_rcpt(port, "x@acme.example") == 250 for _ in range(12))
        assert proc.poll() is None  # the supervisor is alive
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
        log = proc.stderr.read()
        refused = [line for line in log.splitlines() if "reload refused" in line]
        # Lines read "<date> <time> <pid> portcullis ERROR ...": each first worker refused,
        # and so did the new one, which names itself.
        assert {int(line.split()[2]) for line in refused} >= first_workers, log
        assert sum("new worker: reload refused" in line for line in refused) == 1, log
        assert "reloaded " not in log
        assert "cannot be read: YamlRefused" not in log  # the limit's own words
        assert "Traceback" not in log and "never retrieved" not in log
        assert max(len(line) for line in log.splitlines()) < 500
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
