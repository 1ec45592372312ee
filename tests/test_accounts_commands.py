"""`portcullis accounts status|suspend|unsuspend` act on the shared store."""

from __future__ import annotations

import argparse
import asyncio
import io

import yaml

from gateway.accounts.passwords import hash_password
from gateway.accounts_commands import (
    accounts_status,
    accounts_suspend,
    accounts_unsuspend,
    add_accounts_parser,
)
from gateway.config.directory import Directory
from gateway.config.quota import QuotaSettings
from gateway.metering import Metering
from gateway.store.sqlite import SQLiteStore
from tests.support import redis_server as _redis
from tests.support import stores

# Fixtures used by name below (pytest finds them as module attributes).
redis_server = _redis.redis_server
any_store = stores.any_store

T0 = 1_800_000_000.0


def write_config(tmp_path):
    (tmp_path / "policy").mkdir()
    (tmp_path / "policy" / "acme.yaml").write_text(yaml.safe_dump({
        "customer": "acme", "domains": ["acme.example"],
        "dkim": {"sign": []},  # no keys in this test: nothing signed
        "accounts": [{"login": "alice@acme.example", "password": hash_password("pw")}]}))
    (tmp_path / "gateway.yaml").write_text(yaml.safe_dump({
        "hostname": "mx.gateway.test", "policy_dir": "policy",
        "listeners": {"submission": {"port": 2587}},
        "downstream": {"outbound": "smtp://127.0.0.1:10025"}}))
    return tmp_path / "gateway.yaml"


def cli(*argv: str) -> tuple[int, str]:
    parser = argparse.ArgumentParser(prog="portcullis")
    add_accounts_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(list(argv))
    out = io.StringIO()
    return args.func(args, out), out.getvalue()


def test_suspend_from_the_cli_is_seen_by_a_gateway_on_the_same_store(tmp_path):
    config = write_config(tmp_path)
    code, text = cli("accounts", "-c", str(config), "suspend", "Alice@acme.example")
    assert code == 0 and "alice@acme.example: suspended" in text
    code, text = cli("accounts", "-c", str(config), "status")
    assert code == 0 and "SUSPENDED" in text and "messages_per_hour" in text

    async def gateway_view():
        # What a running gateway sees: the default store file next to the config.
        store = SQLiteStore(tmp_path / "portcullis-state.db")
        from gateway.rules.quota import account_quota

        m = Metering(store, QuotaSettings())
        d = await m.check_recipient(account_quota("alice@acme.example", "acme", None, None, None),
                                    m.begin("t1"), "example.org", T0)
        await store.close()
        return d

    assert asyncio.run(gateway_view()).verdict.reply.code == 550
    code, text = cli("accounts", "-c", str(config), "unsuspend", "alice@acme.example")
    assert code == 0 and "unsuspended" in text
    code, text = cli("accounts", "-c", str(config), "unsuspend", "alice@acme.example")
    assert code == 1 and "was not suspended" in text


def test_status_shows_usage_against_limits_on_both_backends(any_store):
    async def body(store):
        m = Metering(store, QuotaSettings())
        from gateway.rules.quota import account_quota

        a = account_quota("bob@acme.example", "acme", None, None, None)
        tx = m.begin("t")
        for r in ("x.example", "y.example"):
            await m.check_recipient(a, tx, r, T0)
        await m.finish(a, tx, True, T0)
        out = io.StringIO()
        await accounts_suspend(m, "bob@acme.example", T0, out, "looks hijacked")
        await accounts_status(m, Directory(), "bob@acme.example", T0 + 1, out)
        await accounts_unsuspend(m, "bob@acme.example", T0 + 2, out)
        await accounts_status(m, Directory(), "bob@acme.example", T0 + 3, out)
        return out.getvalue()

    text = any_store.run(body)
    lines = text.splitlines()
    assert any(line.split()[:3] == ["messages_per_hour", "1", "200"] for line in lines)
    assert any(line.split()[:3] == ["recipients_per_hour", "2", "500"] for line in lines)
    assert any(line.split()[:3] == ["recipient_domains_per_hour", "2", "100"] for line in lines)
    assert "SUSPENDED" in text and "looks hijacked" in text
    assert "state: active" in text
