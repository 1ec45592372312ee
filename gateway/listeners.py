"""Our listening sockets and the SMTP servers on them.

Three listeners, each optional:

=============  ==========================  ==============================
inbound        MX, port 25                 no AUTH; STARTTLS when tls is set
submission     587, STARTTLS (RFC 6409)     TLS required before anything else
submissions    465, TLS from the first      RFC 8314 implicit TLS
               byte
=============  ==========================  ==============================

`portcullis serve` opens the sockets before any worker starts (gateway/sockets.py:
shared by our workers, by no other process); with several workers, the submission
listeners' connections are taken in turn (gateway/accepting.py).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import socket
import ssl
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from gateway import replies
from gateway.accepting import LoadTable, Share, TurnTakingServer
from gateway.config.model import Listener
from gateway.runtime import Runtime
from gateway.smtp.handler import GatewayHandler
from gateway.smtp.protocol import GatewaySMTP
from gateway.sockets import TURN_TAKING, Address, open_socket
from gateway.tls import server_context

log = logging.getLogger("portcullis.listeners")

# aiosmtpd warns when AUTH is required without its TLS check: that is our 465
# set-up on purpose (TLS from the first byte; we check encryption ourselves).
warnings.filterwarnings("ignore", message="Requiring AUTH while not requiring TLS")

# aiosmtpd has no TLS handshake timeout for its own STARTTLS (#269; ours has one:
# gateway/smtp/aiosmtpd_adapter.py, start_tls); for implicit TLS the server takes one.
TLS_HANDSHAKE_TIMEOUT = 30.0
# Seconds a balancer has to send the PROXY header after connecting.
PROXY_HEADER_TIMEOUT = 10.0
# At shutdown, after the last 421: seconds clients get to let go (a TLS client's
# close_notify, replies it has not read) before their connections are reset.
LET_GO_TIMEOUT = 5.0
# Seconds what closed sessions hold (connection slots, quota holds, downstream
# transactions) may take to be released before the store is closed regardless.
RELEASE_TIMEOUT = 10.0


@dataclass
class ListenerState:
    name: str
    settings: Listener
    # One server per address of the listener.
    servers: list[asyncio.Server | TurnTakingServer] = field(default_factory=list)
    connections: set[GatewaySMTP] = field(default_factory=set)


class SMTPListeners:
    """Starts the configured listeners and stops them gracefully."""

    def __init__(self, runtime: Runtime, tls_files: dict[str, tuple[Path, Path]],
                 share: Share | None = None):
        self.runtime = runtime
        # With several workers: this one's place in their table of open sessions.
        self._share = share
        self._tls_files = tls_files
        self.states: list[ListenerState] = []
        self._drained = asyncio.Event()
        # Every connection's clean-up tasks (GatewaySMTP.in_background).
        self._background: set[asyncio.Task] = set()

    async def start(self, sockets: dict[str, socket.socket] | None = None) -> None:
        """Serve on ``sockets`` (by field, ``listeners.inbound``), made by `serve`;
        without them (tests, benches) open each listener's address here."""
        cfg = self.runtime.config
        if self._share is not None:
            self._share.publish(0)  # started: the others may leave connections to it
        for name in ("inbound", "submission", "submissions"):
            settings: Listener | None = getattr(cfg.listeners, name)
            if settings is None:
                continue
            state = ListenerState(name, settings)
            self.states.append(state)  # before it serves: its sessions count from the first
            context = None
            if name in self._tls_files:
                context = server_context(*self._tls_files[name])
            direction = "inbound" if name == "inbound" else "outbound"
            handler = GatewayHandler(self.runtime, direction=direction)
            loop = asyncio.get_running_loop()
            for index, host in enumerate(settings.address):
                address = Address(f"listeners.{name}", host, settings.port, index)
                sock = (sockets or {}).get(address.key)
                if sock is None:
                    sock = open_socket(host, settings.port)
                factory = functools.partial(self._protocol, handler, state, context)
                implicit = context if name == "submissions" else None
                timeout = TLS_HANDSHAKE_TIMEOUT if name == "submissions" else None
                server: asyncio.Server | TurnTakingServer
                share = self._share if address.field in TURN_TAKING else None
                if share is None and implicit is not None:
                    # One worker, 465: our acceptor all the same, since it tells a
                    # connection whose handshake failed at once (asyncio's server
                    # tells nobody: GatewaySMTP.handshake_failed).
                    share = Share(LoadTable(1), 0)
                if share is not None:
                    server = TurnTakingServer(sock, factory, share=share,
                                              sessions=self._submission_sessions,
                                              ssl_context=implicit, ssl_handshake_timeout=timeout)
                    server.start()
                else:
                    server = await loop.create_server(factory, sock=sock, ssl=implicit,
                                                      ssl_handshake_timeout=timeout)
                state.servers.append(server)
                log.info("listening: %s on %s", name, address)

    def _protocol(self, handler: GatewayHandler, state: ListenerState,
                  context: ssl.SSLContext | None) -> GatewaySMTP:
        cfg = self.runtime.config
        limits = cfg.limits
        name = state.name
        proxy = state.settings.proxy_protocol
        proto = GatewaySMTP(
            handler,
            listener=name,
            offers_auth=name != "inbound",
            implicit_tls=name == "submissions",
            max_errors=limits.max_errors,
            data_timeout=limits.data_timeout,
            max_line_length=limits.max_line_length,
            on_close=lambda conn, s=state: self._closed(s, conn),
            background=self._background,
            hostname=cfg.hostname,
            ident="ESMTP Portcullis",
            data_size_limit=limits.max_message_size,
            # Lines are read as UTF-8 (RFC 6531); whether a transaction may use it is
            # ours to say (SMTPUTF8 advertised when the downstream offers it).
            enable_SMTPUTF8=True,
            decode_data=False,
            tls_context=context if name != "submissions" else None,
            require_starttls=name == "submission",
            # 587: AUTH only after STARTTLS.  465: TLS from the first byte, where
            # aiosmtpd's check would refuse AUTH (#274), so we check it ourselves.
            auth_require_tls=name == "submission",
            auth_required=name != "inbound",
            timeout=limits.command_timeout,
            # Any one command repeated this often in one connection is abuse (#145).
            command_call_limit=1000,
            proxy_protocol_timeout=PROXY_HEADER_TIMEOUT if proxy is not None else None,
            trusts_proxy=proxy.trusts if proxy is not None else None,
            # Without it aiosmtpd looks the loop up per connection, warnings filter and all.
            loop=asyncio.get_running_loop(),
        )
        if len(state.connections) >= state.settings.max_connections:
            proto.refuse_with = replies.TOO_MANY_CONNECTIONS
        screening = self.runtime.current().config.screening
        if screening is not None and handler.screening is not None:
            proto.screen = handler.screening.connection(screening)
        state.connections.add(proto)
        if self._share is not None and name != "inbound":
            self._share.publish(self._submission_sessions())
        return proto

    def _closed(self, state: ListenerState, conn: GatewaySMTP) -> None:
        state.connections.discard(conn)
        if self._share is not None and state.name != "inbound":
            self._share.publish(self._submission_sessions())
        if not self.active_connections:
            self._drained.set()

    def unbound(self) -> list[str]:
        """Listeners that are not accepting connections (for /readyz)."""
        return [f"listener {s.name}: not serving" for s in self.states
                if not s.servers or not all(server.is_serving() for server in s.servers)]

    def _submission_sessions(self) -> int:
        """What the workers balance (gateway/accepting.py): open submission sessions."""
        return sum(len(s.connections) for s in self.states if s.name != "inbound")

    @property
    def active_connections(self) -> int:
        return sum(len(s.connections) for s in self.states)

    async def stop(self, grace: float) -> None:
        """Stop accepting; let transactions in flight finish (up to ``grace``); then
        421 the rest, and wait until what every session held is released (the
        store closes after this)."""
        for state in self.states:
            for server in state.servers:
                server.close()
        for conn in self._connections():
            conn.close_gracefully()  # 421 now to the idle, at its end to a transaction
        if not await self._drain(grace):
            late = [conn for conn in self._connections() if conn.is_open]
            if late:
                log.warning("grace period over: 421 to %d sessions still in a transaction",
                            len(late))
            for conn in late:
                conn.cut_short()
            if not await self._drain(LET_GO_TIMEOUT):
                log.warning("resetting %d connections that did not close", self.active_connections)
                for conn in self._connections():
                    conn.reset()
                await self._drain(1.0)
        await self._settle()
        for state in self.states:
            for server in state.servers:
                await server.wait_closed()

    def _connections(self) -> list[GatewaySMTP]:
        return [conn for state in self.states for conn in state.connections]

    async def _drain(self, seconds: float) -> bool:
        """Wait until no connection is left; False when ``seconds`` ran out first."""
        self._drained.clear()
        if not self.active_connections:
            return True
        try:
            async with asyncio.timeout(seconds):
                await self._drained.wait()
        except TimeoutError:
            return False
        return True

    async def _settle(self) -> None:
        """Wait for the closed sessions' clean-up (which may start more of it)."""
        deadline = asyncio.get_running_loop().time() + RELEASE_TIMEOUT
        while self._background:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                log.error("%d clean-up tasks still running after %.0fs; closing the store anyway",
                          len(self._background), RELEASE_TIMEOUT)
                return
            await asyncio.wait(list(self._background), timeout=left)
