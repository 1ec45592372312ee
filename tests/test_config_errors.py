"""Each bad config in tests/bad_configs/ fails check-config for the right reason:
exit 2, one line naming file, field and problem, never a traceback."""

from pathlib import Path

import pytest

from gateway.cli import main

BAD = sorted(p for p in (Path(__file__).parent / "bad_configs").iterdir() if p.is_dir())


@pytest.mark.parametrize("case", BAD, ids=lambda p: p.name)
def test_bad_config_is_refused_with_one_clear_line(case, capsys):
    expected = (case / "expected-error").read_text().strip()
    code = main(["check-config", "-c", str(case / "gateway.yaml")])
    out = capsys.readouterr()
    assert code == 2
    assert "Traceback" not in out.err
    lines = out.err.strip().splitlines()
    assert any(expected in line for line in lines), out.err
    for line in lines:
        assert line.count(": ") >= 1  # file: [field:] problem


def test_serve_refuses_to_start_on_the_same_errors(capsys):
    case = next(p for p in BAD if p.name.startswith("01-"))
    assert main(["serve", "-c", str(case / "gateway.yaml")]) == 2
    assert "limitz: unknown key" in capsys.readouterr().err


def test_all_errors_are_reported_not_only_the_first(tmp_path, capsys):
    policy = tmp_path / "policy"
    policy.mkdir()
    (policy / "a.yaml").write_text("customer: a\ndomains: [a.example]\nbogus: 1\n")
    (policy / "b.yaml").write_text("customer: b\ndomains: [a.example]\n")
    (policy / "c.yaml").write_text("customer: c\n")
    (tmp_path / "gateway.yaml").write_text(
        "hostname: mx.test\nlisteners: {inbound: {port: 2525}}\n"
        "downstream: {inbound: 'smtp://127.0.0.1:25'}\npolicy_dir: policy\n")
    assert main(["check-config", "-c", str(tmp_path / "gateway.yaml")]) == 2
    err = capsys.readouterr().err
    assert "a.yaml: bogus: unknown key" in err
    assert "c.yaml: domains: Field required" in err
    assert len(err.strip().splitlines()) == 2  # b.yaml is fine once a.yaml is out


def test_example_config_is_valid_once_its_keys_are_made(tmp_path, capsys):
    # As scripts/run-example.sh does it, in a copy (keys/ is git-ignored).
    import shutil

    root = Path(__file__).parent.parent
    shutil.copytree(root / "examples", tmp_path / "examples")
    shutil.copytree(root / "policy", tmp_path / "policy")
    config = str(tmp_path / "examples" / "gateway.yaml")
    assert main(["check-config", "-c", config]) == 2  # no keys yet: signing would fail
    assert "holds no key" in capsys.readouterr().err
    for domain in ("acme.example", "mail.acme.example"):
        assert main(["keys", "--keys-dir", str(tmp_path / "keys"), "generate", domain,
                     "--selector", "example", "--algorithm", "ed25519"]) == 0
    capsys.readouterr()
    assert main(["check-config", "-c", config]) == 0
    assert "ok:" in capsys.readouterr().out


def test_check_config_reports_an_unreachable_account_source_on_one_line(tmp_path, capsys):
    from tests.support.ports import free_port

    (tmp_path / "policy").mkdir()
    (tmp_path / "policy" / "a.yaml").write_text("customer: a\ndomains: [a.example]\n")
    (tmp_path / "gateway.yaml").write_text(
        "hostname: mx.test\nlisteners: {inbound: {port: 2525}}\n"
        "downstream: {inbound: 'smtp://127.0.0.1:25'}\npolicy_dir: policy\n"
        "accounts:\n  source: dovecot\n  auth_timeout: 2\n"
        f"  dovecot: {{address: 'inet:127.0.0.1:{free_port()}'}}\n")
    assert main(["check-config", "-c", str(tmp_path / "gateway.yaml")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "accounts.dovecot:" in err[0], err
