"""An async client for rspamd's scanning endpoint (``POST /checkv2`` on the normal worker).

rspamd's protocol (https://rspamd.com/doc/developers/protocol.html) is HTTP: the
message is the body and the SMTP facts travel as request headers, so that rspamd's
own rules (its rate limits per user, its skipping of checks for authenticated
senders, its settings) apply as they do behind Postfix's milter:

    User       the SASL login (rspamd treats the message as from an authenticated user)
    IP         the client's address;  Helo: its HELO/EHLO name;  Hostname: its rDNS name
    From       the envelope sender;   Rcpt: one header per envelope recipient
    Queue-Id   our transaction id, so rspamd's log line and ours can be joined
    MTA-Name   our host name;  Settings-Id: a settings block in rspamd's config
    Pass: all  run every rule even after a pre-result (for diagnostics and benchmarks)

The answer is JSON; we keep only what a decision needs (score, required score,
action, symbol names, Message-ID).  Any failure to get an answer (refused, reset,
timeout, 5xx, not JSON) raises :class:`ScannerUnavailable`: the caller applies the
configured fallback (gateway/rules/content.py), never passes mail by accident.

One client per process; it holds a pooled aiohttp session and never blocks the loop.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence

import aiohttp
from multidict import CIMultiDict

from gateway.config.content import RSPAMD_ACTIONS
from gateway.values.evidence import ScanResult


class ScannerUnavailable(Exception):
    """rspamd did not answer usefully.  ``kind`` is one of a small fixed set, fit for a
    metric label: refused, timeout, http_status, bad_response."""

    def __init__(self, kind: str, detail: str):
        super().__init__(f"rspamd {kind}: {detail}")
        self.kind = kind
        self.detail = detail


def _header_value(value: str) -> str:
    # aiohttp refuses CR/LF in header values (request splitting); a HELO argument is
    # client-controlled text, so drop every control character instead of failing.
    return "".join(c for c in value if c >= " " and c != "\x7f")


def parse_result(body: bytes, elapsed: float) -> ScanResult:
    """rspamd's /checkv2 JSON → ScanResult; ScannerUnavailable when it is not one."""
    try:
        data = json.loads(body)
        score = float(data["score"])
        required = float(data["required_score"])
        action = str(data["action"])
        raw_symbols = data.get("symbols") or {}
    except (ValueError, KeyError, TypeError) as exc:
        raise ScannerUnavailable("bad_response", f"not a scan result: {exc}") from None
    if action not in RSPAMD_ACTIONS:
        raise ScannerUnavailable("bad_response", f"unknown action {action!r}")
    symbols: list[tuple[float, str]] = []
    if isinstance(raw_symbols, dict):
        for name, sym in raw_symbols.items():
            sym_score = sym.get("score", 0.0) if isinstance(sym, dict) else 0.0
            symbols.append((float(sym_score or 0.0), str(name)))
    symbols.sort(key=lambda s: (-s[0], s[1]))
    mid = data.get("message-id")
    return ScanResult(
        score=score, required_score=required, action=action,
        symbols=tuple(name for _, name in symbols),
        message_id=None if mid in (None, "undef") else str(mid),
        skipped=bool(data.get("is_skipped", False)),
        elapsed=elapsed,
    )


class RspamdClient:
    """``await client.scan(message, sender=..., recipients=[...], ...)`` → ScanResult."""

    def __init__(self, url: str, timeout: float, mta_name: str, max_connections: int = 64):
        self.url = url.rstrip("/") + "/checkv2"
        self.timeout = timeout
        self.mta_name = mta_name
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None

    @classmethod
    def from_settings(cls, settings, mta_name: str) -> RspamdClient:
        """From a ``gateway.config.content.ScannerSettings``."""
        return cls(settings.url, settings.timeout, mta_name, settings.max_connections)

    def _client_session(self) -> aiohttp.ClientSession:
        # Made on first use, inside the running loop (aiohttp binds a session to its loop).
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._max_connections, ttl_dns_cache=300),
                # Our deadline is applied around the whole exchange below.
                timeout=aiohttp.ClientTimeout(total=None),
            )
        return self._session

    async def scan(
        self,
        message: bytes,
        *,
        sender: str,
        recipients: Sequence[str],
        ip: str | None = None,
        helo: str | None = None,
        hostname: str | None = None,
        user: str | None = None,
        queue_id: str | None = None,
        settings_id: str | None = None,
        pass_all: bool = False,
    ) -> ScanResult:
        headers: CIMultiDict[str] = CIMultiDict()
        # The null sender (aiosmtpd gives "<>"; LIBRARY-NOTES) is sent as "<>", which
        # rspamd reads as an empty envelope sender (a bounce).
        headers["From"] = "<>" if sender in ("", "<>") else _header_value(sender)
        for rcpt in recipients:
            headers.add("Rcpt", _header_value(rcpt))
        optional = {
            "IP": ip, "Helo": helo, "Hostname": hostname, "User": user,
            "Queue-Id": queue_id, "Settings-Id": settings_id,
        }
        for name, value in optional.items():
            if value:
                headers[name] = _header_value(value)
        headers["MTA-Name"] = _header_value(self.mta_name)
        if pass_all:
            headers["Pass"] = "all"
        started = time.monotonic()
        try:
            async with asyncio.timeout(self.timeout):
                async with self._client_session().post(self.url, data=message, headers=headers) as resp:
                    body = await resp.read()
                    status = resp.status
        except TimeoutError:
            raise ScannerUnavailable("timeout", f"no answer within {self.timeout:g} s") from None
        except aiohttp.ClientConnectorError as exc:
            raise ScannerUnavailable("refused", str(exc)) from None
        except (aiohttp.ClientError, OSError) as exc:
            raise ScannerUnavailable("refused", f"{type(exc).__name__}: {exc}") from None
        elapsed = time.monotonic() - started
        if status != 200:
            # 5xx: rspamd is overloaded or broken; 4xx: it did not understand us.  Either
            # way there is no verdict, so the fallback applies.
            text = body[:200].decode("utf-8", "replace").strip()
            raise ScannerUnavailable("http_status", f"HTTP {status}: {text}")
        return parse_result(body, elapsed)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
