"""``portcullis held list|show ID|release ID|delete ID|expire``: held mail, for review.

They act on the directory named in the gateway file's ``hold:`` section, so with a
shared directory every gateway's held mail is reviewed from any one of them.
``release`` relays through the downstream of the message's direction
(``downstream.outbound`` or ``downstream.inbound``), exactly as the gateway would.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Awaitable
from datetime import UTC, datetime
from email.parser import BytesHeaderParser
from email.policy import compat32
from pathlib import Path
from typing import TextIO

from gateway.accounts_commands import operator_name, quota_settings
from gateway.admin import actions
from gateway.config.content import HoldSettings
from gateway.config.directory import Directory
from gateway.metering import Metering
from gateway.store import open_held_store, open_store
from gateway.store.held import HeldBusy, HeldMail, HeldMessage, HeldNotFound

EXIT_NOT_FOUND = 4
EXIT_NOT_DELIVERED = 5


def add_held_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("held", help="messages held for review: list, show, release, delete")
    p.add_argument("-c", "--config", required=True)
    sub = p.add_subparsers(dest="held_command", required=True)
    ls = sub.add_parser("list", help="every held message, oldest first")
    ls.add_argument("--json", action="store_true", help="one JSON object per line")
    sh = sub.add_parser("show", help="envelope, verdict, evidence and headers of one message")
    sh.add_argument("id")
    sh.add_argument("--raw", action="store_true", help="print the whole message as it would be sent")
    rl = sub.add_parser("release", help="send it on, exactly as it would have gone")
    rl.add_argument("id")
    rl.add_argument("--force", action="store_true",
                    help="take over a release that was interrupted (state 'releasing')")
    de = sub.add_parser("delete", help="drop it for good")
    de.add_argument("id")
    sub.add_parser("expire", help="apply hold.max_age / hold.at_max_age now (for cron)")
    p.set_defaults(func=run_held)


def hold_settings(config: object) -> HoldSettings:
    return getattr(config, "hold", None) or HoldSettings()


def held_store(config: object) -> HeldMail:
    return open_held_store(hold_settings(config), getattr(config, "base_dir", Path(".")))


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def format_line(h: HeldMessage) -> str:
    state = "" if h.state == "held" else f" [{h.state}]"
    return (f"{h.id}  {_when(h.held_at)}  {h.direction:<8} {h.reason:<9} "
            f"{h.login or '-'}  <{h.sender}> -> {len(h.recipients)} rcpt, {h.size} bytes{state}")


def format_details(h: HeldMessage, message: bytes) -> str:
    lines = [
        f"id:          {h.id}{'' if h.state == 'held' else f'  [{h.state}]'}",
        f"held at:     {_when(h.held_at)}",
        f"direction:   {h.direction}",
        f"login:       {h.login or '-'}",
        f"transaction: {h.txid or '-'}",
        f"reason:      {h.reason}",
        f"client got:  {h.reply}",
        f"sender:      <{h.sender}> {' '.join(h.mail_options)}".rstrip(),
    ]
    for rcpt, options in zip(h.recipients, h.rcpt_options, strict=True):
        lines.append(f"recipient:   <{rcpt}> {' '.join(options)}".rstrip())
    for key, value in sorted(h.evidence.items()):
        lines.append(f"evidence:    {key} = {json.dumps(value) if not isinstance(value, str) else value}")
    lines.append(f"size:        {h.size} bytes")
    headers = BytesHeaderParser(policy=compat32).parsebytes(message)
    lines.append("headers:")
    for name, value in headers.items():
        lines.append(f"  {name}: {' '.join(str(value).split())}")
    return "\n".join(lines)


async def held_command(args: argparse.Namespace, config: object, store: HeldMail,
                       out: TextIO, now: float, directory: Directory | None = None) -> int:
    command = args.held_command
    if command == "list":
        held = await actions.list_held(store)
        for h in held:
            print(json.dumps(h.record() | {"state": h.state}) if args.json else format_line(h), file=out)
        if not held and not args.json:
            print("no held messages", file=out)
        return 0
    if command == "show":
        h, message = await actions.show_held(store, args.id)
        if args.raw:
            out.write(message.decode("utf-8", "surrogateescape"))
        else:
            print(format_details(h, message), file=out)
        return 0
    # Decisions are journaled and released mail charged: the shared store, as `accounts`.
    metering = _metering(config) if directory is not None else None
    try:
        return await _decide(args, config, store, out, now, directory, metering)
    finally:
        if metering is not None:
            await metering.store.close()


def _metering(config: object) -> Metering:
    settings = quota_settings(config)
    return Metering(open_store(settings.store, config.base_dir), settings)  # type: ignore[attr-defined]


async def _decide(args: argparse.Namespace, config: object, store: HeldMail, out: TextIO, now: float,
                  directory: Directory | None, metering: Metering | None) -> int:
    command = args.held_command
    if command == "delete":
        h = await actions.delete_held(store, args.id, by=operator_name(), metering=metering, now=now)
        print(f"{h.id}: deleted", file=out)
        return 0
    if command == "expire":
        settings = hold_settings(config)
        downstreams = _downstreams(config)
        try:
            decisions = await actions.expire_held(store, settings, downstreams, now, metering,
                                                  directory)
        finally:
            await _close(downstreams)
        for d in decisions:
            print(f"{d.id}: {d.action}: {d.detail}", file=out)
        print(f"{len(decisions)} held messages past {settings.max_age / 86400:g} days", file=out)
        return 0 if all(d.action != "kept" for d in decisions) else EXIT_NOT_DELIVERED
    # release
    h = await store.get(args.id)
    downstreams = _downstreams(config)
    try:
        result = await actions.release_held(store, args.id, downstreams, force=args.force,
                                            metering=metering, directory=directory, now=now,
                                            by=operator_name())
    except actions.NoDownstream:
        print(f"{h.id}: no downstream.{h.direction} in the config to release to", file=sys.stderr)
        return EXIT_NOT_DELIVERED
    finally:
        await _close(downstreams)
    for rcpt in result.delivered:
        print(f"{h.id}: delivered to <{rcpt}>", file=out)
    for rcpt, reply in result.refused:
        print(f"{h.id}: refused for <{rcpt}>: {reply}", file=out)
    for rcpt, reply in result.deferred:
        print(f"{h.id}: still held for <{rcpt}>: {reply}", file=out)
    print(f"{h.id}: {'released and removed' if result.removed else 'still held'}", file=out)
    return 0 if result.ok else EXIT_NOT_DELIVERED


def _downstreams(config: object) -> dict:
    from gateway.serve import make_downstream

    settings = config.downstream  # type: ignore[attr-defined]
    return {direction: make_downstream(getattr(settings, direction), config, direction)
            for direction in ("outbound", "inbound")}


async def _close(downstreams: dict) -> None:
    for ds in downstreams.values():
        if ds is not None:
            await ds.close()


async def _closing(store: HeldMail, work: Awaitable[int]) -> int:
    try:
        return await work
    finally:
        await store.close()  # a database store's connections, in the loop that made them


def run_held(args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = out if out is not None else sys.stdout
    from gateway.config.load import load_for_command

    loaded = load_for_command(args.config)
    if loaded is None:
        return 2
    store = held_store(loaded.config)
    try:
        return asyncio.run(_closing(store, held_command(args, loaded.config, store, out, time.time(),
                                                        loaded.directory)))
    except HeldNotFound:
        print(f"portcullis held: no held message {args.id!r}", file=sys.stderr)
        return EXIT_NOT_FOUND
    except HeldBusy:
        print(f"portcullis held: {args.id} is being released (or a release was interrupted); "
              "check `held list`, then use `held release --force` to take it over", file=sys.stderr)
        return EXIT_NOT_DELIVERED
