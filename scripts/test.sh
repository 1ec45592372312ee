#!/usr/bin/env bash
# Set up a fresh Debian machine and run the whole test suite.  Exits non-zero when a test fails.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
.venv/bin/ruff check gateway tests bench
exec .venv/bin/python -m pytest "$@"
