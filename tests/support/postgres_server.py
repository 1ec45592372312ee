"""A private PostgreSQL (Debian's postgresql) on loopback, for tests.

initdb and pg_ctl run as the ``postgres`` user in a temp dir; the server listens
on a UNIX socket in that dir and on a free 127.0.0.1 port.  The application role
``portcullis`` logs in over TCP with a SCRAM password, as it would at an ISP.

    from tests.support.postgres_server import postgres_fixture  # noqa: F401

    def test_x(postgres):
        postgres.sql("INSERT INTO mailbox ...")
        postgres.dsn  # postgresql://portcullis:...@127.0.0.1:PORT/mail
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess

import pytest

from tests.support.servers import free_port, private_dir, tcp_open, wait_for

APP_PASSWORD = "app-pw-for-tests"

SCHEMA = """
CREATE TABLE mailbox (
    login    text PRIMARY KEY,
    password text NOT NULL,
    customer text,
    senders  text[],
    active   boolean NOT NULL DEFAULT true
);
GRANT SELECT ON mailbox TO portcullis;
"""


def _bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not found:
        pytest.skip(f"PostgreSQL's {name} is not installed (apt-get install postgresql)")
    return found[-1]


class PostgresServer:
    def __init__(self) -> None:
        self.dir = private_dir("postgres", owner="postgres")
        self.data = self.dir / "data"
        self.port = free_port()
        self.log = self.dir / "postgres.log"
        self._run(_bin("initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust",
                  "--no-sync", "-E", "UTF8")
        with open(self.data / "pg_hba.conf", "w") as hba:
            hba.write("local all postgres trust\n"
                      "host mail portcullis 127.0.0.1/32 scram-sha-256\n")

    def _run(self, *argv: str) -> str:
        cmd = list(argv)
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=self.dir)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(argv[:2])} failed: {done.stderr[-2000:]}")
        return done.stdout

    @property
    def dsn(self) -> str:
        return f"postgresql://portcullis:{APP_PASSWORD}@127.0.0.1:{self.port}/mail"

    def start(self) -> None:
        opts = (f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 "
                "-c fsync=off -c full_page_writes=off -c synchronous_commit=off")
        self._run(_bin("pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-o", opts,
                  "-w", "-t", "30", "start")
        wait_for("postgres", lambda: tcp_open(self.port), log=self.log)

    def stop(self) -> None:
        # "fast", not "immediate": with synchronous_commit=off (set above for speed) an
        # immediate stop can lose the last commits, and the test's rows with them.
        self._run(_bin("pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "-t", "30", "stop")
        wait_for("postgres to close its port", lambda: not tcp_open(self.port), timeout=10)

    def sql(self, text: str, database: str = "mail") -> str:
        return self._run("psql", "-h", str(self.dir), "-p", str(self.port), "-U", "postgres",
                         "-d", database, "-v", "ON_ERROR_STOP=1", "-q", "-At", "-c", text)

    def create_schema(self) -> None:
        self.sql(f"CREATE ROLE portcullis LOGIN PASSWORD '{APP_PASSWORD}'", database="postgres")
        self.sql("CREATE DATABASE mail", database="postgres")
        self.sql(SCHEMA)

    def is_running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def close(self) -> None:
        if self.is_running():
            try:
                self.stop()
            except RuntimeError:
                pass
        shutil.rmtree(self.dir, ignore_errors=True)


def quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


@pytest.fixture(scope="module")
def postgres_server():
    server = PostgresServer()
    try:
        server.start()
        server.create_schema()
        yield server
    finally:
        server.close()


@pytest.fixture(name="postgres")
def postgres_fixture(postgres_server):
    """The module's server, running, with an empty mailbox table."""
    if not postgres_server.is_running():
        postgres_server.start()
    postgres_server.sql("TRUNCATE mailbox")
    return postgres_server
