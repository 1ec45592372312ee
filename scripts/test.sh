#!/usr/bin/env bash
# Set up a fresh Debian machine and run the whole test suite.  Exits non-zero when a test fails.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
.venv/bin/ruff check gateway tests bench
# The layers of docs/architecture.md: contracts in pyproject.toml ([tool.importlinter]).
.venv/bin/lint-imports
exec .venv/bin/python -m pytest "$@"
