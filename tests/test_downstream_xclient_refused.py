"""Issue 16: a downstream that offers XCLIENT but will not take it from us (here
Postfix's smtp-sink, which answers 250 where XCLIENT_README says 220) is not asked
again on that connection: one refusal, one warning, then XFORWARD for every
message, in the same write as MAIL FROM and RCPT TO (RFC 2920), each message
with its own client.

client (127.0.0.2 / .3) → gateway → smtp-sink, which logs every command it reads (-v).
"""

from __future__ import annotations

import os
import shutil
import smtplib
import subprocess
import time

import pytest

from tests.conftest import customer_policies
from tests.support.gateway import GatewayUnderTest
from tests.support.ports import free_port

SMTP_SINK = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"
pytestmark = pytest.mark.skipif(not os.access(SMTP_SINK, os.X_OK) or os.geteuid() != 0,
                                reason="needs Postfix's smtp-sink, run as root")


@pytest.fixture
def sink(tmp_path):
    port = free_port()
    log = tmp_path / "sink.log"
    with log.open("w") as err:
        proc = subprocess.Popen([SMTP_SINK, "-v", "-u", "nobody", f"127.0.0.1:{port}", "10"],
                                stdout=subprocess.DEVNULL, stderr=err)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                smtplib.SMTP("127.0.0.1", port, timeout=5).quit()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        yield port, log
    finally:
        proc.terminate()
        proc.wait(5)


@pytest.fixture
def gw(tmp_path, sink, cert_files, password_hash):
    url = f"smtp://127.0.0.1:{sink[0]}"
    gateway = GatewayUnderTest(tmp_path, inbound_url=url, outbound_url=url,
                               policies=customer_policies(password_hash), cert=cert_files).start()
    try:
        yield gateway
    finally:
        gateway.stop()


def test_a_refused_xclient_is_not_asked_again_and_xforward_rides_with_mail(gw, sink, caplog):
    _, log = sink
    for source, helo in (("127.0.0.2", "first.example"), ("127.0.0.2", "first.example"),
                         ("127.0.0.3", "second.example"), ("127.0.0.2", "first.example")):
        with smtplib.SMTP("127.0.0.1", gw.ports["inbound"], timeout=20,
                          source_address=(source, 0), local_hostname=helo) as client:
            client.sendmail("someone@other.example", ["bob@acme.example"],
                            b"From: someone@other.example\r\nSubject: x\r\n\r\nhi\r\n")
    commands = [line.split(": ", 1)[1] for line in log.read_text().splitlines()
                if any(f": {verb} " in line for verb in ("XCLIENT", "XFORWARD"))]
    # One downstream connection, used in turn: XCLIENT once, then XFORWARD a message.
    assert [c.split()[0] for c in commands] == ["XCLIENT"] + ["XFORWARD"] * 4, commands
    helos = [c.partition("HELO=")[2].split()[0] for c in commands if c.startswith("XFORWARD")]
    assert helos == ["first.example", "first.example", "second.example", "first.example"]
    assert [c.partition("ADDR=")[2].split()[0] for c in commands if c.startswith("XFORWARD")] \
        == ["127.0.0.2", "127.0.0.2", "127.0.0.3", "127.0.0.2"]
    assert caplog.text.count("XCLIENT refused") <= 1
    # smtplib declared SIZE=; smtp-sink offers no SIZE: dropping it is routine, no line.
    assert "not offered, not passed" not in caplog.text
