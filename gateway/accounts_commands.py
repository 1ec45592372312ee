"""``portcullis accounts status [LOGIN]`` and ``accounts suspend|unsuspend LOGIN``.

They act on the shared store named in the gateway file, so every gateway using
that store sees a suspension at the account's next message (its first RCPT).
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import sys
import time
from datetime import UTC, datetime
from typing import TextIO

from gateway.admin import actions
from gateway.admin.actions import account_for
from gateway.config.default_policy import DefaultPolicy
from gateway.config.directory import Directory
from gateway.config.quota import QuotaSettings
from gateway.metering import AccountStatus, Metering
from gateway.store import StoreUnavailable, open_store

__all__ = ["account_for", "add_accounts_parser", "format_status", "quota_settings", "run_accounts"]


def add_accounts_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("accounts", help="usage against limits; suspend or unsuspend an account")
    p.add_argument("-c", "--config", required=True)
    sub = p.add_subparsers(dest="accounts_command", required=True)
    st = sub.add_parser("status", help="usage and suspension state (every account without LOGIN)")
    st.add_argument("login", nargs="?")
    su = sub.add_parser("suspend", help="stop an account sending, on every gateway")
    su.add_argument("login")
    su.add_argument("--reason", default="suspended by an operator")
    un = sub.add_parser("unsuspend", help="let a suspended account send again")
    un.add_argument("login")
    un.add_argument("--release-held", action="store_true",
                    help="and release every message of it held for review (charged, journaled)")
    p.set_defaults(func=run_accounts)


def quota_settings(config: object) -> QuotaSettings:
    """The four sections of the gateway file (defaults where a section is absent)."""
    fields = {name: getattr(config, name) for name in ("quotas", "store", "lockout", "compromise")
              if getattr(config, name, None) is not None}
    return QuotaSettings(**fields)


def _limit(n: int | None) -> str:
    return "-" if n is None else str(n)


def format_status(s: AccountStatus) -> str:
    lines = [f"{s.login} (customer {s.customer}){'  [shadow mode]' if s.shadow else ''}"]
    if s.suspension is None:
        lines.append("  state: active")
    else:
        since = datetime.fromtimestamp(s.suspension.since, UTC).strftime("%Y-%m-%d %H:%M:%SZ")
        evidence = ", ".join(f"{k}={v}" for k, v in sorted(s.suspension.evidence.items()))
        lines.append(f"  state: SUSPENDED since {since}: {s.suspension.reason}"
                     + (f" ({evidence})" if evidence else ""))
    lines.append(f"  {'limit':<40} {'used':>8} {'of':>8}")
    for u in s.usage:
        lines.append(f"  {u.name:<40} {u.used:>8} {_limit(u.limit):>8}")
    lines.append(f"  {'connections now':<40} {s.connections:>8}")
    return "\n".join(lines)


async def accounts_status(metering: Metering, directory: Directory, login: str | None,
                          now: float, out: TextIO, default: DefaultPolicy | None = None,
                          default_customer: str = "default") -> int:
    logins = [login.lower()] if login is not None else await actions.known_logins(metering, directory)
    for i, name in enumerate(logins):
        # An account only the ISP's database knows: its domain's customer, and that
        # customer's policy file or default_policy (not the gateway's bare quotas).
        status = await actions.account_status(metering, directory, name, now, default,
                                              default_customer)
        print(("\n" if i else "") + format_status(status), file=out)
    if not logins:
        print("no accounts", file=out)
    return 0


def operator_name() -> str:
    """Who acts at the command line, for the journal and the notices."""
    try:
        return f"{getpass.getuser()} (command line)"
    except (KeyError, OSError):
        return "an operator (command line)"


async def accounts_suspend(metering: Metering, login: str, now: float, out: TextIO,
                           reason: str = "suspended by an operator", config: object = None,
                           directory: Directory | None = None) -> int:
    # Notified like any suspension (notify: in the gateway file), signed as the gateway signs.
    notifier, downstream = None, None
    if config is not None and getattr(config, "notify", None) is not None:
        from gateway.serve import build_notifier, make_downstream

        downstream = make_downstream(config.downstream.outbound, config, "outbound")  # type: ignore[attr-defined]
        notifier = build_notifier(config, downstream, metering.store)  # type: ignore[arg-type]
    try:
        done = await actions.suspend_account(metering, login, now, reason, by=operator_name(),
                                             notifier=notifier, directory=directory)
    finally:
        if notifier is not None:
            await notifier.aclose()
        if downstream is not None:
            await downstream.close()
    if done:
        print(f"{login.lower()}: suspended (every gateway refuses its mail from the next message)", file=out)
    else:
        print(f"{login.lower()}: was already suspended", file=out)
    return 0


async def accounts_unsuspend(metering: Metering, login: str, now: float, out: TextIO,
                             config: object = None, directory: Directory | None = None,
                             release_held: bool = False) -> int:
    lifted = await actions.unsuspend_account(metering, login, now, by=operator_name())
    print(f"{login.lower()}: {'unsuspended' if lifted else 'was not suspended'}", file=out)
    if not release_held or config is None:
        return 0 if lifted else 1
    from gateway.serve import make_downstream
    from gateway.store import open_held_store

    settings = config.downstream  # type: ignore[attr-defined]
    downstreams = {d: make_downstream(getattr(settings, d), config, d)  # type: ignore[arg-type]
                   for d in ("outbound", "inbound")}
    store = open_held_store(config.hold, config.base_dir)  # type: ignore[attr-defined]
    try:
        released = await actions.release_account(store, login, downstreams, metering, directory, now,
                                                 by=operator_name())
    finally:
        await store.close()
        for ds in downstreams.values():
            if ds is not None:
                await ds.close()
    for held, result in released:
        what = result if isinstance(result, str) else (
            f"delivered to {len(result.delivered)}" + ("" if result.removed else ", still held"))
        print(f"{held.id}: {what}", file=out)
    print(f"{login.lower()}: {len(released)} held messages released", file=out)
    return 0 if all(not isinstance(r, str) and r.removed for _, r in released) else 5


def run_accounts(args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = out if out is not None else sys.stdout
    from gateway.config.load import load_for_command

    loaded = load_for_command(args.config)
    if loaded is None:
        return 2
    settings = quota_settings(loaded.config)

    async def main() -> int:
        store = open_store(settings.store, loaded.config.base_dir)
        metering = Metering(store, settings)
        now = time.time()
        try:
            if args.accounts_command == "status":
                return await accounts_status(metering, loaded.directory, args.login, now, out,
                                             loaded.config.default_policy,
                                             loaded.config.accounts.default_customer)
            if args.accounts_command == "suspend":
                return await accounts_suspend(metering, args.login, now, out, args.reason,
                                              loaded.config, loaded.directory)
            return await accounts_unsuspend(metering, args.login, now, out, loaded.config,
                                            loaded.directory, args.release_held)
        except StoreUnavailable as exc:
            print(f"portcullis accounts: the store cannot be reached: {exc}", file=sys.stderr)
            return 3
        finally:
            await store.close()

    return asyncio.run(main())
