"""Hostile or broken YAML costs bounded time and memory, wherever the gateway reads it.

Issue 14, defect 4: a 1 KB alias bomb in a policy file took 66 s and GBs of memory
and wrote a 312 MB error line; a 5,000-digit integer and a 995-deep nesting ended in
tracebacks with exit 1.  Each file of tests/hostile_yaml/ (and a generated document
larger than every limit) goes, in turn, where each kind of YAML file lives: the
gateway file, a customer's policy file, a DKIM key's metadata.  check-config must
answer with one short line naming the file, exit 2, within seconds and without
growing.  The child runs under a small wrapper whose only child it is, so the
wrapper's RUSAGE_CHILDREN peak is check-config's own.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.dkim.keystore import generate_selector

HOSTILE = Path(__file__).parent / "hostile_yaml"
ROOT = Path(__file__).parent.parent
CASES = sorted(p.name for p in HOSTILE.iterdir()) + ["huge-document.yaml"]
PLACES = ["gateway-file", "policy-file", "key-metadata"]
# A check-config of a small config peaks near 100 MB here; the bomb once took 3.1 GB.
MAX_RSS_MIB = 250
MAX_SECONDS = 15  # the child normally answers in about one; the bomb took 66
MAX_LINE = 300

WRAPPER = """
import json, resource, subprocess, sys, time
def cap():  # 2 GiB of address space: a blow-up fails here, not on the machine
    resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))
t = time.monotonic()
done = subprocess.run(sys.argv[1:], capture_output=True, text=True, timeout=MAX_SECONDS,
                      preexec_fn=cap)
print(json.dumps({"code": done.returncode, "err": done.stderr, "out": done.stdout,
                  "seconds": time.monotonic() - t,
                  "rss_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))
""".replace("MAX_SECONDS", str(MAX_SECONDS))

GATEWAY = ("hostname: mx.test\nlisteners: {inbound: {port: 2525}, submission: {port: 2587}}\n"
           "downstream: {inbound: 'smtp://127.0.0.1:25', outbound: 'smtp://127.0.0.1:25'}\n"
           "policy_dir: policy\ndkim: {keys_dir: keys}\n")


def hostile_bytes(name: str) -> bytes:
    if name == "huge-document.yaml":
        # Valid YAML, 18 MB: past every file's size limit (16 MiB for a policy file).
        return b"x: [" + b"1," * 9_000_000 + b"1]\n"
    return (HOSTILE / name).read_bytes()


def place(tmp: Path, where: str, text: bytes) -> Path:
    """A valid setup with the hostile ``text`` as one of its YAML files; that file's path."""
    (tmp / "policy").mkdir()
    (tmp / "policy" / "acme.yaml").write_text(
        "customer: acme\ndomains: [acme.example]\ndkim: {missing_key: send-unsigned}\n")
    generate_selector(tmp / "keys", "acme.example", "s1", "ed25519-sha256")
    config = tmp / "gateway.yaml"
    config.write_text(GATEWAY)
    target = {"gateway-file": config, "policy-file": tmp / "policy" / "hostile.yaml",
              "key-metadata": tmp / "keys" / "acme.example" / "s1.yaml"}[where]
    target.write_bytes(text)
    return target


def check_config(config: Path) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", WRAPPER, sys.executable, "-m", "gateway.cli", "check-config",
         "-c", str(config)], capture_output=True, text=True, timeout=MAX_SECONDS + 30, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-1000:]  # the wrapper's own (a timeout)
    return json.loads(done.stdout)


@pytest.mark.parametrize("where", PLACES)
@pytest.mark.parametrize("name", CASES)
def test_hostile_yaml_gives_one_short_line_and_exit_2_in_bounded_time_and_memory(
        tmp_path, name, where):
    target = place(tmp_path, where, hostile_bytes(name))
    result = check_config(tmp_path / "gateway.yaml")
    lines = result["err"].strip().splitlines()
    assert result["code"] == 2, result
    assert "Traceback" not in result["err"]
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"{target}: "), lines[0]
    assert len(lines[0]) <= MAX_LINE
    assert result["seconds"] < MAX_SECONDS
    assert result["rss_mib"] < MAX_RSS_MIB, result["rss_mib"]


def test_the_example_files_load_within_the_limits(tmp_path):
    # The limits must not refuse what we ship: the example gateway and policy files.
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    from gateway.config.errors import ConfigError
    from gateway.config.load import read_yaml
    from gateway.config.safe_yaml import GATEWAY_FILE, POLICY_FILE

    errors: list[ConfigError] = []
    assert isinstance(read_yaml(tmp_path / "examples" / "gateway.yaml", errors, GATEWAY_FILE), dict)
    for policy in sorted((ROOT / "policy").glob("*.yaml")):
        assert isinstance(read_yaml(policy, errors, POLICY_FILE), dict)
    assert errors == []
