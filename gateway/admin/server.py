"""The admin listener: the JSON API (api.py) and the console (console.py) on a port
of their own, over HTTPS when ``admin.tls`` is set (docs/console.md).

Apart from the ``http:`` port on purpose: that one may face customers (autoconfig)
and Prometheus; this one changes state, so it binds loopback by default and can be
firewalled, or put behind an SSO proxy, on its own.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable

from aiohttp import web

from gateway.admin import api, console
from gateway.admin.desk import Desk, Reload
from gateway.runtime import Runtime
from gateway.tls import server_context

log = logging.getLogger("portcullis.admin")

# No inline script or style anywhere: the CSP forbids both, so an injected
# <script> in a held message's subject could not run even if escaping failed.
_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
SECURITY_HEADERS = {
    "Content-Security-Policy": _CSP,
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=()",
}
# The largest request: a login form or a JSON reason.
MAX_REQUEST = 16 * 1024


class AdminServer:
    def __init__(self, runtime: Runtime, reload: Reload, clock: Callable[[], float] | None = None):
        settings = runtime.config.admin
        assert settings is not None
        self.desk = Desk(runtime, reload, clock) if clock else Desk(runtime, reload)
        self.address, self.port = settings.address, settings.port
        base = runtime.config.base_dir
        self._ssl: ssl.SSLContext | None = (
            server_context(*(p if p.is_absolute() else base / p
                             for p in (settings.tls.cert, settings.tls.key)))
            if settings.tls else None)
        self._runner: web.AppRunner | None = None

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_REQUEST)
        api.add_routes(app, self.desk)
        console.add_routes(app, self.desk)
        app.on_response_prepare.append(self._headers)
        return app

    async def _headers(self, request: web.Request, response: web.StreamResponse) -> None:
        response.headers["Server"] = "portcullis"
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        if self._ssl is not None:
            response.headers["Strict-Transport-Security"] = "max-age=31536000"

    @property
    def bound_port(self) -> int:
        if self._runner is None or not self._runner.addresses:
            raise RuntimeError("the admin listener is not running")
        return self._runner.addresses[0][1]

    async def start(self) -> None:
        runner = web.AppRunner(self.app(), access_log=None, handle_signals=False,
                               shutdown_timeout=2.0)
        await runner.setup()
        try:
            await web.TCPSite(runner, self.address, self.port, ssl_context=self._ssl).start()
        except OSError:
            await runner.cleanup()
            raise
        self._runner = runner
        log.info("admin listener on %s port %d (%s)", self.address, self.bound_port,
                 "https" if self._ssl else "http: put a TLS proxy in front")

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
