"""Policy reloads re-parse only the files that changed (gateway/config/policy_cache.py),
give the same directory and the same errors as a full load, and a process pool
parses many files with the same results as one file after another."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from gateway.config import load
from gateway.config.errors import ConfigError
from gateway.config.load import load_policies
from gateway.config.policy_cache import RACY_NS, PolicyCache
from tests.conftest import customer_policies
from tests.support.gateway import GatewayUnderTest

OLD = time.time() - 3600  # files older than the racy window, as on a real server


def write(path: Path, text: str, *, age: bool = True) -> None:
    path.write_text(text)
    if age:
        os.utime(path, (OLD, OLD))


def policy_text(n: int, password_hash: str, extra_domain: str = "") -> str:
    domains = f"[c{n}.example{', ' + extra_domain if extra_domain else ''}]"
    return (f"customer: c{n}\ndomains: {domains}\naccounts:\n"
            f"  - login: u@c{n}.example\n    password: '{password_hash}'\n")


@pytest.fixture
def policy_dir(tmp_path, password_hash):
    d = tmp_path / "policy"
    d.mkdir()
    for n in range(5):
        write(d / f"c{n}.yaml", policy_text(n, password_hash))
    return d


@pytest.fixture
def parses(monkeypatch):
    """The paths the loader actually parsed, in order."""
    seen: list[str] = []
    real = load.load_policy_file

    def counting(path, errors):
        seen.append(os.path.basename(path))
        return real(path, errors)

    monkeypatch.setattr(load, "load_policy_file", counting)
    return seen


def reload(policy_dir: Path, cache: PolicyCache):
    errors: list = []
    directory = load_policies(policy_dir, errors, policy_cache=cache)
    return directory, [str(e) for e in errors]


def test_a_reload_after_one_change_parses_only_that_file(policy_dir, password_hash, parses):
    cache = PolicyCache()
    first, errors = reload(policy_dir, cache)
    assert errors == [] and len(first.customers) == 5
    assert sorted(parses) == [f"c{n}.yaml" for n in range(5)]
    parses.clear()

    write(policy_dir / "c3.yaml", policy_text(3, password_hash, "c3-new.example"), age=False)
    second, errors = reload(policy_dir, cache)
    assert errors == []
    assert parses == ["c3.yaml"]
    assert second.customer_for_domain("c3-new.example") == "c3"
    assert second.customers["c1"] is first.customers["c1"]  # reused, not re-parsed
    assert cache.parsed == 6 and cache.reused == 4


def test_an_unchanged_directory_is_not_parsed_again(policy_dir, parses):
    cache = PolicyCache()
    reload(policy_dir, cache)
    parses.clear()
    directory, errors = reload(policy_dir, cache)
    assert parses == [] and errors == [] and len(directory.customers) == 5


def test_a_deleted_file_disappears(policy_dir, parses):
    cache = PolicyCache()
    reload(policy_dir, cache)
    parses.clear()
    (policy_dir / "c2.yaml").unlink()
    directory, errors = reload(policy_dir, cache)
    assert errors == [] and parses == []
    assert "c2" not in directory.customers
    assert directory.customer_for_domain("c2.example") is None
    assert directory.account("u@c2.example") is None
    assert len(cache) == 4


def test_a_file_touched_without_change_is_parsed_again_with_the_same_result(policy_dir, parses):
    cache = PolicyCache()
    first, _ = reload(policy_dir, cache)
    parses.clear()
    os.utime(policy_dir / "c4.yaml", (OLD + 10, OLD + 10))
    second, errors = reload(policy_dir, cache)
    assert parses == ["c4.yaml"] and errors == []
    assert second.customers["c4"] == first.customers["c4"]
    assert second.domains == first.domains and second.accounts.keys() == first.accounts.keys()


def test_a_file_written_just_now_is_not_trusted_until_it_is_older(policy_dir, password_hash, parses):
    # Same size, same (coarse) mtime tick: only the racy rule catches such a rewrite.
    cache = PolicyCache()
    write(policy_dir / "c0.yaml", policy_text(0, password_hash), age=False)
    reload(policy_dir, cache)
    parses.clear()
    reload(policy_dir, cache)
    assert parses == ["c0.yaml"]
    recent = time.time() - 2 * RACY_NS / 1e9
    os.utime(policy_dir / "c0.yaml", (recent, recent))
    reload(policy_dir, cache)
    parses.clear()
    reload(policy_dir, cache)
    assert parses == []


def test_a_clash_with_an_unchanged_file_is_still_found(policy_dir, password_hash):
    cache = PolicyCache()
    reload(policy_dir, cache)
    write(policy_dir / "c9.yaml", policy_text(9, password_hash, "c1.example"), age=False)
    directory, errors = reload(policy_dir, cache)
    assert errors == [f"{policy_dir}/c9.yaml: domains[1]: c1.example is already claimed by "
                      f"{policy_dir}/c1.yaml"]
    (policy_dir / "c9.yaml").unlink()
    directory, errors = reload(policy_dir, cache)
    assert errors == [] and len(directory.customers) == 5


def test_cached_errors_are_reported_again_until_the_file_is_fixed(policy_dir, password_hash):
    cache = PolicyCache()
    write(policy_dir / "c1.yaml", "customer: c1\ndomains: [c1.example]\nbogus: 1\n")
    expected = [f"{policy_dir}/c1.yaml: bogus: unknown key"]
    assert reload(policy_dir, cache)[1] == expected
    assert reload(policy_dir, cache)[1] == expected  # from the cache, same error
    write(policy_dir / "c1.yaml", policy_text(1, password_hash), age=False)
    assert reload(policy_dir, cache)[1] == []


def test_the_process_pool_gives_what_one_process_gives(tmp_path, password_hash, monkeypatch):
    d = tmp_path / "many"
    d.mkdir()
    for n in range(40):
        write(d / f"c{n:02}.yaml", policy_text(n, password_hash))
    write(d / "c05.yaml", "customer: [\n")  # syntax error
    write(d / "c17.yaml", policy_text(18, password_hash))  # customer clash with c18
    write(d / "c30.yaml", "customer: c30\ndomains: [c30.example]\naccounts:\n"
                          "  - login: x@c30.example\n    password: secret\n")
    serial_errors: list = []
    serial = load_policies(d, serial_errors)
    monkeypatch.setattr(load, "PARALLEL_THRESHOLD", 3)
    monkeypatch.setattr(load, "_CHUNK", 7)
    monkeypatch.setattr(load.threading, "active_count", lambda: 1)  # pytest may run threads
    pool_errors: list = []
    pooled = load_policies(d, pool_errors)
    assert len(serial_errors) >= 3
    assert pool_errors == serial_errors
    assert pooled.customers == serial.customers and pooled.files == serial.files


def test_a_gateway_reload_uses_the_cache_and_keeps_the_old_config_on_a_new_error(
        tmp_path, downstream, cert_files, password_hash):
    policies = customer_policies(password_hash)
    gw = GatewayUnderTest(tmp_path, inbound_url=downstream.url, outbound_url=downstream.url,
                          policies=policies, cert=cert_files)
    for f in gw.policy_dir.iterdir():
        os.utime(f, (OLD, OLD))
    gw.start()
    try:
        assert gw.gateway is not None
        cache = gw.gateway._policy_cache
        assert cache is not None and len(cache) == len(policies)
        parsed = cache.parsed
        assert gw.reload() is True
        assert cache.parsed == parsed  # nothing changed: nothing parsed
        bad = gw.policy_dir / "acme.yaml"
        bad.write_text(bad.read_text() + "surprise: 1\n")
        assert gw.reload() is False
        assert cache.parsed == parsed + 1
        assert gw.gateway.runtime.current().directory.customer_for_domain("acme.example") == "acme"
    finally:
        gw.stop()


def many_files(d: Path, n: int, password_hash: str) -> list[str]:
    d.mkdir()
    for i in range(n):
        write(d / f"c{i:02}.yaml", policy_text(i, password_hash))
    return [str(d / f"c{i:02}.yaml") for i in range(n)]


@pytest.fixture
def small_pool(monkeypatch):
    """The process pool for a handful of files, on two cores at least."""
    monkeypatch.setattr(load, "PARALLEL_THRESHOLD", 3)
    monkeypatch.setattr(load, "_CHUNK", 5)
    monkeypatch.setattr(load.threading, "active_count", lambda: 1)  # pytest may run threads
    monkeypatch.setattr(load.os, "cpu_count", lambda: 2)


def test_this_process_and_the_workers_share_the_files_and_keep_their_order(
        tmp_path, password_hash, monkeypatch, small_pool):
    paths = many_files(tmp_path / "many", 60, password_hash)
    real = load.load_policy_file

    def tagged(path, errors):  # which process parsed each file, as an extra "error"
        time.sleep(0.003)
        policy = real(path, errors)
        errors.append(ConfigError(str(path), "pid", str(os.getpid())))
        return policy

    monkeypatch.setattr(load, "load_policy_file", tagged)
    errors: list[ConfigError] = []
    directory = load_policies(tmp_path / "many", errors)
    assert [e.file for e in errors] == paths
    parsers = {e.problem for e in errors}
    assert str(os.getpid()) in parsers and len(parsers) >= 2
    assert sorted(directory.customers) == sorted(f"c{i}" for i in range(60))
    assert directory.customer_for_domain("c59.example") == "c59"
    assert directory.account("u@c0.example") is not None


def test_a_crash_in_a_worker_reaches_the_caller(tmp_path, password_hash, monkeypatch, small_pool):
    many_files(tmp_path / "many", 40, password_hash)
    real = load.load_policy_file
    parent = os.getpid()

    def crashing(path, errors):
        if os.getpid() != parent:
            raise RuntimeError(f"bug while parsing {path}")
        time.sleep(0.003)
        return real(path, errors)

    monkeypatch.setattr(load, "load_policy_file", crashing)
    with pytest.raises(RuntimeError, match="bug while parsing"):
        load_policies(tmp_path / "many", [])


def test_a_first_load_in_the_pool_records_keys_that_a_reload_trusts(tmp_path, password_hash, small_pool):
    many_files(tmp_path / "many", 30, password_hash)
    cache = PolicyCache()
    first, errors = reload(tmp_path / "many", cache)
    assert errors == [] and len(first.customers) == 30 and cache.parsed == 30
    again, errors = reload(tmp_path / "many", cache)
    assert errors == [] and cache.parsed == 30 and cache.reused == 30
    assert again.customers == first.customers


@pytest.mark.parametrize("cached", [False, True], ids=["first load", "reload"])
def test_links_are_followed_and_what_is_not_a_file_is_an_error(tmp_path, password_hash, cached):
    # Issue 14: a directory or a dangling link named like a policy file was skipped
    # in silence, and its customer vanished at the next reload.
    d = tmp_path / "policy"
    d.mkdir()
    elsewhere = tmp_path / "elsewhere.yaml"
    write(elsewhere, policy_text(1, password_hash))
    write(d / "c0.yaml", policy_text(0, password_hash))
    (d / "c1.yaml").symlink_to(elsewhere)
    (d / "broken.yaml").symlink_to(tmp_path / "nowhere.yaml")
    (d / "dir.yaml").mkdir()
    (d / "notes.txt").write_text("not a policy")
    cache = PolicyCache()
    if cached:
        reload(d, cache)
        write(d / "c2.yaml", policy_text(2, password_hash))
    directory, errors = reload(d, cache)
    assert [str(e) for e in errors] == [
        f"{d}/broken.yaml: is a symbolic link to nothing ({tmp_path}/nowhere.yaml does not exist)",
        f"{d}/dir.yaml: is a directory, not a policy file: move it out of the policy directory "
        "or give it another name",
    ]
    assert sorted(directory.customers) == (["c0", "c1", "c2"] if cached else ["c0", "c1"])
    assert directory.files["c1"] == f"{d}/c1.yaml"
