"""A private Dovecot (dovecot-core) that only authenticates, on loopback, for tests.

Its passdb is a passwd-file in a temp dir; its auth-client listener is both a
TCP port on 127.0.0.1 and a UNIX socket in the temp dir.  `stop()` / `start()`
let a test take it away mid-test and bring it back on the same port.

    from tests.support.dovecot_server import dovecot_fixture  # noqa: F401

    def test_x(dovecot):
        dovecot.set_user("alice@acme.example", "secret", customer="acme")
        # dovecot.port, dovecot.unix_socket
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time

import pytest
from passlib.hash import sha512_crypt

from tests.support.servers import free_port, private_dir, stop_group, tcp_open, wait_for

DOVECOT = shutil.which("dovecot") or "/usr/sbin/dovecot"

CONF = """\
base_dir = {dir}/run
state_dir = {dir}/state
log_path = {dir}/dovecot.log
instance_name = portcullis-test-{port}
protocols =
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = yes
auth_mechanisms = plain login
# Dovecot delays every failure by 2 s by default (brute-force damping); the
# tests measure our behaviour, not that delay.
auth_failure_delay = 0
auth_cache_size = 0
default_login_user = root
default_internal_user = root
default_internal_group = root
passdb {{
  driver = passwd-file
  args = {dir}/passwd
}}
userdb {{
  driver = static
  args = uid=root gid=root home={dir}/home/%u
}}
service auth {{
  user = root
  inet_listener {{
    address = 127.0.0.1
    port = {port}
  }}
  unix_listener auth-client {{
    path = {dir}/auth-client
    mode = 0666
  }}
}}
service anvil {{
  chroot =
}}
"""


class DovecotServer:
    def __init__(self) -> None:
        self.dir = private_dir("dovecot")
        (self.dir / "run").mkdir()
        (self.dir / "state").mkdir()
        self.port = free_port()
        self.conf = self.dir / "dovecot.conf"
        self.conf.write_text(CONF.format(dir=self.dir, port=self.port))
        self.passwd = self.dir / "passwd"
        self.passwd.write_text("")
        self.unix_socket = self.dir / "auth-client"
        self.users: dict[str, str] = {}
        self._generation = 0
        self.proc: subprocess.Popen | None = None

    def set_user(self, login: str, password: str, **extra: str) -> None:
        """Add or change an account; Dovecot re-reads the passwd-file when it changes."""
        fields = " ".join(f"{k}={v}" for k, v in extra.items())
        self.users[login] = (
            f"{login}:{{SHA512-CRYPT}}{sha512_crypt.using(rounds=5000).hash(password)}::::::{fields}"
        )
        tmp = self.passwd.with_suffix(".new")
        tmp.write_text("".join(line + "\n" for line in self.users.values()))
        os.replace(tmp, self.passwd)
        # Dovecot re-reads the file when its mtime or size changes; a change within the
        # same second with the same size would go unseen, so step the mtime forward.
        self._generation += 1
        stamp = time.time() + self._generation
        os.utime(self.passwd, (stamp, stamp))

    def change_password(self, login: str, password: str, **extra: str) -> None:
        """Change an account of a running server and wait until Dovecot sees it: its
        passwd-file driver stats the file at most once a second."""
        self.set_user(login, password, **extra)
        time.sleep(1.1)

    def break_passdb(self) -> None:
        """Restart with a passdb that cannot answer: a checkpassword program exiting
        111, its "temporary problem" code (what a database outage looks like)."""
        script = self.dir / "checkpassword-down"
        script.write_text("#!/bin/sh\nexit 111\n")
        script.chmod(0o755)
        text = self.conf.read_text().replace(
            "driver = passwd-file\n  args = " + str(self.passwd),
            f"driver = checkpassword\n  args = {script}")
        self.conf.write_text(text)
        self.stop()
        self.start()

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [DOVECOT, "-F", "-c", str(self.conf)],
            stdout=subprocess.DEVNULL, stderr=open(self.dir / "stderr.log", "ab"),
            start_new_session=True,  # its own process group: stop() ends the children too
        )
        wait_for("dovecot", lambda: tcp_open(self.port) and self.unix_socket.exists(),
                 proc=self.proc, log=self.dir / "dovecot.log")

    def stop(self) -> None:
        """Stop master and children (an auth process would otherwise keep serving
        the connections it already has, as a real Dovecot does on a plain stop)."""
        stop_group(self.proc)
        self.proc = None
        wait_for("dovecot to close its port", lambda: not tcp_open(self.port), timeout=10)

    def close(self) -> None:
        stop_group(self.proc)
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(name="dovecot")
def dovecot_fixture():
    if os.geteuid() != 0:
        pytest.skip("the test Dovecot runs as root (its auth process reads a temp passwd-file)")
    server = DovecotServer()
    try:
        server.start()
        yield server
    finally:
        server.close()
