"""The operations HTTP server: /metrics, /healthz, /readyz and mail-client autoconfig.

One small aiohttp server on its own port, made at start-up with everything it
needs passed in (the metrics registry to expose, a readiness probe, the
autoconfig facts); it holds no global state.  With several worker processes
each worker runs one, on its own socket for the same port (see docs/operations.md).

    /metrics                               Prometheus exposition of the given registry
    /healthz                               200 while the process runs
    /readyz                                200, or 503 with the problems the probe lists
    /mail/config-v1.1.xml                  Thunderbird autoconfig (?emailaddress=)
    /.well-known/autoconfig/mail/config-v1.1.xml
    /autodiscover/autodiscover.xml         Outlook Autodiscover POX (POST)
    /mobileconfig                          Apple profile (?emailaddress=)
    /.well-known/mta-sts.txt               MTA-STS policy (Host: mta-sts.DOMAIN, RFC 8461)
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from gateway.ops import autoconfig
from gateway.ops.mta_sts import POLICY_PATH, Policy

log = logging.getLogger(__name__)

ReadinessProbe = Callable[[], Awaitable[Sequence[str]]]
"""Returns the problems that make the gateway unready; an empty list means ready."""


def readiness_from(checks: Mapping[str, Callable[[], Awaitable[object]]]) -> ReadinessProbe:
    """A readiness probe from named checks that raise when something is wrong.

    The checks run concurrently; each failure becomes one line, ``name: Error: why``.
    For example ``{"downstream outbound": outbound.ping, "store": store.ping}``.
    """

    async def probe() -> list[str]:
        names = list(checks)
        outcomes = await asyncio.gather(*(checks[n]() for n in names), return_exceptions=True)
        return [
            f"{name}: {type(outcome).__name__}: {outcome}".rstrip(": ")
            for name, outcome in zip(names, outcomes, strict=True)
            if isinstance(outcome, BaseException)
        ]

    return probe


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

@dataclass(frozen=True, slots=True)
class AutoconfigSite:
    settings: autoconfig.ClientSettings
    # True for a customer domain this gateway serves (looked up on every request,
    # so a policy reload is seen at once).
    is_served_domain: Callable[[str], bool]


@dataclass(frozen=True, slots=True)
class MtaStsSite:
    policy: Policy
    is_served_domain: Callable[[str], bool]


_SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}


class OpsHTTPServer:
    def __init__(
        self,
        address: str,
        port: int,
        *,
        registry: CollectorRegistry,
        readiness: ReadinessProbe,
        autoconfig_site: AutoconfigSite | None = None,
        readiness_timeout: float = 5.0,
        ssl_context: ssl.SSLContext | None = None,
        mta_sts_site: MtaStsSite | None = None,
        pages: Mapping[str, Handler] | None = None,
    ) -> None:
        self.address = address
        self.port = port
        self._registry = registry
        self._readiness = readiness
        self._autoconfig = autoconfig_site
        self._readiness_timeout = readiness_timeout
        # Outlook only asks Autodiscover over HTTPS; Thunderbird and Apple prefer it.
        self._ssl_context = ssl_context
        self._runner: web.AppRunner | None = None
        self._mta_sts = mta_sts_site
        # GET pages the wiring adds (ops_endpoint.py: the account holder's held mail).
        self._pages = dict(pages or {})

    def set_mta_sts(self, site: MtaStsSite | None) -> None:
        """Swap the MTA-STS policy (on reload)."""
        self._mta_sts = site

    def set_autoconfig(self, site: AutoconfigSite | None) -> None:
        """Swap the autoconfig facts (on reload); requests in flight keep the old ones."""
        self._autoconfig = site

    @property
    def bound_port(self) -> int:
        """The port actually bound (useful when started with port 0)."""
        if self._runner is None or not self._runner.addresses:
            raise RuntimeError("the HTTP server is not running")
        return self._runner.addresses[0][1]

    def _app(self) -> web.Application:
        # The largest request we take is an Autodiscover POST of a few hundred bytes.
        app = web.Application(client_max_size=autoconfig.MAX_AUTODISCOVER_REQUEST)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/mail/config-v1.1.xml", self._thunderbird)
        app.router.add_get("/.well-known/autoconfig/mail/config-v1.1.xml", self._thunderbird)
        # Outlook has been seen asking with either capitalisation.
        app.router.add_post("/autodiscover/autodiscover.xml", self._autodiscover)
        app.router.add_post("/Autodiscover/Autodiscover.xml", self._autodiscover)
        app.router.add_get("/mobileconfig", self._mobileconfig)
        app.router.add_get(POLICY_PATH, self._mta_sts_policy)
        for path, handler in self._pages.items():
            app.router.add_get(path, handler)
        app.on_response_prepare.append(self._headers)
        return app

    async def start(self, sock: socket.socket | None = None) -> None:
        """Serve on ``sock`` when given: `serve` opens one per worker, shared by our
        workers only (gateway/sockets.py; metrics are summed across workers, so any of
        them can answer).  Without it, bind the address here, for this process alone."""
        if self._runner is not None:
            raise RuntimeError("the HTTP server is already running")
        runner = web.AppRunner(
            self._app(), access_log=None, handle_signals=False, shutdown_timeout=2.0
        )
        await runner.setup()
        try:
            site = (web.SockSite(runner, sock, ssl_context=self._ssl_context) if sock is not None
                    else web.TCPSite(runner, self.address, self.port, ssl_context=self._ssl_context))
            await site.start()
        except OSError:
            await runner.cleanup()
            raise
        self._runner = runner
        log.info("ops HTTP server listening on %s:%d", self.address, self.bound_port)

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    # --- handlers ----------------------------------------------------------------
    @staticmethod
    async def _headers(request: web.Request, response: web.StreamResponse) -> None:
        # Do not announce the aiohttp and Python versions.
        response.headers["Server"] = "portcullis"
        for name, value in _SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)

    async def _metrics(self, request: web.Request) -> web.Response:
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        # Collecting reads every worker's files in multiprocess mode: off the loop.
        body = await asyncio.to_thread(encoder, self._registry)
        response = web.Response(body=body)
        response.headers["Content-Type"] = content_type
        return response

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def _readyz(self, request: web.Request) -> web.Response:
        problems = await self.readiness_problems()
        if not problems:
            return web.Response(text="ok\n")
        text = "not ready:\n" + "".join(f"- {p}\n" for p in problems)
        return web.Response(status=503, text=text)

    async def readiness_problems(self) -> list[str]:
        try:
            async with asyncio.timeout(self._readiness_timeout):
                return [str(p) for p in await self._readiness()]
        except TimeoutError:
            return [f"readiness check took longer than {self._readiness_timeout:g}s"]
        except Exception as exc:  # a broken probe means "not ready", never a 500
            log.exception("readiness probe failed")
            return [f"readiness check failed: {type(exc).__name__}"]

    def _lookup(self, raw_address: str | None) -> autoconfig.Lookup:
        site = self._autoconfig
        if site is None:
            return autoconfig.Lookup(404, reason="autoconfig is not enabled on this gateway")
        return autoconfig.look_up(raw_address, site.is_served_domain, site.settings)

    async def _thunderbird(self, request: web.Request) -> web.Response:
        site = self._autoconfig
        raw = request.query.get("emailaddress")
        if raw is None and site is not None:
            # Thunderbird may ask autoconfig.DOMAIN without the address: the document
            # only needs the domain (usernames are placeholders).
            domain = autoconfig.domain_from_host(request.host)
            raw = f"user@{domain}" if domain else None
        answer = self._lookup(raw)
        if answer.address is None:
            return _refusal(answer)
        assert site is not None
        body = autoconfig.thunderbird_config(site.settings, answer.address.domain)
        return web.Response(body=body, content_type="application/xml", charset="utf-8")

    async def _autodiscover(self, request: web.Request) -> web.Response:
        body = await request.read()
        raw = autoconfig.autodiscover_address(body)
        if raw is None:
            return web.Response(status=400, text="not an Autodiscover request\n")
        answer = self._lookup(raw)
        if answer.address is None:
            return _refusal(answer)
        site = self._autoconfig
        assert site is not None
        document = autoconfig.autodiscover_response(site.settings, answer.address)
        return web.Response(body=document, content_type="application/xml", charset="utf-8")

    async def _mobileconfig(self, request: web.Request) -> web.Response:
        answer = self._lookup(request.query.get("emailaddress"))
        if answer.address is None:
            return _refusal(answer)
        site = self._autoconfig
        assert site is not None
        profile = autoconfig.mobileconfig(site.settings, answer.address)
        if profile is None:
            return web.Response(
                status=404,
                text="no incoming mail server is configured (http.autoconfig.imap or pop3)\n",
            )
        filename = autoconfig.mobileconfig_filename(answer.address)
        return web.Response(
            body=profile,
            content_type=autoconfig.MOBILECONFIG_TYPE,
            headers={"Content-Disposition": f'attachment; filename="{filename}"'},
        )


    async def _mta_sts_policy(self, request: web.Request) -> web.Response:
        # RFC 8461 §3.3: fetched as https://mta-sts.DOMAIN/...; the TLS-terminating front
        # end passes the Host on.  Answer only for our customers' domains.
        site = self._mta_sts
        host = (request.host or "").rsplit(":", 1)[0].rstrip(".").lower()
        domain = host.removeprefix("mta-sts.")
        if site is None or domain == host or not site.is_served_domain(domain):
            return web.Response(status=404, text="no MTA-STS policy here\n")
        # RFC 8461 §3.2: media type text/plain; senders cache it per max_age, not HTTP.
        return web.Response(text=site.policy.text(), content_type="text/plain")


def _refusal(answer: autoconfig.Lookup) -> web.Response:
    # The reason is one of our fixed sentences; the request's text is never echoed.
    return web.Response(status=answer.status, text=answer.reason + "\n")
