"""``portcullis screening dynamic``: the ISP's own addresses that sent straight to
the MX, by address, for the abuse desk (docs/screening.md).

Each refusal of a client in ``screening.dynamic_ranges`` is an event in the shared
store (gateway/smtp/screening.py); this reads the newest ``--limit`` events and
counts them per address, most refused first.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from datetime import UTC, datetime
from typing import TextIO

from gateway.store import StoreUnavailable, open_store
from gateway.values.screening import DYNAMIC_EVENT


def add_screening_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("screening", help="MX screening reports")
    p.add_argument("-c", "--config", required=True)
    sub = p.add_subparsers(dest="screening_command", required=True)
    dy = sub.add_parser("dynamic", help="our dynamic-range addresses refused at the MX, by address")
    dy.add_argument("--limit", type=int, default=10000, help="newest events read (default 10000)")
    dy.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(func=run_screening)


def count_by_address(events: list) -> list[tuple[str, int, float]]:
    """(address, refusals, last seen), most refused first."""
    seen: dict[str, tuple[int, float]] = {}
    for e in events:
        if e.kind == DYNAMIC_EVENT:
            count, last = seen.get(e.subject, (0, 0.0))
            seen[e.subject] = (count + 1, max(last, e.ts))
    return sorted(((a, c, t) for a, (c, t) in seen.items()), key=lambda r: (-r[1], r[0]))


def run_screening(args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = out if out is not None else sys.stdout
    from gateway.config.load import load_for_command

    loaded = load_for_command(args.config)
    if loaded is None:
        return 2
    config = loaded.config

    async def main() -> int:
        store = open_store(config.store, config.base_dir)
        try:
            rows = count_by_address(await store.events(None, args.limit))
        except StoreUnavailable as exc:
            print(f"portcullis screening: the store cannot be reached: {exc}", file=sys.stderr)
            return 3
        finally:
            await store.close()
        if args.json:
            for address, count, last in rows:
                print(json.dumps({"address": address, "refusals": count, "last_seen": last}), file=out)
            return 0
        print(f"{'address':<40} {'refusals':>8}  last seen", file=out)
        for address, count, last in rows:
            when = datetime.fromtimestamp(last, UTC).strftime("%Y-%m-%d %H:%M:%SZ")
            print(f"{address:<40} {count:>8}  {when}", file=out)
        return 0

    return asyncio.run(main())
