"""swaks, the SMTP test tool operators use, against the real listeners."""

import shutil
import subprocess

import pytest

from tests.conftest import PASSWORD

pytestmark = pytest.mark.skipif(shutil.which("swaks") is None, reason="needs swaks")


def swaks(*args):
    return subprocess.run(["swaks", "--timeout", "20", *args], capture_output=True, text=True,
                          timeout=60)


def test_swaks_submission_with_starttls_and_auth(gateway, downstream):
    out = swaks("--server", f"127.0.0.1:{gateway.ports['submission']}", "--tls",
                "--auth", "LOGIN", "--auth-user", "alice@acme.example", "--auth-password", PASSWORD,
                "--from", "alice@acme.example", "--to", "friend@elsewhere.example",
                "--h-From", "alice@acme.example")
    assert out.returncode == 0, out.stdout
    assert "235 2.7.0" in out.stdout
    assert "250 2.0.0 queued as TEST" in out.stdout
    assert downstream.messages[0].rcpt_tos == ["friend@elsewhere.example"]


def test_swaks_implicit_tls_on_465(gateway, downstream):
    out = swaks("--server", f"127.0.0.1:{gateway.ports['submissions']}", "--tlsc",
                "--auth", "PLAIN", "--auth-user", "bob@acme.example", "--auth-password", PASSWORD,
                "--from", "bob@acme.example", "--to", "friend@elsewhere.example",
                "--h-From", "bob@acme.example")
    assert out.returncode == 0, out.stdout
    assert len(downstream.messages) == 1


def test_swaks_relay_attempt_on_the_mx_is_refused(gateway, downstream):
    out = swaks("--server", f"127.0.0.1:{gateway.ports['inbound']}",
                "--from", "spammer@other.example", "--to", "victim@third.example")
    assert out.returncode != 0
    assert "550 5.7.1 Relaying denied" in out.stdout
    assert downstream.messages == []


def test_swaks_auth_without_tls_on_587_is_refused(gateway):
    out = swaks("--server", f"127.0.0.1:{gateway.ports['submission']}",
                "--auth", "PLAIN", "--auth-user", "alice@acme.example", "--auth-password", PASSWORD,
                "--from", "alice@acme.example", "--to", "friend@elsewhere.example")
    assert out.returncode != 0
    assert "235" not in out.stdout
