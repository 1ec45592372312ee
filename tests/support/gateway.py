"""Run a real gateway for a test: its own config files, free ports, its own event
loop in a background thread, stopped at the end."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from gateway.config.load import load_config
from gateway.dkim.keystore import generate_selector
from gateway.serve import Gateway, tls_files
from tests.support.ports import free_port


class GatewayUnderTest:
    def __init__(self, tmp: Path, *, inbound_url: str, outbound_url: str,
                 policies: dict[str, dict], cert: tuple[Path, Path],
                 extra: dict[str, Any] | None = None,
                 clock: Callable[[], float] | None = None, quotas: bool = True,
                 loop_factory: Callable[[], asyncio.AbstractEventLoop] = asyncio.new_event_loop):
        self.tmp = tmp
        self.clock = clock
        self.quotas = quotas
        self.ports = {n: free_port() for n in ("inbound", "submission", "submissions")}
        policy_dir = self.policy_dir = tmp / "policy"
        policy_dir.mkdir(exist_ok=True)
        self.write_policies(policies)
        # Every customer domain gets an Ed25519 key (quick to make), so outbound mail
        # is DKIM-signed as in production; tests of signing itself make their own.
        self.keys_dir = tmp / "keys"
        for policy in policies.values():
            for domain in policy.get("domains", ()):
                if not (self.keys_dir / domain.lower().rstrip(".")).exists():
                    generate_selector(self.keys_dir, domain, "test", "ed25519-sha256")
        tls = {"cert": str(cert[0]), "key": str(cert[1])}
        config: dict[str, Any] = {
            "hostname": "mx.gateway.test",
            "listeners": {
                "inbound": {"port": self.ports["inbound"], "tls": tls},
                "submission": {"port": self.ports["submission"], "tls": tls},
                "submissions": {"port": self.ports["submissions"], "tls": tls},
            },
            "downstream": {"inbound": {"url": inbound_url, "timeout": 3},
                           "outbound": {"url": outbound_url, "timeout": 3}},
            "policy_dir": str(policy_dir),
            # No DNS publishes the test keys: sign without looking (the tests of the
            # look-up turn it on, tests/test_dkim_publication.py).
            "dkim": {"keys_dir": str(self.keys_dir), "check_published": False},
            "limits": {"command_timeout": 10, "data_timeout": 10, "shutdown_grace": 2},
            # A failed AUTH is answered at once in tests (the lockout tests set a delay).
            "lockout": {"failure_delay": 0},
            # Nothing listens there: inbound checks see DNS temperror at once, unless a
            # test points this at its own NSD (tests/support/authdns.py).
            "dns": {"nameservers": ["127.0.0.1"], "port": free_port(), "timeout": 1},
        }
        _merge(config, extra or {})
        self.config_path = tmp / "gateway.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        # asyncio's loop, or uvloop's as `portcullis serve` runs (uvloop.new_event_loop).
        self.loop = loop_factory()
        self.gateway: Gateway | None = None
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def start(self) -> GatewayUnderTest:
        loaded = load_config(self.config_path)
        files = tls_files(loaded.config)
        self._thread.start()
        kwargs: dict[str, Any] = {"quotas": self.quotas}
        if self.clock is not None:
            kwargs["clock"] = self.clock
        self.gateway = Gateway(loaded, files, **kwargs)
        asyncio.run_coroutine_threadsafe(self.gateway.start(), self.loop).result(10)
        return self

    def write_policies(self, policies: dict[str, dict]) -> None:
        for name, policy in policies.items():
            (self.policy_dir / f"{name}.yaml").write_text(yaml.safe_dump(policy))

    def reload(self) -> bool:
        """What SIGHUP does in a worker, run on the gateway's own loop."""
        assert self.gateway is not None
        return asyncio.run_coroutine_threadsafe(self.gateway.reload(), self.loop).result(30)

    def run(self, coro: Any, timeout: float = 30) -> Any:
        """Run a coroutine on the gateway's loop (e.g. to read its store)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    @property
    def runtime(self) -> Any:
        assert self.gateway is not None
        return self.gateway.runtime.current()

    def stop(self) -> None:
        """Stop the gateway (a second call does nothing: a test may have stopped it)."""
        if self.gateway is not None:
            gateway, self.gateway = self.gateway, None
            asyncio.run_coroutine_threadsafe(gateway.stop(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> None:
    """Deep-merge ``extra`` into ``base``: nested sections are merged key by key."""
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value
