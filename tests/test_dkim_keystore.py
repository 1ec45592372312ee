"""The key store: layout on disk, errors as `file: field: problem`, states, rotation, reload."""

from __future__ import annotations

import os
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from gateway.config.dkim import DkimPolicy
from gateway.dkim.keystore import KeyStore, generate_selector, public_record, zone_record
from gateway.dkim.signing_keys import check_signing_keys

T0 = datetime(2027, 1, 1, tzinfo=UTC)
DAY = timedelta(days=1)


def ts(when: datetime) -> float:
    return when.timestamp()


@pytest.fixture
def keys_dir(tmp_path: Path) -> Path:
    d = tmp_path / "keys"
    d.mkdir()
    return d


def write_key(path: Path, pem: bytes, mode: int = 0o600) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pem)
    os.chmod(path, mode)


def ed_pem() -> bytes:
    return ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


# --- layout and loading ------------------------------------------------------------
def test_generated_keys_load_with_their_algorithm_size_and_window(keys_dir):
    generate_selector(keys_dir, "Acme.Example.", "s1", "rsa-sha256", 1024)
    generate_selector(keys_dir, "acme.example", "e1", "ed25519-sha256",
                      not_before=T0, not_after=T0 + 30 * DAY)
    store = KeyStore.load(keys_dir)
    assert store.errors == ()
    by_name = {s.selector: s for s in store.selectors("acme.example")}
    assert (by_name["s1"].algorithm, by_name["s1"].bits) == ("rsa-sha256", 1024)
    assert (by_name["e1"].algorithm, by_name["e1"].bits) == ("ed25519-sha256", 256)
    assert (by_name["e1"].not_before, by_name["e1"].not_after) == (T0, T0 + 30 * DAY)
    key_file = keys_dir / "acme.example" / "s1.key"
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert (keys_dir / "acme.example").stat().st_mode & 0o777 == 0o700


def test_generate_never_overwrites_an_existing_selector(keys_dir):
    generate_selector(keys_dir, "acme.example", "s1", "ed25519-sha256")
    before = (keys_dir / "acme.example" / "s1.key").read_bytes()
    with pytest.raises(FileExistsError):
        generate_selector(keys_dir, "acme.example", "s1", "ed25519-sha256")
    assert (keys_dir / "acme.example" / "s1.key").read_bytes() == before


@pytest.mark.parametrize("bits", [512, 1023, 4097])
def test_generate_refuses_rsa_sizes_outside_rfc8301(keys_dir, bits):
    with pytest.raises(ValueError, match="RFC 8301"):
        generate_selector(keys_dir, "acme.example", "s1", "rsa-sha256", bits)
    assert not (keys_dir / "acme.example" / "s1.key").exists()


@pytest.mark.parametrize("selector", ["Upper", "has_underscore", "-dash", "a..b", ""])
def test_generate_refuses_a_selector_that_is_not_a_dns_label(keys_dir, selector):
    with pytest.raises(ValueError, match="selector"):
        generate_selector(keys_dir, "acme.example", selector, "ed25519-sha256")


def test_private_keys_never_appear_in_a_repr(keys_dir):
    s = generate_selector(keys_dir, "acme.example", "s1", "ed25519-sha256")
    pem = (keys_dir / "acme.example" / "s1.key").read_text()
    body = "".join(pem.splitlines()[1:-1])
    for text in (repr(s), repr(s.signing_key()), repr(KeyStore.load(keys_dir).selectors())):
        assert body not in text and "private_key=" not in text


def _errors(keys_dir: Path) -> list[str]:
    return [str(e) for e in KeyStore.load(keys_dir).errors]


def test_a_key_readable_by_others_is_an_error_naming_file_and_fix(keys_dir):
    write_key(keys_dir / "acme.example" / "s1.key", ed_pem(), mode=0o644)
    [error] = _errors(keys_dir)
    assert error.startswith(f"{keys_dir}/acme.example/s1.key: mode: 0644")
    assert "chmod 600" in error


def test_a_malformed_key_is_an_error(keys_dir):
    write_key(keys_dir / "acme.example" / "s1.key", b"-----BEGIN PRIVATE KEY-----\nnope\n-----END PRIVATE KEY-----\n")
    assert _errors(keys_dir) == [f"{keys_dir}/acme.example/s1.key: not a PEM private key"]


def test_an_unreadable_key_is_an_error(keys_dir):
    path = keys_dir / "acme.example" / "s1.key"
    path.parent.mkdir()
    path.mkdir(mode=0o700)  # a directory where a file should be: reading fails
    [error] = _errors(keys_dir)
    assert error.startswith(f"{path}: cannot read")


def test_an_encrypted_key_is_an_error(keys_dir):
    pem = ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"))
    write_key(keys_dir / "acme.example" / "s1.key", pem)
    assert "encrypted" in _errors(keys_dir)[0]


def test_an_rsa_key_below_1024_bits_is_an_error(keys_dir):
    # cryptography refuses to make one; OpenSSL still can, and operators may have one.
    path = keys_dir / "acme.example" / "s1.key"
    path.parent.mkdir()
    subprocess.run(["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:512",
                    "-out", str(path)], check=True, capture_output=True, timeout=30)
    os.chmod(path, 0o600)
    assert _errors(keys_dir) == [f"{path}: bits: RSA key of 512 bits; RFC 8301 needs 1024 to 4096"]


def test_metadata_disagreeing_with_the_key_is_an_error(keys_dir):
    write_key(keys_dir / "acme.example" / "s1.key", ed_pem())
    (keys_dir / "acme.example" / "s1.yaml").write_text("algorithm: rsa-sha256\n")
    assert _errors(keys_dir) == [
        f"{keys_dir}/acme.example/s1.yaml: algorithm: says rsa-sha256 but s1.key is ed25519-sha256"]


@pytest.mark.parametrize(("yaml_text", "expected"), [
    ("algorithm: ed25519-sha256\nnot_before: 2027-02-01T00:00:00Z\nnot_after: 2027-01-01T00:00:00Z\n",
     "not_after: must be later than not_before"),
    ("algorithm: ed25519-sha256\nnot_before: 2027-02-01T00:00:00\n", "not_before: give a time zone"),
    ("algorithm: ed25519-sha256\nnot_befor: 2027-02-01T00:00:00Z\n", "not_befor: unknown key"),
    ("algorithm: [\n", "YAML syntax error"),
    ("- a list\n", "must be a mapping"),
])
def test_malformed_metadata_is_an_error(keys_dir, yaml_text, expected):
    write_key(keys_dir / "acme.example" / "s1.key", ed_pem())
    (keys_dir / "acme.example" / "s1.yaml").write_text(yaml_text)
    [error] = _errors(keys_dir)
    assert error.startswith(f"{keys_dir}/acme.example/s1.yaml: ") and expected in error


def test_metadata_without_a_key_file_is_an_error(keys_dir):
    (keys_dir / "acme.example").mkdir()
    (keys_dir / "acme.example" / "s1.yaml").write_text("algorithm: ed25519-sha256\n")
    assert "no key file s1.key" in _errors(keys_dir)[0]


def test_a_domain_directory_must_be_the_normalised_domain(keys_dir):
    write_key(keys_dir / "Acme.Example" / "s1.key", ed_pem())
    assert "name the directory acme.example" in _errors(keys_dir)[0]


def test_a_missing_key_directory_is_an_error(tmp_path):
    assert _errors(tmp_path / "nope") == [f"{tmp_path}/nope: key directory does not exist"]


def test_a_key_file_without_metadata_signs_always(keys_dir):
    write_key(keys_dir / "acme.example" / "s1.key", ed_pem())
    store = KeyStore.load(keys_dir)
    assert [k.selector for k in store.active("acme.example", ts(T0))] == ["s1"]


# --- states and rotation -----------------------------------------------------------------
@pytest.mark.parametrize(("at", "state"), [
    (T0 - timedelta(seconds=1), "pending"),
    (T0, "active"),
    (T0 + 10 * DAY - timedelta(seconds=1), "active"),
    (T0 + 10 * DAY, "retiring"),  # stopped signing, DNS record must stay
    (T0 + 17 * DAY - timedelta(seconds=1), "retiring"),
    (T0 + 17 * DAY, "expired"),  # 7 days of publish grace are over
])
def test_a_selector_state_follows_its_window_and_the_publish_grace(keys_dir, at, state):
    generate_selector(keys_dir, "acme.example", "s1", "ed25519-sha256", not_before=T0, not_after=T0 + 10 * DAY)
    store = KeyStore.load(keys_dir, publish_grace_days=7)
    [s] = store.selectors("acme.example")
    assert s.state(ts(at), store.grace) == state
    assert bool(store.active("acme.example", ts(at))) == (state == "active")


def test_active_keys_are_computed_at_call_time_so_windows_open_and_close_without_reload(keys_dir):
    generate_selector(keys_dir, "acme.example", "old", "rsa-sha256", 1024, not_after=T0 + 5 * DAY)
    generate_selector(keys_dir, "acme.example", "new", "rsa-sha256", 1024, not_before=T0)
    generate_selector(keys_dir, "acme.example", "ed", "ed25519-sha256")
    store = KeyStore.load(keys_dir)

    def active(at):
        return [k.selector for k in store.active("acme.example", ts(at))]

    assert active(T0 - DAY) == ["old", "ed"]
    assert active(T0) == ["new", "old", "ed"]  # RSA first, newest first; then Ed25519
    assert active(T0 + 5 * DAY) == ["new", "ed"]


def test_reload_picks_up_a_new_selector(keys_dir):
    generate_selector(keys_dir, "acme.example", "s1", "ed25519-sha256")
    store = KeyStore.load(keys_dir)
    generate_selector(keys_dir, "acme.example", "s2", "ed25519-sha256")
    assert [k.selector for k in store.active("acme.example", ts(T0))] == ["s1"]
    assert store.reload() == []
    assert sorted(k.selector for k in store.active("acme.example", ts(T0))) == ["s1", "s2"]


def test_reload_with_a_broken_key_keeps_the_keys_in_use_and_reports(keys_dir):
    generate_selector(keys_dir, "acme.example", "s1", "ed25519-sha256")
    store = KeyStore.load(keys_dir)
    write_key(keys_dir / "acme.example" / "s2.key", b"garbage")
    errors = store.reload()
    assert [str(e) for e in errors] == [f"{keys_dir}/acme.example/s2.key: not a PEM private key"]
    assert [k.selector for k in store.active("acme.example", ts(T0))] == ["s1"]


# --- the DNS record ----------------------------------------------------------------------
def test_zone_record_splits_long_values_into_255_octet_strings():
    key = rsa.generate_private_key(public_exponent=65537, key_size=4096)
    value = public_record(key)
    text = zone_record("s1._domainkey.acme.example", value)
    strings = [line.strip().strip('"( )') for line in text.splitlines()[1:]]
    assert all(len(s) <= 255 for s in strings)
    assert "".join(strings) == value
    assert text.startswith("s1._domainkey.acme.example. IN TXT (")


# --- check-config ------------------------------------------------------------------------
def test_check_config_reports_signed_domains_without_a_usable_key(keys_dir):
    generate_selector(keys_dir, "acme.example", "s1", "ed25519-sha256")
    generate_selector(keys_dir, "shop.example", "s1", "ed25519-sha256", not_before=T0 + DAY)
    store = KeyStore.load(keys_dir)
    customers = [
        ("policy/acme.yaml", ("acme.example", "shop.example", "bare.example"), DkimPolicy()),
        ("policy/other.yaml", ("other.example",), DkimPolicy(sign=["elsewhere.example"])),
    ]
    errors = [str(e) for e in check_signing_keys(store, customers, ts(T0))]
    assert errors == [
        "policy/acme.yaml: dkim.sign: shop.example is signed but has no active key now (s1 pending)",
        f"policy/acme.yaml: dkim.sign: bare.example is signed but {keys_dir}/bare.example holds no key; "
        "make one with `portcullis keys generate bare.example --selector NAME`",
        "policy/other.yaml: dkim.sign[0]: elsewhere.example is not one of this customer's domains",
    ]


def test_check_config_is_quiet_when_every_signed_domain_has_an_active_key(keys_dir):
    generate_selector(keys_dir, "acme.example", "s1", "ed25519-sha256")
    store = KeyStore.load(keys_dir)
    policy = DkimPolicy(sign=["acme.example"])
    assert check_signing_keys(store, [("p.yaml", ("acme.example", "unsigned.example"), policy)], ts(T0)) == []


def test_check_config_includes_key_loading_errors(keys_dir):
    write_key(keys_dir / "acme.example" / "s1.key", ed_pem(), mode=0o640)
    store = KeyStore.load(keys_dir)
    errors = [str(e) for e in check_signing_keys(store, [], ts(T0))]
    assert len(errors) == 1 and "mode: 0640" in errors[0]
