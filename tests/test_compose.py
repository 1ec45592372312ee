"""examples/docker-compose.yml, brought up for real (issue 17): podman-compose runs
the file as it is in the repository (copied, with the config folder it mounts, into
a temporary folder, where the sender-id secret is made), the operator's one step
before the first start (a DKIM key for acme.example in the state volume), then
`up -d`; a message in on the published MX port and one through 587 with STARTTLS
and AUTH must both show in Postfix's log, and the quota store must be Redis; then
`down -v`.

The images are built only when what goes into them changed: each is tagged with a
hash of its inputs (the Dockerfile and the sources it copies), and an older image
of the same kind is removed when a new one is built.  The first run takes a few
minutes (mostly the gateway image); later ones reuse the images.

Host prerequisites (scripts/setup.sh, pyproject.toml's test extra): podman, runc,
mmdebstrap (the Debian base, as no registry is reachable), the CNI dnsname plugin
(services find each other by name), podman-compose 1.2 or newer.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import shutil
import smtplib
import ssl
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.support.podman_store import use_test_store
from tests.support.ports import free_port

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
BASE = "localhost/debian:bookworm-slim"
LIMITS = ["--ulimit", "nofile=4096:4096", "--ulimit", "nproc=4096:4096"]
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
LABEL = "org.portcullis.compose-test-image"
CONTAINER_UID = 10025
PASSWORD = "correct horse battery staple"  # examples/container/policy/acme.yaml
COMPOSE = [sys.executable, "-m", "podman_compose"]


def run(args: list[str], timeout: float = 120, check: bool = True, env=None
        ) -> subprocess.CompletedProcess:
    proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(args[:5])}… exited {proc.returncode}:\n"
                             f"{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
    return proc


def podman(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    return run(["podman", *args], timeout=timeout, check=check)


def inputs_hash(paths: list[Path]) -> str:
    """A hash of every file under ``paths`` (names and contents, caches left out)."""
    digest = hashlib.sha256()
    for top in paths:
        files = [top] if top.is_file() else sorted(
            p for p in top.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
        for path in files:
            digest.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def ensure_base_image(tmp: Path) -> None:
    """The Debian base made from Debian's archive, as there is no image registry here."""
    if podman("image", "exists", BASE, check=False).returncode == 0:
        return
    tar = tmp / "bookworm.tar"
    run(["mmdebstrap", "--variant=minbase", "--include=ca-certificates", "bookworm", str(tar)],
        timeout=600)
    podman("import", str(tar), BASE, timeout=300)


def ensure_image(kind: str, context: Path, inputs: list[Path]) -> str:
    """``localhost/portcullis-compose-KIND:HASH``, built unless it exists; older
    images of the same kind (this test's label) are removed."""
    repo = f"localhost/portcullis-compose-{kind}"
    tag = f"{repo}:{inputs_hash(inputs)}"
    if podman("image", "exists", tag, check=False).returncode != 0:
        # --layers=false: with vfs storage every intermediate layer is a full copy.
        # --format docker: the gateway image's HEALTHCHECK survives.
        podman("build", "--layers=false", "--format", "docker", "--network=host", *LIMITS,
               "-v", f"{CA_BUNDLE}:{CA_BUNDLE}:ro", "--build-arg", f"BASE={BASE}",
               "--label", f"{LABEL}={kind}", "-t", tag, str(context), timeout=900)
    listed = podman("images", "--filter", f"label={LABEL}={kind}", "--format",
                    "{{.Repository}}:{{.Tag}} {{.ID}}").stdout.split("\n")
    for line in filter(None, listed):
        name, image_id = line.split()
        if name != tag:
            podman("rmi", "-f", image_id, check=False)
    return tag


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, str]:
    assert shutil.which("podman"), "podman is missing: scripts/setup.sh installs it"
    assert os.geteuid() == 0, "podman with vfs/runc/cgroupfs needs root here"
    use_test_store()
    ensure_base_image(tmp_path_factory.mktemp("base"))
    return {
        "PORTCULLIS_IMAGE": ensure_image(
            "gateway", ROOT, [ROOT / "Dockerfile", ROOT / "pyproject.toml", ROOT / "README.md",
                              ROOT / "gateway"]),
        "POSTFIX_IMAGE": ensure_image("postfix", EXAMPLES / "postfix", [EXAMPLES / "postfix"]),
        "REDIS_IMAGE": ensure_image("redis", ROOT / "tests/support/redis-image",
                                    [ROOT / "tests/support/redis-image"]),
    }


class Project:
    """The example as an operator lays it out: the compose file, the folder it
    mounts read-only (with the sender-id secret made once), Postfix's build folder."""

    def __init__(self, tmp: Path, images: dict[str, str]):
        self.dir = tmp / "examples"
        self.dir.mkdir()
        shutil.copy(EXAMPLES / "docker-compose.yml", self.dir / "docker-compose.yml")
        shutil.copytree(EXAMPLES / "container", self.dir / "container")
        shutil.copytree(EXAMPLES / "postfix", self.dir / "postfix")
        for path in [self.dir, *self.dir.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
        # acme.example is in no DNS here: the trial set-up docs/docker.md gives turns
        # the publication check off on this copy (the example keeps it on).
        conf = self.dir / "container" / "gateway.yaml"
        conf.write_text(conf.read_text().replace(
            "  keys_dir: /var/lib/portcullis/keys\n",
            "  keys_dir: /var/lib/portcullis/keys\n  check_published: false\n", 1))
        assert "check_published: false" in conf.read_text()
        key = self.dir / "container" / "sender-id.key"
        key.write_text(secrets.token_urlsafe(48) + "\n")
        os.chown(key, CONTAINER_UID, CONTAINER_UID)
        key.chmod(0o600)
        tmp.chmod(0o755)
        self.name = f"pc{uuid.uuid4().hex[:8]}"
        self.ports = {"SMTP_PORT": free_port(), "SUBMISSION_PORT": free_port(),
                      "SUBMISSIONS_PORT": free_port()}
        self.env = {**os.environ, **images, "BASE_IMAGE": BASE,
                    **{k: str(v) for k, v in self.ports.items()}}

    def compose(self, *args: str, timeout: float = 300, check: bool = True):
        return run([*COMPOSE, "-f", str(self.dir / "docker-compose.yml"), "-p", self.name,
                    "--podman-run-args", " ".join(LIMITS), *args],
                   timeout=timeout, check=check, env=self.env)

    def logs(self, service: str) -> str:
        proc = podman("logs", f"{self.name}_{service}_1", check=False)
        return proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def project(tmp_path_factory, images):
    p = Project(tmp_path_factory.mktemp("compose"), images)
    try:
        # Before the first start (docs/docker.md): acme.example signs, so it needs a key.
        p.compose("run", "--rm", "--no-deps", "portcullis", "portcullis", "keys",
                  "--keys-dir", "/var/lib/portcullis/keys", "generate", "acme.example",
                  "--selector", "s1")
        p.compose("up", "-d")
        yield p
    finally:
        p.compose("down", "-v", timeout=300, check=False)
        leftovers = podman("ps", "-a", "--filter", f"name={p.name}_", "--format", "{{.Names}}")
        assert not leftovers.stdout.strip(), leftovers.stdout


def greeting(port: int) -> bool:
    try:
        with smtplib.SMTP("127.0.0.1", port, timeout=5) as c:
            return c.noop()[0] == 250
    except (OSError, smtplib.SMTPException):
        return False


def eventually(check, timeout: float, what: str, project: Project) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}\n--- gateway:\n{project.logs('portcullis')[-3000:]}"
                                 f"\n--- postfix:\n{project.logs('postfix')[-3000:]}")
        time.sleep(0.5)


def test_the_compose_example_carries_mail_in_and_out_through_postfix(project):
    mx, submission = project.ports["SMTP_PORT"], project.ports["SUBMISSION_PORT"]
    eventually(lambda: greeting(mx) and greeting(submission), 90, "the gateway never greeted",
               project)
    inbound_id = f"<mx-{uuid.uuid4().hex}@sender.example>"
    with smtplib.SMTP("127.0.0.1", mx, timeout=30) as c:
        refused = c.sendmail("someone@sender.example", ["alice@acme.example"],
                             f"From: someone@sender.example\r\nTo: alice@acme.example\r\n"
                             f"Message-ID: {inbound_id}\r\nSubject: in\r\n\r\nhi\r\n".encode())
        assert refused == {}
    outbound_id = f"<out-{uuid.uuid4().hex}@acme.example>"
    tls = ssl.create_default_context()
    tls.check_hostname, tls.verify_mode = False, ssl.CERT_NONE  # the development certificate
    with smtplib.SMTP("127.0.0.1", submission, timeout=30) as c:
        c.ehlo("client.example")
        c.starttls(context=tls)
        c.ehlo("client.example")
        c.login("alice@acme.example", PASSWORD)
        refused = c.sendmail("alice@acme.example", ["someone@example.org"],
                             f"From: alice@acme.example\r\nTo: someone@example.org\r\n"
                             f"Message-ID: {outbound_id}\r\nSubject: out\r\n\r\nhi\r\n".encode())
        assert refused == {}

    def queue_id(message_id: str) -> str | None:
        found = re.search(rf"postfix/cleanup\[\d+\]: ([0-9A-F]+): message-id={re.escape(message_id)}",
                          project.logs("postfix"))
        return found.group(1) if found else None

    eventually(lambda: queue_id(inbound_id) and queue_id(outbound_id), 60,
               "Postfix never queued both messages", project)
    log = project.logs("postfix")
    inbound, outbound = queue_id(inbound_id), queue_id(outbound_id)
    # Postfix took both from the gateway's fixed address (mynetworks trusts only it).
    assert re.search(rf"{inbound}: client=\S*\[172\.30\.25\.10\]", log), log
    assert re.search(rf"{outbound}: client=\S*\[172\.30\.25\.10\]", log), log
    assert f"{outbound}: from=<alice@acme.example>" in log
    eventually(lambda: re.search(rf"{inbound}: to=<alice@acme.example>, relay=virtual.*status=sent",
                                 project.logs("postfix")), 30, "no delivery to the Maildir", project)
    # Quotas, lockouts and the journal live in the compose service redis.
    keys = podman("exec", f"{project.name}_redis_1", "redis-cli", "dbsize").stdout
    assert int(keys.strip()) > 0, keys
