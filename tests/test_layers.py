"""The layers of docs/architecture.md hold: import-linter's contracts (pyproject.toml).

scripts/test.sh runs ``lint-imports`` next to ruff; these tests run the same contracts
from pytest, and prove on a copy of the package that each kind of break is caught.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"

pytestmark = pytest.mark.skipif(not LINT_IMPORTS.exists(), reason="import-linter not installed")


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    # lint-imports reads pyproject.toml in the working directory and finds `gateway`
    # there first: run in a copy, it checks the copy.
    return subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=root, capture_output=True,
                          text=True, timeout=60)


def test_every_import_contract_is_kept():
    done = lint_imports(ROOT)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    shutil.copytree(ROOT / "gateway", tmp_path / "gateway",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def add_import(copy: Path, module: str, line: str) -> None:
    path = copy / (module.replace(".", "/") + ".py")
    path.write_text(path.read_text() + f"\n{line}\n")


@pytest.mark.parametrize("module, line, broken", [
    # The ground floor naming a rule.
    ("gateway.values.charges", "from gateway.rules import quota", "gateway.values is not allowed to import gateway.rules"),
    # Settings building a runtime object again (as config/checks.py built the resolver).
    ("gateway.config.checks", "from gateway.checks.dns import Resolver",
     "gateway.config is not allowed to import gateway.checks"),
    # A rule naming the store's types (as rules/quota.py did).
    ("gateway.rules.quota", "from gateway.store.base import Store", "gateway.rules is not allowed to import gateway.store"),
    # The store asking the rules (as store/metering.py did).
    ("gateway.store.sqlite", "from gateway.rules import lockout", "gateway.store is not allowed to import gateway.rules"),
    # One account source leaning on another.
    ("gateway.accounts.sql", "from gateway.accounts import ldap", "gateway.accounts.sql is not allowed to import gateway.accounts.ldap"),
])
def test_an_import_against_the_layers_is_caught_and_named(copy, module, line, broken):
    add_import(copy, module, line)
    done = lint_imports(copy)
    assert done.returncode != 0
    assert broken in " ".join(done.stdout.split()), done.stdout[-4000:]


def test_a_cycle_between_modules_of_one_package_is_caught(copy):
    # Both in the I/O layer, so only the no-cycles contract can see it.
    add_import(copy, "gateway.store.base", "from gateway.store import held")
    add_import(copy, "gateway.store.held", "from gateway.store import base")
    done = lint_imports(copy)
    assert done.returncode != 0
    assert "No cycles are allowed in gateway.store" in done.stdout, done.stdout[-4000:]


@pytest.mark.parametrize("path, module", [
    ("pipeline.py", "gateway.pipeline"),
    # dkim/ and ops/ are split across layers: their modules are placed one by one.
    ("dkim/arc_seal.py", "gateway.dkim.arc_seal"),
])
def test_a_new_module_must_be_given_a_layer(copy, path, module):
    (copy / "gateway" / path).write_text('"""A new module, placed nowhere yet."""\n')
    done = lint_imports(copy)
    assert done.returncode != 0
    assert f"- {module}\n" in done.stdout, done.stdout[-4000:]
