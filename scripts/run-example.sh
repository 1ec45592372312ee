#!/usr/bin/env bash
# Set up and run the gateway on the example config (examples/gateway.yaml):
# MX on 127.0.0.1:2525, submission on 2587 (STARTTLS) and 2465 (implicit TLS),
# mail delivered to Maildirs under var/.  Stop with Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh run
# Outbound mail is DKIM-signed: make the example customer's keys once.
for domain in acme.example mail.acme.example; do
  [ -d "keys/$domain" ] || .venv/bin/portcullis keys --keys-dir keys generate "$domain" --selector example
done
cat <<'TXT'
Example account: alice@acme.example, password "correct horse battery staple".
In another terminal:
  swaks --server 127.0.0.1:2587 --tls --auth-user alice@acme.example \
        --auth-password 'correct horse battery staple' \
        --from alice@acme.example --to friend@example.org
  swaks --server 127.0.0.1:2525 --from someone@example.org --to bob@acme.example
Delivered mail appears in var/maildir/outbound/new and var/maildir/inbound/new.
TXT
exec .venv/bin/portcullis serve -c examples/gateway.yaml
