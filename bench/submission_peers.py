"""The servers bench/submission.py compares, each started on loopback and stopped by pid.

    ceiling      bench/submission_ceiling.py (aiosmtpd STARTTLS + AUTH, drops the mail)
    postfix      a private Postfix as a submission server: TLS required, Dovecot SASL
                 (a private Dovecot), smtpd_sender_login_maps with
                 reject_sender_login_mismatch, relaying to smtp-sink
    +opendkim    the same with Debian's OpenDKIM as a milter, signing every message
                 with an RSA-2048 key
    portcullis   `portcullis serve` (this checkout's or another's) with a submission
                 listener, quotas and compromise signals counted in SQLite or Redis,
                 RSA-2048 DKIM signing, forwarding to smtp-sink

Every server exposes ``port``, ``roots`` (the pids whose process trees are the
server: CPU and memory are read from them) and ``stop()``; each is a context
manager, so a failure while starting the next one still stops it.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml
from passlib.hash import sha512_crypt

from bench.inbound import checkout_env, dkim_settings, stop, wait_port
from tests.support.dkim_keys import TestKey
from tests.support.dovecot_server import DovecotServer
from tests.support.ports import free_port
from tests.support.postfix import PostfixInstance
from tests.support.redis_server import RedisServer
from tests.support.servers import stop_group, tcp_open, wait_for

DOMAIN = "acme.example"
SELECTOR = "bench"
BIG = 10**9
# Every row accepts one message this large (bench/submission.py measures memory with it).
BIG_MESSAGE_LIMIT = 64 * 1024 * 1024
OPENDKIM = shutil.which("opendkim") or "/usr/sbin/opendkim"


def accounts(n: int) -> tuple[tuple[str, str], ...]:
    """One account per session: (login, password)."""
    return tuple((f"user{i:02d}@{DOMAIN}", f"bench password {i}") for i in range(n))


def password_hash(password: str) -> str:
    # The same scheme for Dovecot and the gateway, so their AUTH times compare.
    return "{SHA512-CRYPT}" + sha512_crypt.using(rounds=5000).hash(password)


class Server:
    port: int

    def roots(self) -> list[int]:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class Ceiling(Server):
    def __init__(self, tmp: Path, cert: tuple[Path, Path],
                 logins: tuple[tuple[str, str], ...]) -> None:
        self.port = free_port()
        table = tmp / "ceiling-accounts"
        table.write_text("".join(f"{login} {password}\n" for login, password in logins))
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("submission_ceiling.py")),
             str(self.port), str(cert[0]), str(cert[1]), str(table)], start_new_session=True)
        try:
            wait_port(self.port)
        except BaseException:
            self.stop()
            raise

    def roots(self) -> list[int]:
        return [self.proc.pid]

    def stop(self) -> None:
        stop_group(self.proc)


class OpenDKIM(Server):
    """Debian's opendkim in the foreground, signing mail for DOMAIN as a milter."""

    def __init__(self, key: TestKey, unix_socket: bool = True) -> None:
        # OpenDKIM refuses a config or key file under a directory others may write
        # to (/tmp): keep them in a directory under /run instead (0755: Postfix's
        # smtpd, running as postfix, reaches the socket in it).
        self.dir = d = Path(tempfile.mkdtemp(prefix="portcullis-opendkim-", dir="/run"))
        d.chmod(0o755)
        key_file = d / f"{SELECTOR}.private"
        key_file.write_bytes(key.private)
        key_file.chmod(0o600)
        # A UNIX socket is Debian's default (/etc/default/opendkim); over loopback TCP
        # the milter's many small request/reply pairs can wait on Nagle + delayed ACK.
        self.port = 0 if unix_socket else free_port()
        path = d / "opendkim.sock"
        socket = f"local:{path}" if unix_socket else f"inet:{self.port}@127.0.0.1"
        self.milter = f"unix:{path}" if unix_socket else f"inet:127.0.0.1:{self.port}"
        conf = d / "opendkim.conf"
        conf.write_text(
            "Syslog no\nMode s\nUMask 000\n"
            f"Domain {DOMAIN}\nSelector {SELECTOR}\nKeyFile {key_file}\n"
            f"Socket {socket}\nPidFile {d / 'opendkim.pid'}\n"
            "Canonicalization relaxed/simple\nSignatureAlgorithm rsa-sha256\n")
        self.proc = subprocess.Popen([OPENDKIM, "-f", "-x", str(conf)], start_new_session=True,
                                     stdout=subprocess.DEVNULL, stderr=(d / "stderr").open("w"))
        try:
            wait_for("opendkim", (lambda: path.exists()) if unix_socket else (lambda: tcp_open(self.port)),
                     proc=self.proc, log=d / "stderr")
        except BaseException:
            self.stop()
            raise

    def roots(self) -> list[int]:
        return [self.proc.pid]

    def stop(self) -> None:
        stop_group(self.proc)
        shutil.rmtree(self.dir, ignore_errors=True)


class PostfixSubmission(Server):
    """Postfix as an ISP's submission server, optionally with OpenDKIM in front of its
    queue (then it is this server's part: stopped with it, also if starting fails)."""

    def __init__(self, cert: tuple[Path, Path], logins: tuple[tuple[str, str], ...],
                 sink_port: int, dkim: OpenDKIM | None = None) -> None:
        self.dkim = dkim
        self.postfix: PostfixInstance | None = None
        self.dovecot = DovecotServer()
        try:
            for login, password in logins:
                self.dovecot.set_user(login, password)
            self.dovecot.start()
            self.port = free_port()
            settings = {
                "smtpd_tls_cert_file": str(cert[0]), "smtpd_tls_key_file": str(cert[1]),
                # What master.cf's commented-out submission service sets (RFC 6409).
                "smtpd_tls_security_level": "encrypt", "smtpd_tls_auth_only": "yes",
                "smtpd_sasl_auth_enable": "yes", "smtpd_sasl_type": "dovecot",
                "smtpd_sasl_path": str(self.dovecot.unix_socket),
                "smtpd_client_restrictions": "permit_sasl_authenticated, reject",
                "smtpd_relay_restrictions": "permit_sasl_authenticated, reject",
                "smtpd_sender_restrictions": "reject_sender_login_mismatch",
                "mynetworks": "",  # loopback must not relay without AUTH
                # The bench's one large message (bench/submission.py, --big-mb) must fit.
                "message_size_limit": str(BIG_MESSAGE_LIMIT),
            }
            if dkim is not None:
                settings.update({"smtpd_milters": dkim.milter,
                                 "milter_default_action": "tempfail"})
            self.postfix = PostfixInstance(self.port, f"[127.0.0.1]:{sink_port}",
                                           relay_domains=[], extra=settings)
            senders = self.postfix.conf / "senders"
            senders.write_text("".join(f"{login} {login}\n" for login, _ in logins))
            with (self.postfix.conf / "main.cf").open("a") as main_cf:
                main_cf.write(f"smtpd_sender_login_maps = texthash:{senders}\n")
            self.postfix.start()
        except BaseException:
            self.stop()
            raise

    def roots(self) -> list[int]:
        pids = [self.dovecot.proc.pid] if self.dovecot.proc else []
        if self.postfix is not None and self.postfix.proc is not None:
            pids.append(self.postfix.proc.pid)
        return pids + (self.dkim.roots() if self.dkim else [])

    def stop(self) -> None:
        try:
            if self.postfix is not None:
                self.postfix.stop()
        finally:
            try:
                self.dovecot.close()
            finally:
                if self.dkim is not None:
                    self.dkim.stop()


# `portcullis serve` with nothing metered: the gateway's runtime built without its
# store (gateway/serve.py, build_runtime's ``quotas``), every other part as it is:
# what a message costs without the store's share, the reference for metering's.
UNMETERED = ("import sys, gateway.serve as s; built = s.build_runtime\n"
             "def unmetered(*a, **k):\n    k['quotas'] = False\n    return built(*a, **k)\n"
             "s.build_runtime = unmetered\n"
             "from gateway.cli import main; sys.exit(main(sys.argv[1:]))")


class Portcullis(Server):
    """`portcullis serve --workers N` from this checkout or ``checkout``, with its store
    ("sqlite", "redis"), or none ("none": nothing metered, see UNMETERED), on this
    interpreter or ``python`` (a virtualenv's, with the gateway's dependencies)."""

    def __init__(self, tmp: Path, cert: tuple[Path, Path], logins: tuple[tuple[str, str], ...],
                 sink_port: int, workers: str, store: str, checkout: Path | None = None,
                 python: str | None = None) -> None:
        from gateway.dkim.keystore import generate_selector

        self.redis: RedisServer | None = None
        self.proc: subprocess.Popen | None = None
        d = tmp
        (d / "policy").mkdir()
        (d / "policy" / "acme.yaml").write_text(yaml.safe_dump({
            "customer": "acme", "domains": [DOMAIN],
            "accounts": [{"login": login, "password": password_hash(password)}
                         for login, password in logins]}))
        self.key = generate_selector(d / "keys", DOMAIN, SELECTOR, "rsa-sha256", bits=2048)
        self.port = free_port()
        try:
            if store == "redis":
                self.redis = RedisServer().start()
                store_config = {"backend": "redis", "url": self.redis.url}
            else:
                store_config = {"backend": "sqlite", "path": str(d / "state.db")}
            (d / "gateway.yaml").write_text(yaml.safe_dump({
                "hostname": "bench.gateway.test",
                "limits": {"max_message_size": BIG_MESSAGE_LIMIT},
                "listeners": {"submission": {"port": self.port,
                                             "tls": {"cert": str(cert[0]), "key": str(cert[1])}}},
                "downstream": {"outbound": {"url": f"smtp://127.0.0.1:{sink_port}",
                                            "pool_size": len(logins)}},
                "policy_dir": str(d / "policy"),
                "dkim": dkim_settings(str(d / "keys"), checkout),
                "store": store_config,
                # Limits far above what the run sends: every check is made, none refuses.
                "quotas": {k: BIG for k in ("messages_per_hour", "messages_per_day",
                                            "recipients_per_hour", "recipients_per_day",
                                            "concurrent_connections",
                                            "recipient_domains_per_hour")}
                | {"max_message_size": BIG_MESSAGE_LIMIT},
                "compromise": {"ceiling_recipients_per_hour": BIG, "spike_minimum": BIG},
            }))
            self.log = d / "gateway.log"
            launch = ["-c", UNMETERED] if store == "none" else ["-m", "gateway.cli"]
            self.proc = subprocess.Popen(
                [python or sys.executable, *launch, "serve", "-c", str(d / "gateway.yaml"),
                 "--workers", workers], stdout=subprocess.DEVNULL, stderr=self.log.open("w"),
                start_new_session=True, **checkout_env(checkout))
            wait_port(self.port)
        except BaseException:
            self.stop()
            raise

    @property
    def dkim_record(self) -> str:
        return self.key.dns_value()

    def roots(self) -> list[int]:
        # The store is part of the server: Redis's CPU and memory count with the gateway's.
        return [p.pid for p in (self.proc, self.redis and self.redis.proc) if p is not None]

    def stop(self) -> None:
        try:
            if self.proc is not None:
                stop(self.proc)  # SIGTERM: the supervisor stops its workers
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)  # anything left behind
                except ProcessLookupError:
                    pass
        finally:
            if self.redis is not None:
                self.redis.stop()

