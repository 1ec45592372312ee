"""A worker that cannot start is not restarted forever: the supervisor gives up
and exits non-zero, so an orchestrator sees the failure."""

import subprocess
import sys

import yaml

from tests.support.ports import free_port


def test_workers_dying_at_start_make_serve_exit_non_zero(tmp_path):
    (tmp_path / "policy").mkdir()
    (tmp_path / "policy" / "a.yaml").write_text("customer: a\ndomains: [a.example]\n")
    port = free_port()
    # The maildir's parent is a file: the downstream cannot be created in the worker.
    (tmp_path / "blocker").write_text("not a directory")
    (tmp_path / "g.yaml").write_text(yaml.safe_dump({
        "hostname": "mx.test", "listeners": {"inbound": {"port": port}},
        "downstream": {"inbound": f"maildir:{tmp_path / 'blocker' / 'maildir'}"},
        "policy_dir": "policy", "inbound_checks": False}))
    proc = subprocess.run([sys.executable, "-m", "gateway.cli", "serve", "-c",
                           str(tmp_path / "g.yaml"), "--workers", "2"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "workers keep dying at start-up" in proc.stderr
