"""The ``portcullis`` command."""

from __future__ import annotations

import argparse
import getpass
import sys

from gateway.config.errors import ConfigErrors, one_line
from gateway.config.load import Loaded
from gateway.dkim.signing_keys import load_with_keys

EXIT_CONFIG = 2


def _load(path: str) -> Loaded | None:
    try:
        return load_with_keys(path)[0]  # the keys are checked here, built by each worker
    except ConfigErrors as exc:
        for error in exc.errors:
            print(error, file=sys.stderr)
        return None
    except Exception as exc:  # a loader bug must still be one line and exit 2, not a traceback
        print(one_line(f"{path}: cannot load: {type(exc).__name__}: {exc}"), file=sys.stderr)
        return None


def cmd_check_config(args: argparse.Namespace) -> int:
    import asyncio

    from gateway.accounts.factory import probe

    loaded = _load(args.config)
    if loaded is None:
        return EXIT_CONFIG
    # An external account source (Dovecot, SQL, LDAP) is tested for real.
    problems = asyncio.run(probe(loaded.config.accounts, loaded.directory))
    for problem in problems:
        print(f"{args.config}: {problem}", file=sys.stderr)
    if problems:
        return EXIT_CONFIG
    d = loaded.directory
    listeners = [n for n in ("inbound", "submission", "submissions")
                 if getattr(loaded.config.listeners, n) is not None]
    print(f"{args.config}: ok: {len(d.customers)} customers, {len(d.domains)} domains, "
          f"{len(d.accounts)} accounts ({loaded.config.accounts.source}); "
          f"listeners: {', '.join(listeners)}")
    if loaded.config.accounts.source != "yaml":
        for line in _default_policy_report(loaded):
            print(f"{args.config}: {line}")
    if loaded.config.listeners.inbound is not None:
        for line in _default_inbound_report(loaded):
            print(f"{args.config}: {line}")
    return 0


def _default_policy_report(loaded: Loaded) -> list[str]:
    """What default_policy does to the accounts only the ISP's database knows."""
    import time

    from gateway.config.default_policy import describe_default
    from gateway.dkim.keystore import KeyStore
    from gateway.ops.dns_commands import keys_location

    keys_dir, grace = keys_location(loaded, None)
    store = KeyStore.load(keys_dir, grace) if keys_dir.is_dir() else KeyStore(keys_dir, grace)
    now = time.time()
    active = [domain for domain in store.domains() if store.active(domain, now)]
    accounts = loaded.config.accounts
    return describe_default(loaded.config.default_policy, loaded.directory, accounts.source,
                            active, accounts.probe_login)


def _default_inbound_report(loaded: Loaded) -> list[str]:
    """What the MX does for domains no policy file claims (default_policy.inbound)."""
    from gateway.config.default_policy import describe_inbound

    accounts = loaded.config.accounts
    lookup = ("accounts.sql.domain_query" if accounts.sql and accounts.sql.domain_query else
              "accounts.ldap.domain_filter" if accounts.ldap and accounts.ldap.domain_filter else None)
    return describe_inbound(loaded.config.default_policy, loaded.directory, lookup)


def cmd_serve(args: argparse.Namespace) -> int:
    from gateway.serve import configure_logging, serve, worker_count

    configure_logging(args.log_level, args.log_format)
    loaded = _load(args.config)
    if loaded is None:
        return EXIT_CONFIG
    try:
        workers = worker_count(args.workers)
    except ValueError:
        print(f"--workers: {args.workers!r} is not a positive number or 'auto'", file=sys.stderr)
        return EXIT_CONFIG
    try:
        return serve(loaded, workers)
    except OSError as exc:
        print(f"cannot start: {exc}", file=sys.stderr)
        return 1


def cmd_admin_token(args: argparse.Namespace) -> int:
    """A new admin token: the token once on stdout, for the operator; the entry with
    its hash for the gateway file's admin.tokens (only the hash is kept)."""
    from gateway.admin.tokens import new_token

    try:
        token, hashed = new_token(args.name)
    except ValueError as exc:
        print(f"admin-token: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    print(f"token (shown once; give it to {args.name}): {token}")
    print("for admin.tokens in the gateway file:")
    print(f"  - {{name: {args.name}, role: {args.role}, hash: '{hashed}'}}")
    return 0


def cmd_passwd(args: argparse.Namespace) -> int:
    from gateway.accounts.passwords import hash_password

    if args.stdin or not sys.stdin.isatty():
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != password:
            print("passwords do not match", file=sys.stderr)
            return 1
    if not password:
        print("empty password refused", file=sys.stderr)
        return 1
    print(hash_password(password))
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    """Exit 0 with the trail, 1 with one line when the id is not in the journal (or
    the store cannot be read), 2 when the gateway file is broken."""
    import asyncio

    from gateway.admin.actions import decision_trail
    from gateway.ops.explain import as_json, missing_store, parse_id, write_text
    from gateway.store import StoreUnavailable, open_store
    from gateway.store.base import JournalEntry

    loaded = _load(args.config)
    if loaded is None:
        return EXIT_CONFIG
    wanted = parse_id(args.id)
    if wanted is None:
        print(f"{args.id!r} is not a transaction or connection id (like K3M2Q7ZP4XAB.1)", file=sys.stderr)
        return 1
    settings = loaded.config.store
    missing = missing_store(settings, loaded.config.base_dir)
    if missing is not None:
        print(missing, file=sys.stderr)
        return 1

    async def read() -> list[JournalEntry]:
        store = open_store(settings, loaded.config.base_dir)
        try:
            # The same lookup as the admin API's and the console's.
            return list((await decision_trail(store, wanted))[1])
        finally:
            await store.close()

    try:
        entries = asyncio.run(read())
    except StoreUnavailable as exc:
        print(one_line(f"cannot read the journal: {exc}"), file=sys.stderr)
        return 1
    if not entries:
        j = settings.journal
        print(f"{wanted}: not in the journal (it keeps refusals, holds and suspensions: the last "
              f"{j.max_entries} of them, for {j.max_age / 86400:g} days)", file=sys.stderr)
        return 1
    if args.json:
        print(as_json(entries))
    else:
        write_text(entries, sys.stdout)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="portcullis", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="run the gateway")
    p.add_argument("-c", "--config", required=True)
    p.add_argument("--workers", default="1", help="worker processes, or 'auto' for one per core")
    p.add_argument("--log-level", default="INFO")
    p.add_argument("--log-format", choices=("text", "json"), default="text",
                   help="one line per event; json for log shippers")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("check-config", help="validate the config and every policy file")
    p.add_argument("-c", "--config", required=True)
    p.set_defaults(func=cmd_check_config)

    p = sub.add_parser("passwd", help="hash a password for a policy file (argon2id)")
    p.add_argument("--stdin", action="store_true", help="read the password from standard input")
    p.set_defaults(func=cmd_passwd)

    p = sub.add_parser("admin-token", help="make a token for the admin API and console")
    p.add_argument("name", help="who holds it (named in the audit journal): a-z, 0-9, '-'")
    p.add_argument("--role", choices=("read-only", "operator"), default="read-only")
    p.set_defaults(func=cmd_admin_token)

    p = sub.add_parser("explain", help="why a transaction or connection was refused, held or suspended")
    p.add_argument("-c", "--config", required=True)
    p.add_argument("id", help="a transaction id (K3M2Q7ZP4XAB.1), a connection id, or a reply's text")
    p.add_argument("--json", action="store_true", help="the journal entries as JSON")
    p.set_defaults(func=cmd_explain)

    from gateway.accounts_commands import add_accounts_parser
    from gateway.audit.commands import add_audit_parser
    from gateway.dkim.commands import add_keys_parser
    from gateway.held_commands import add_held_parser
    from gateway.ops.dmarc_commands import add_dmarc_parser
    from gateway.ops.dns_commands import add_dns_parser
    from gateway.screening_commands import add_screening_parser

    add_accounts_parser(sub)
    add_audit_parser(sub)
    add_keys_parser(sub)
    add_dns_parser(sub)
    add_dmarc_parser(sub)
    add_held_parser(sub)
    add_screening_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
