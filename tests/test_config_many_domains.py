"""A hosting customer with 100,000 domains loads as check-config, start-up and SIGHUP
load it (load_with_keys: the settings, then the DKIM key check), and every domain is routed to it.

Issue 14, defect 5: the DKIM key check asked "is this domain the customer's?" of a
tuple once per domain, so loading was quadratic (50,000 domains: about a minute).
How fast it loads is measured in bench/accounts.py (``--domains-only``); here the load
only has to finish inside a generous bound, in a child process that is killed past it.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

DOMAINS = 100_000
# Linear loading takes a couple of seconds here; the quadratic one took minutes.
BOUND_S = 60

CHILD = """
import sys
from gateway.dkim.signing_keys import load_with_keys
from gateway.rules.relay import decide_inbound_recipient

loaded, _ = load_with_keys(sys.argv[1])
d = loaded.directory
routed = 0
for i in range(int(sys.argv[2])):
    verdict, mailbox = decide_inbound_recipient(f"info@D{i}.Hosting.example.", d.customer_for_domain)
    routed += verdict.accept and d.customer_for_domain(mailbox.domain) == "hosting"
print(routed, len(d.domains), len(d.customers))
"""


def write_config(root: Path, dkim: str) -> Path:
    (root / "keys").mkdir()
    (root / "policy").mkdir()
    (root / "policy" / "hosting.yaml").write_text(
        f"customer: hosting\ndkim: {dkim}\ndomains:\n"
        + "".join(f"  - d{i}.hosting.example\n" for i in range(DOMAINS)))
    config = root / "gateway.yaml"
    config.write_text("hostname: mx.test\nlisteners: {inbound: {port: 2525}, submission: {port: 2587}}\n"
                      "downstream: {inbound: 'smtp://127.0.0.1:25', outbound: 'smtp://127.0.0.1:25'}\n"
                      "policy_dir: policy\ndkim: {keys_dir: keys}\n")
    return config


@pytest.mark.parametrize("dkim", [
    "{missing_key: send-unsigned}",
    # An explicit list of signed domains as long as the domain list.
    "{missing_key: send-unsigned, sign: [" + ", ".join(f"d{i}.hosting.example" for i in range(DOMAINS)) + "]}",
], ids=["sign-all", "sign-list"])
def test_a_customer_with_100000_domains_loads_and_every_domain_is_routed(tmp_path, dkim):
    config = write_config(tmp_path, dkim)
    done = subprocess.run([sys.executable, "-c", CHILD, str(config), str(DOMAINS)],
                          capture_output=True, text=True, timeout=BOUND_S,
                          cwd=Path(__file__).parent.parent)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == [str(DOMAINS), str(DOMAINS), "1"]
