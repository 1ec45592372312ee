"""`portcullis keys generate | list | check`, checked against a real NSD on loopback."""

from __future__ import annotations

import base64
import io
import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dns.zone
import pytest
from cryptography.hazmat.primitives import serialization

from gateway.dkim import commands
from gateway.dkim.keystore import KeyStore, public_record
from tests.support.authdns import authdns_factory, silent_dns  # noqa: F401

DOMAIN = "acme.example"
REPO = Path(__file__).resolve().parent.parent


def run(argv: list[str]) -> tuple[int, str, str]:
    parser = commands.argparse.ArgumentParser(prog="portcullis")
    commands.add_keys_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    out, err = io.StringIO(), io.StringIO()
    code = args.func(args, out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def iso(delta: timedelta) -> str:
    return (datetime.now(UTC) + delta).strftime("%Y-%m-%dT%H:%M:%SZ")


# --- generate --------------------------------------------------------------------------
def test_generate_prints_a_zone_record_that_parses_and_carries_the_public_key(tmp_path):
    code, out, _ = run(["keys", "--keys-dir", str(tmp_path), "generate", DOMAIN, "--selector", "s1"])
    assert code == 0
    zone = dns.zone.from_text("$TTL 300\n@ SOA ns hostmaster 1 2 3 4 5\n@ NS ns\n" + out,
                              origin=DOMAIN + ".", relativize=False)
    rdata = zone.find_rdataset(f"s1._domainkey.{DOMAIN}.", "TXT")[0]
    assert all(len(s) <= 255 for s in rdata.strings) and len(rdata.strings) == 2
    [selector] = KeyStore.load(tmp_path).selectors(DOMAIN)
    assert b"".join(rdata.strings).decode() == public_record(selector.private_key)
    assert selector.bits == 2048  # the default
    assert (tmp_path / DOMAIN / "s1.key").stat().st_mode & 0o777 == 0o600
    # The private key is not printed.
    pem = (tmp_path / DOMAIN / "s1.key").read_text().splitlines()[1]
    assert pem not in out


def test_generate_ed25519_record_is_one_string_with_k_ed25519(tmp_path):
    code, out, _ = run(["keys", "--keys-dir", str(tmp_path), "generate", DOMAIN, "--selector", "e1",
                        "--algorithm", "ed25519"])
    assert code == 0
    [record] = [line for line in out.splitlines() if not line.startswith(";")]
    assert record.startswith(f'e1._domainkey.{DOMAIN}. IN TXT "v=DKIM1; k=ed25519; p=')
    assert len(base64.b64decode(record.split("p=")[1].rstrip('"'))) == 32


@pytest.mark.parametrize("bits", ["512", "1000"])
def test_generate_refuses_rsa_below_1024_bits(tmp_path, bits):
    code, out, err = run(["keys", "--keys-dir", str(tmp_path), "generate", DOMAIN, "--selector", "s1",
                          "--bits", bits])
    assert code == 2 and "RFC 8301" in err and out == ""
    assert not (tmp_path / DOMAIN / "s1.key").exists()


def test_generate_refuses_to_replace_an_existing_selector(tmp_path):
    assert run(["keys", "--keys-dir", str(tmp_path), "generate", DOMAIN, "--selector", "s1",
                "--algorithm", "ed25519"])[0] == 0
    code, _, err = run(["keys", "--keys-dir", str(tmp_path), "generate", DOMAIN, "--selector", "s1",
                        "--algorithm", "ed25519"])
    assert code == 1 and "choose a new selector" in err


def test_generate_writes_the_window(tmp_path):
    run(["keys", "--keys-dir", str(tmp_path), "generate", DOMAIN, "--selector", "s1", "--algorithm",
         "ed25519", "--not-before", "2027-01-01", "--not-after", "2027-06-01T12:00:00+02:00"])
    [s] = KeyStore.load(tmp_path).selectors(DOMAIN)
    assert s.not_before == datetime(2027, 1, 1, tzinfo=UTC)
    assert s.not_after == datetime(2027, 6, 1, 10, tzinfo=UTC)


# --- list ----------------------------------------------------------------------------------
def test_list_shows_every_selector_with_algorithm_size_window_and_state(tmp_path):
    kd = ["keys", "--keys-dir", str(tmp_path)]
    run([*kd, "generate", DOMAIN, "--selector", "active", "--bits", "1024"])
    run([*kd, "generate", DOMAIN, "--selector", "pending", "--algorithm", "ed25519",
         "--not-before", iso(timedelta(days=3))])
    run([*kd, "generate", DOMAIN, "--selector", "retiring", "--algorithm", "ed25519",
         "--not-after", iso(-timedelta(days=1))])
    run([*kd, "generate", DOMAIN, "--selector", "expired", "--algorithm", "ed25519",
         "--not-after", iso(-timedelta(days=30))])
    code, out, err = run([*kd, "list"])
    assert code == 0 and err == ""
    rows = {line.split()[1]: line.split() for line in out.splitlines()[1:]}
    assert rows["active"][2:4] == ["rsa-sha256", "1024"] and rows["active"][-1] == "active"
    assert rows["pending"][2:4] == ["ed25519-sha256", "256"] and rows["pending"][-1] == "pending"
    assert rows["retiring"][-1] == "retiring"
    assert rows["expired"][-1] == "expired"
    assert out.splitlines()[0].split() == ["DOMAIN", "SELECTOR", "ALGORITHM", "BITS", "WINDOW", "(UTC)", "STATE"]


def test_list_reports_a_broken_key_and_exits_non_zero(tmp_path):
    (tmp_path / DOMAIN).mkdir()
    (tmp_path / DOMAIN / "bad.key").write_text("nonsense")
    os.chmod(tmp_path / DOMAIN / "bad.key", 0o600)
    code, _, err = run(["keys", "--keys-dir", str(tmp_path), "list"])
    assert code == 1 and f"{tmp_path}/{DOMAIN}/bad.key: not a PEM private key" in err


def test_module_entry_point_runs_the_same_commands(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    gen = subprocess.run([sys.executable, "-m", "gateway.dkim.commands", "keys", "--keys-dir", str(tmp_path),
                          "generate", DOMAIN, "--selector", "m1", "--algorithm", "ed25519"],
                         capture_output=True, text=True, env=env, timeout=60)
    assert gen.returncode == 0 and "m1._domainkey.acme.example. IN TXT" in gen.stdout
    lst = subprocess.run([sys.executable, "-m", "gateway.dkim.commands", "keys", "--keys-dir", str(tmp_path),
                          "list"], capture_output=True, text=True, env=env, timeout=60)
    assert lst.returncode == 0 and "m1" in lst.stdout and "active" in lst.stdout


# --- check -----------------------------------------------------------------------------------
def generate_all(keys_dir: Path) -> dict[str, str]:
    outs = {}
    for sel, alg in (("r1", "rsa"), ("e1", "ed25519")):
        code, out, _ = run(["keys", "--keys-dir", str(keys_dir), "generate", DOMAIN, "--selector", sel,
                            "--algorithm", alg, "--bits", "1024"])
        assert code == 0
        outs[sel] = out
    return outs


def check(keys_dir: Path, port: int, timeout: float = 3.0) -> tuple[int, dict[str, str], str]:
    code, out, err = run(["keys", "--keys-dir", str(keys_dir), "check", DOMAIN,
                          "--nameserver", "127.0.0.1", "--port", str(port), "--timeout", str(timeout)])
    lines = {line.split()[1].split(".")[0]: line for line in out.splitlines()}
    return code, lines, err


def test_check_says_ok_when_the_published_keys_match(tmp_path, authdns_factory):  # noqa: F811
    outs = generate_all(tmp_path)
    dns = authdns_factory({DOMAIN: "\n".join(outs.values())})
    code, lines, _ = check(tmp_path, dns.port)
    assert code == 0
    assert lines["r1"].startswith("ok") and "matches" in lines["r1"]
    assert lines["e1"].startswith("ok") and "matches" in lines["e1"]


def test_check_fails_for_a_missing_a_foreign_and_a_revoked_key(tmp_path, authdns_factory):  # noqa: F811
    generate_all(tmp_path)
    other = tmp_path / "other"
    foreign = generate_all(other)["r1"]  # same name, another key
    run(["keys", "--keys-dir", str(tmp_path), "generate", DOMAIN, "--selector", "gone",
         "--algorithm", "ed25519"])
    dns = authdns_factory({DOMAIN: foreign + '\ne1._domainkey IN TXT "v=DKIM1; k=ed25519; p="\n'})
    code, lines, _ = check(tmp_path, dns.port)
    assert code == 1
    assert lines["r1"].startswith("FAIL") and "NOT the key" in lines["r1"]
    assert lines["e1"].startswith("FAIL") and "revoked" in lines["e1"]
    assert lines["gone"].startswith("FAIL") and "no such name" in lines["gone"]


def test_check_accepts_a_key_published_in_pkcs1_form(tmp_path, authdns_factory):  # noqa: F811
    run(["keys", "--keys-dir", str(tmp_path), "generate", DOMAIN, "--selector", "r1", "--bits", "1024"])
    [s] = KeyStore.load(tmp_path).selectors(DOMAIN)
    der = s.private_key.public_key().public_bytes(serialization.Encoding.DER,
                                                  serialization.PublicFormat.PKCS1)
    dns = authdns_factory({DOMAIN: f'r1._domainkey IN TXT "v=DKIM1; k=rsa; p={base64.b64encode(der).decode()}"'})
    code, lines, _ = check(tmp_path, dns.port)
    assert code == 0 and "PKCS#1" in lines["r1"]


def test_check_ignores_an_expired_selector_that_is_no_longer_published(tmp_path, authdns_factory):  # noqa: F811
    code, out, _ = run(["keys", "--keys-dir", str(tmp_path), "generate", DOMAIN, "--selector", "cur",
                        "--algorithm", "ed25519"])
    run(["keys", "--keys-dir", str(tmp_path), "generate", DOMAIN, "--selector", "old",
         "--algorithm", "ed25519", "--not-after", iso(-timedelta(days=60))])
    dns = authdns_factory({DOMAIN: out})
    code, lines, _ = check(tmp_path, dns.port)
    assert code == 0
    assert lines["old"].startswith("--") and "expired" in lines["old"]


def test_check_reports_a_dns_failure_distinctly(tmp_path, silent_dns):  # noqa: F811
    run(["keys", "--keys-dir", str(tmp_path), "generate", DOMAIN, "--selector", "e1", "--algorithm", "ed25519"])
    start = time.monotonic()
    code, lines, _ = check(tmp_path, silent_dns.port, timeout=1.0)
    assert code == 1 and "DNS failure" in lines["e1"]
    assert time.monotonic() - start < 10


def test_check_for_a_domain_without_keys_says_so(tmp_path):
    code, _, err = run(["keys", "--keys-dir", str(tmp_path), "check", DOMAIN, "--nameserver", "127.0.0.1"])
    assert code == 1 and "no key for acme.example" in err
