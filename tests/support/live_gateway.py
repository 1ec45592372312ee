"""A real `portcullis serve --workers 1` started from the test's files, its log
collected line by line, reloaded with SIGHUP (tests/test_reload_sections.py,
tests/test_metrics_documented.py)."""

from __future__ import annotations

import copy
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import yaml

from gateway.dkim.keystore import generate_selector
from tests.conftest import customer_policies
from tests.support.ports import free_port
from tests.support.recorder import RecordingMTA


def merge(base: dict, extra: dict) -> None:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            merge(base[key], value)
        else:
            base[key] = value


class ServeProcess:
    """`portcullis serve --workers 1`, its stderr collected line by line."""

    def __init__(self, tmp: Path, downstream: RecordingMTA, cert_files, password_hash: str,
                 extra: dict | None = None, policies: dict | None = None):
        self.tmp = tmp
        self.policy = tmp / "policy"
        self.policy.mkdir()
        self.policies = policies or customer_policies(password_hash)
        for name, p in self.policies.items():
            (self.policy / f"{name}.yaml").write_text(yaml.safe_dump(p))
        self.keys = tmp / "keys"
        for p in self.policies.values():
            for domain in p.get("domains", ()):
                generate_selector(self.keys, domain.lower(), "test", "ed25519-sha256")
        self.ports = {"inbound": free_port(), "submission": free_port(),
                      "submissions": free_port(), "http": free_port()}
        tls = {"cert": str(cert_files[0]), "key": str(cert_files[1])}
        self.base = {
            "hostname": "mx.test",
            "listeners": {"inbound": {"port": self.ports["inbound"]},
                          "submission": {"port": self.ports["submission"], "tls": tls},
                          "submissions": {"port": self.ports["submissions"], "tls": tls}},
            "downstream": {"inbound": {"url": downstream.url, "timeout": 3},
                           "outbound": {"url": downstream.url, "timeout": 3}},
            "policy_dir": "policy",
            "dkim": {"keys_dir": "keys", "check_published": False},
            "http": {"port": self.ports["http"]},
            "inbound_checks": False,
            "lockout": {"failure_delay": 0},
            "limits": {"shutdown_grace": 2, "command_timeout": 10, "data_timeout": 10},
            # Nothing listens there: inbound checks see DNS temperror at once.
            "dns": {"nameservers": ["127.0.0.1"], "port": free_port(), "timeout": 1},
        }
        merge(self.base, extra or {})
        self.config = tmp / "gateway.yaml"
        self.config.write_text(yaml.safe_dump(self.base))
        self.lines: list[str] = []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "serve", "-c", str(self.config), "--workers", "1"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        deadline = time.monotonic() + 20
        while not any("operations HTTP on" in line for line in self.lines):
            assert self.proc.poll() is None and time.monotonic() < deadline, self.log()
            time.sleep(0.05)

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))

    def log(self) -> str:
        return "\n".join(self.lines)

    def reload(self, **changes: object) -> list[str]:
        """The base configuration with ``changes`` (dotted names), SIGHUP, and the log
        lines of that reload (up to its "reloaded" or "reload refused" line)."""
        config = copy.deepcopy(self.base)
        for dotted, value in changes.items():
            *path, last = dotted.split(".")
            node = config
            for key in path:
                node = node.setdefault(key, {})
            node[last] = value
        self.config.write_text(yaml.safe_dump(config))
        start = len(self.lines)
        self.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 20
        while True:
            new = self.lines[start:]
            if any(line.split(" INFO ")[-1].startswith("reloaded ") or "reload refused" in line
                   for line in new):
                return new
            assert time.monotonic() < deadline, self.log()
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self._reader.join(5)
