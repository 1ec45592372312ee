"""The container image as deployed: built from the Dockerfile with podman, run with
its configuration, policy and TLS key on mounted volumes, in front of a recording
downstream.

It proves that the gateway in the image runs as an unprivileged user, that the
image's HEALTHCHECK tells a listening gateway from a silent one, that mail
submitted with AUTH to the container's 587 and 465 listeners reaches the
downstream, and that a broken mounted config stops the container with a non-zero
status and the one-line error in its log.

The podman flags are those that work on these machines (docs/docker.md,
../shared/CONTAINERS.md): vfs storage, runc, cgroupfs, explicit ulimits, host
networking (the container's listeners appear on the host's loopback and the
recording downstream on 127.0.0.1 is reachable from inside).  The image is built
once per run under a fixed tag, without intermediate layers, and the image it
replaces is removed, so runs do not pile up images.
"""

from __future__ import annotations

import os
import secrets
import shutil
import smtplib
import socket
import ssl
import subprocess
import time
import uuid
from email.message import EmailMessage
from pathlib import Path

import pytest
import yaml

from gateway.dkim.keystore import generate_selector
from tests.conftest import PASSWORD
from tests.support.podman_store import use_test_store
from tests.support.ports import free_port
from tests.support.recorder import RecordingMTA

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

ROOT = Path(__file__).resolve().parents[1]
IMAGE = "localhost/portcullis:test"
BASE = "localhost/debian:bookworm-slim"
PODMAN = ["podman", "--storage-driver=vfs", "--runtime", "runc", "--cgroup-manager=cgroupfs"]
LIMITS = ["--ulimit", "nofile=4096:4096", "--ulimit", "nproc=4096:4096"]
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
CONTAINER_UID = 10025  # the Dockerfile's `portcullis` user
# Put on the images these tests build, so that their untagged leftovers (a run
# that overlapped with another) can be pruned without touching anyone else's.
TEST_LABEL = "org.portcullis.test-image=true"

if shutil.which("podman") is None:
    pytest.skip("podman is not installed (apt-get install podman runc mmdebstrap)",
                allow_module_level=True)
if os.geteuid() != 0:
    pytest.skip("podman with these flags (vfs, runc, cgroupfs) needs root here",
                allow_module_level=True)
use_test_store()  # the tests' own vfs store, shared with tests/test_compose.py


def podman(*args: str, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([*PODMAN, *args], capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"podman {' '.join(args[:3])}… exited {proc.returncode}:\n"
                             f"{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
    return proc


def ensure_base_image(tmp: Path) -> None:
    """The Debian base made from Debian's archive, as there is no image registry here."""
    if podman("image", "exists", BASE, check=False).returncode == 0:
        return
    if shutil.which("mmdebstrap") is None:
        pytest.skip(f"{BASE} is missing and mmdebstrap is not installed to make it")
    tar = tmp / "bookworm.tar"
    proc = subprocess.run(["mmdebstrap", "--variant=minbase", "--include=ca-certificates",
                           "bookworm", str(tar)], capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        pytest.skip(f"mmdebstrap could not make the base image: {proc.stderr[-500:]}")
    podman("import", str(tar), BASE, timeout=120)


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> str:
    ensure_base_image(tmp_path_factory.mktemp("base"))
    # --layers=false: no intermediate images (with vfs each one is a full copy of
    # the filesystem); --format docker: OCI images cannot carry a HEALTHCHECK.
    podman("build", "--layers=false", "--format", "docker", "--network=host", *LIMITS,
           "-v", f"{CA_BUNDLE}:{CA_BUNDLE}:ro", "--build-arg", f"BASE={BASE}",
           "--label", TEST_LABEL, "-t", IMAGE, str(ROOT), timeout=480)
    # The image this build replaced under the fixed tag is now untagged: drop it.
    podman("image", "prune", "-f", "--filter", f"label={TEST_LABEL}", check=False)
    return IMAGE


@pytest.fixture(scope="module")
def downstream():
    mta = RecordingMTA().start()
    try:
        yield mta
    finally:
        mta.stop()


class Deployment:
    """What an operator mounts: the config folder (gateway file, policy folder, TLS
    files, the sender-id secret) read-only, and a writable state volume."""

    def __init__(self, root: Path, downstream_url: str, password_hash: str,
                 cert_files: tuple[Path, Path]):
        self.root = root
        self.ports = {n: free_port() for n in ("inbound", "submission", "submissions")}
        self.etc, self.state = root / "etc", root / "state"
        self.policy = self.etc / "policy"
        tls = self.etc / "tls"
        for d in (self.etc, tls, self.policy, self.state):
            d.mkdir()
            # Only mounted folders matter inside; the pytest tmp dir above them is root-only.
            d.chmod(0o755)
        os.chown(self.state, CONTAINER_UID, CONTAINER_UID)
        shutil.copy(cert_files[0], tls / "cert.pem")
        (tls / "cert.pem").chmod(0o644)
        # Private keys readable by the container's user and nobody else.
        for secret in (tls / "key.pem", self.etc / "sender-id.key"):
            if secret.name == "key.pem":
                shutil.copy(cert_files[1], secret)
            else:
                secret.write_text(secrets.token_urlsafe(48) + "\n")
            os.chown(secret, CONTAINER_UID, CONTAINER_UID)
            secret.chmod(0o600)
        policy = {
            "customer": "acme",
            "domains": ["acme.example"],
            "accounts": [{"login": "alice@acme.example", "password": password_hash}],
        }
        self.write(self.policy / "acme.yaml", policy)
        # Outbound mail is DKIM-signed: the key lives in the state volume, owned by the
        # container's user (the key store refuses keys others can read).
        keys = self.state / "keys"
        generate_selector(keys, "acme.example", "container", "ed25519-sha256")
        for path in [keys, *keys.rglob("*")]:
            os.chown(path, CONTAINER_UID, CONTAINER_UID)
        self.config = {
            "hostname": "mx.gateway.test",
            "listeners": {
                "inbound": {"address": "127.0.0.1", "port": self.ports["inbound"]},
                # No tls: serve makes its self-signed development certificate.
                "submission": {"address": "127.0.0.1", "port": self.ports["submission"]},
                "submissions": {"address": "127.0.0.1", "port": self.ports["submissions"],
                                "tls": {"cert": "tls/cert.pem", "key": "tls/key.pem"}},
            },
            "downstream": {"inbound": {"url": downstream_url, "timeout": 5},
                           "outbound": {"url": downstream_url, "timeout": 5}},
            "policy_dir": "policy",
            # The config folder is read-only: what the gateway writes goes to the state volume.
            "store": {"backend": "sqlite", "path": "/var/lib/portcullis/state.db"},
            "dkim": {"keys_dir": "/var/lib/portcullis/keys", "check_published": False},  # no DNS has the keys
            "hold": {"path": "/var/lib/portcullis/held"},
            "abuse": {"secret_file": "sender-id.key"},
            "limits": {"shutdown_grace": 2},
        }
        self.write_config(self.config)

    @staticmethod
    def write(path: Path, data: object) -> None:
        path.write_text(yaml.safe_dump(data))
        path.chmod(0o644)

    def write_config(self, data: object) -> None:
        self.write(self.etc / "gateway.yaml", data)

    def volumes(self) -> list[str]:
        return ["-v", f"{self.etc}:/etc/portcullis:ro",
                "-v", f"{self.state}:/var/lib/portcullis"]


class Container:
    def __init__(self, image: str, deployment: Deployment, *command: str):
        self.name = f"portcullis-test-{uuid.uuid4().hex[:10]}"
        self.image, self.deployment, self.command = image, deployment, command

    def start(self) -> Container:
        podman("run", "-d", "--name", self.name, "--network=host", *LIMITS,
               *self.deployment.volumes(), self.image, *self.command)
        return self

    def remove(self) -> None:
        podman("rm", "-f", "-v", "-t", "2", self.name, check=False, timeout=60)

    def logs(self) -> str:
        proc = podman("logs", self.name, check=False)
        return proc.stdout + proc.stderr

    def running(self) -> bool:
        proc = podman("inspect", "--format", "{{.State.Running}}", self.name, check=False)
        return proc.stdout.strip() == "true"

    def wait_for_greeting(self, port: int, tls: bool = False, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running():
                raise AssertionError(f"container exited before listening:\n{self.logs()}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=2) as raw:
                    s = ssl._create_unverified_context().wrap_socket(raw) if tls else raw
                    if s.recv(512).startswith(b"220"):
                        return
            except OSError:
                pass
            time.sleep(0.3)
        raise AssertionError(f"no SMTP greeting on {port} after {timeout}s:\n{self.logs()}")


@pytest.fixture(scope="module")
def deployment(tmp_path_factory, downstream, password_hash, cert_files) -> Deployment:
    return Deployment(tmp_path_factory.mktemp("deploy"), downstream.url, password_hash, cert_files)


@pytest.fixture(scope="module")
def gateway(image, deployment):
    container = Container(image, deployment)
    try:
        container.start()
        for name, port in deployment.ports.items():
            container.wait_for_greeting(port, tls=name == "submissions")
        yield container
    finally:
        container.remove()


def message(sender: str, recipient: str, subject: str) -> EmailMessage:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = sender, recipient, subject
    msg.set_content("sent through the container\n")
    return msg


def wait_for_subject(downstream: RecordingMTA, subject: str, timeout: float = 15):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for m in list(downstream.messages):
            if f"Subject: {subject}".encode() in m.content:
                return m
        time.sleep(0.1)
    raise AssertionError(f"{subject!r} never reached the downstream")


def test_gateway_process_runs_as_unprivileged_user(gateway):
    assert podman("exec", gateway.name, "id", "-u").stdout.strip() != "0"
    # PID 1 is `portcullis serve` itself: its real, effective, saved and fs uids.
    status = podman("exec", gateway.name, "cat", "/proc/1/status").stdout
    uids = next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1:]
    assert uids == [str(CONTAINER_UID)] * 4
    cmdline = podman("exec", gateway.name, "cat", "/proc/1/cmdline").stdout
    assert "portcullis\0serve\0-c\0/etc/portcullis/gateway.yaml" in cmdline


def test_healthcheck_passes_while_the_gateway_listens(gateway):
    proc = podman("healthcheck", "run", gateway.name, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_healthcheck_fails_when_nothing_listens(image, tmp_path, password_hash, cert_files,
                                                downstream):
    # The same image and a config of its own (host networking: fresh ports that no
    # other container listens on), but the gateway is not started.
    quiet = Deployment(tmp_path, downstream.url, password_hash, cert_files)
    idle = Container(image, quiet, "sleep", "60")
    try:
        idle.start()
        proc = podman("healthcheck", "run", idle.name, check=False, timeout=30)
        assert proc.returncode != 0
        assert "unhealthy" in proc.stdout + proc.stderr
    finally:
        idle.remove()


def test_submission_with_auth_on_587_reaches_the_downstream(gateway, deployment, downstream):
    # The 587 listener has no tls in the mounted config: a self-signed
    # development certificate, which the client cannot verify.
    insecure = ssl.create_default_context()
    insecure.check_hostname = False
    insecure.verify_mode = ssl.CERT_NONE
    with smtplib.SMTP("127.0.0.1", deployment.ports["submission"], timeout=20) as client:
        client.starttls(context=insecure)
        client.login("alice@acme.example", PASSWORD)
        refused = client.send_message(message("alice@acme.example", "friend@example.org",
                                              "via-587"))
    assert refused == {}
    got = wait_for_subject(downstream, "via-587")
    assert got.mail_from == "alice@acme.example"
    assert got.rcpt_tos == ["friend@example.org"]
    # The quota store was written to the writable state volume, not the read-only config.
    assert (deployment.state / "state.db").exists()


def test_submissions_on_465_uses_the_mounted_certificate(gateway, deployment, downstream, client_tls):
    # Verified against the test CA: the key came from the mounted /etc/portcullis/tls.
    with smtplib.SMTP_SSL("127.0.0.1", deployment.ports["submissions"], timeout=20,
                          context=client_tls) as client:
        client.login("alice@acme.example", PASSWORD)
        client.send_message(message("alice@acme.example", "friend@example.org", "via-465"))
    got = wait_for_subject(downstream, "via-465")
    assert got.rcpt_tos == ["friend@example.org"]


def test_wrong_password_is_refused_by_the_container(gateway, deployment):
    with smtplib.SMTP_SSL("127.0.0.1", deployment.ports["submissions"], timeout=20,
                          context=ssl._create_unverified_context()) as client:
        with pytest.raises(smtplib.SMTPAuthenticationError) as refused:
            client.login("alice@acme.example", "not the password")
    assert refused.value.smtp_code == 535


def test_config_error_stops_the_container_with_one_line_error(image, tmp_path, password_hash,
                                                              cert_files, downstream):
    broken = Deployment(tmp_path, downstream.url, password_hash, cert_files)
    config = dict(broken.config)
    config["listeners"] = {**config["listeners"], "inbound": {"address": "127.0.0.1", "port": 70000}}
    broken.write_config(config)
    container = Container(image, broken)
    try:
        container.start()
        status = podman("wait", container.name, timeout=60).stdout.strip()
        assert status == "2", container.logs()
        lines = [line for line in container.logs().splitlines() if line.strip()]
        assert len(lines) == 1, lines
        assert lines[0].startswith("/etc/portcullis/gateway.yaml: listeners.inbound.port: ")
        assert "65535" in lines[0]
    finally:
        container.remove()
