"""The one module that knows aiosmtpd's insides.

aiosmtpd splits protocol from policy with its ``handle_*`` hooks, and the policy
is ours through them.  But a security gateway must also change the protocol
engine itself (gateway/smtp/protocol.py says what and why): its DATA reader,
its timer, its address parser, its goodbye.  aiosmtpd 1.4.6 offers no public way
to do that, only methods it calls on itself and attributes it keeps, all private.

Every use of those is here, behind a name of ours: gateway/smtp/protocol.py
subclasses :class:`SMTPAdapter` and touches nothing private of aiosmtpd's (or of
asyncio's StreamReader, which aiosmtpd's reader is).  tests/test_aiosmtpd_adapter.py
holds this module to the aiosmtpd installed: each member below still exists with
the signature relied on, aiosmtpd's command loop still calls the ones overridden,
and our own names collide with none of aiosmtpd's.  pyproject.toml pins the
version it was checked against (:data:`AIOSMTPD_VERSION`); an upgrade starts by
running that test.

Hook discovery without patching aiosmtpd: ``SMTP.__init__`` finds its AUTH
mechanisms, handler hooks and commands with ``inspect.getmembers`` and ``dir()``
on the connection and on the handler, for every connection: with the full
attribute lists GatewaySMTP() took 92-130 µs, with :class:`HookDiscovery`
(``dir()`` lists only the names aiosmtpd looks for) still 33-44 µs, two thirds
of it in that introspection (bench/connection_setup.py).  So :class:`SMTPAdapter`
does not run ``SMTP.__init__``: :meth:`SMTPAdapter.init_as_aiosmtpd` leaves the
connection as ``SMTP.__init__`` would, with the names of the hooks, commands and
mechanisms found once per (connection class, handler class) and only bound per
connection.  tests/test_aiosmtpd_adapter.py builds connections both ways and
compares every attribute, so an aiosmtpd that sets something new fails there.

STARTTLS on the event loop's own TLS: aiosmtpd's ``smtp_STARTTLS`` builds an
``asyncio.sslproto.SSLProtocol`` by hand and puts it under the connection, so
every TLS record of a session begun on 587 went through asyncio's pure-Python
TLS layer, under uvloop too (about a quarter of the event loop's samples on the
submission path).  :meth:`SMTPAdapter.start_tls` upgrades with
``loop.start_tls()`` instead: uvloop's TLS in C under uvloop (as implicit TLS on
465 already was), asyncio's otherwise, with aiosmtpd's session reset kept.
"""

from __future__ import annotations

import asyncio
import collections
import inspect
import logging
import weakref
from collections.abc import Callable, Iterable, Iterator, MutableMapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import aiosmtpd.smtp
from aiosmtpd.smtp import SMTP, TLSSetupException

_aiosmtpd_log = logging.getLogger("mail.log")  # aiosmtpd's own logger

# The release this module was checked against; pyproject.toml pins the same.
AIOSMTPD_VERSION = "1.4.6"

# aiosmtpd picks hooks, commands and AUTH mechanisms out of dir() by these prefixes.
HOOK_PREFIXES = ("auth_", "handle_", "smtp_")
_hook_names_by_class: dict[type, list[str]] = {}
# Seconds a STARTTLS handshake may take: asyncio's and uvloop's default, the one
# aiosmtpd's hand-built SSLProtocol had (the command timer, armed for STARTTLS,
# usually ends a stalled handshake first).
STARTTLS_HANDSHAKE_TIMEOUT = 60.0
# What aiosmtpd's session.ssl held after STARTTLS (its SSLProtocol's extra info).
_SSL_EXTRA = ("sslcontext", "peercert", "cipher", "compression", "ssl_object")
# A connection's timer that comes due this close to its deadline ends it (uvloop's
# clock counts milliseconds: closer than that, it would arm itself again and again).
TIMER_SLACK = 0.002


def hook_names(cls: type) -> list[str]:
    """The names of ``cls`` that aiosmtpd may take as a hook, command or mechanism."""
    names = _hook_names_by_class.get(cls)
    if names is None:
        names = _hook_names_by_class[cls] = [n for n in dir(cls) if n.startswith(HOOK_PREFIXES)]
    return names


class HookDiscovery:
    """``dir()`` of an instance lists only the names aiosmtpd looks hooks up by.

    For the handler and the SMTP connection, wherever aiosmtpd's own
    ``SMTP.__init__`` runs (our connections skip it: :meth:`SMTPAdapter.init_as_aiosmtpd`):
    it runs ``dir()`` and ``inspect.getmembers()`` (which calls ``dir()`` and then
    ``getattr`` on every name, properties included) on both.  Only the class's names:
    scanning each instance's attributes would cost as much again, and no hook of
    ours is an instance attribute (tests/test_aiosmtpd_adapter.py checks that
    aiosmtpd finds what a full ``dir()`` would, and that each hook of ours is one
    aiosmtpd calls: a misspelt hook is silently ignored)."""

    __slots__ = ()

    def __dir__(self) -> list[str]:
        return hook_names(type(self))


@dataclass(frozen=True, slots=True)
class _HookNames:
    """What ``SMTP.__init__`` looks up by name, found once per pair of classes:
    (mechanism, attribute, on the connection?), (hook, attribute), (command,
    attribute), in the order aiosmtpd's own look-ups find them."""

    mechanisms: tuple[tuple[str, str, bool], ...]
    hooks: tuple[tuple[str, str], ...]
    commands: tuple[tuple[str, str], ...]
    ehlo_hook_version: str | None

    @staticmethod
    def of(cls: type, handler: Any) -> _HookNames:
        found = _hook_names_by_pair.get((cls, type(handler)))
        if found is None:
            found = _hook_names_by_pair[(cls, type(handler))] = _HookNames._find(cls, handler)
        return found

    @staticmethod
    def _find(cls: type, handler: Any) -> _HookNames:
        handler_cls = type(handler)
        # Names on the classes only: no hook of ours is an instance attribute (the
        # contract test compares with aiosmtpd's own look-up on instances).
        mechanisms = [
            (getattr(getattr(owner, name), "__auth_mechanism_name__",
                     name.replace("auth_", "").replace("__", "-")), name, owner is cls)
            for owner in (cls, handler_cls)
            for name in dir(owner)  # sorted, as inspect.getmembers returns them
            if name.startswith("auth_")]
        hooks = [(n.replace("handle_", ""), n) for n in dir(handler_cls) if n.startswith("handle_")]
        version = None
        if hasattr(handler_cls, "handle_EHLO"):
            # aiosmtpd counts the bound hook's parameters: 4 (old form) or 5.
            count = len(inspect.signature(handler.handle_EHLO).parameters)
            if count not in (4, 5):
                raise RuntimeError("Unsupported EHLO Hook")
            version = "old" if count == 4 else "new"
        commands = [(n.replace("smtp_", ""), n) for n in dir(cls) if n.startswith("smtp_")]
        return _HookNames(tuple(mechanisms), tuple(hooks), tuple(commands), version)


_hook_names_by_pair: dict[tuple[type, type], _HookNames] = {}


class _ClosingOnce(asyncio.StreamWriter):
    """aiosmtpd closes its writer whenever its command loop ends, also after we
    closed the transport ourselves; a TLS transport must not be closed twice.

    It knows its connection (the protocol) by a weak proxy: the connection holds
    the writer, and a strong reference back made every connection a cycle for the
    garbage collector (see SMTPAdapter._let_go)."""

    def __init__(self, transport: asyncio.BaseTransport, protocol: Any,
                 reader: asyncio.StreamReader | None, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(transport, weakref.proxy(protocol), reader, loop)  # type: ignore[arg-type]

    def close(self) -> None:
        if not self.transport.is_closing():
            self.transport.close()


class SMTPAdapter(HookDiscovery, SMTP):
    """aiosmtpd's ``SMTP`` with its private members behind names of ours.

    Overridden (aiosmtpd calls these on itself; each hands over to our name):

    ==========================  ========================================
    aiosmtpd                    ours
    ==========================  ========================================
    ``_handle_client()``        :meth:`serve` (the command loop's task)
    ``_timeout_cb()``           :meth:`on_timeout`
    ``_getaddr(arg)``           :meth:`parse_path`
    ``_set_post_data_state()``  :meth:`before_envelope_reset`
    ``_cb_client_connected()``  (the writer closes its transport once)
    ``smtp_STARTTLS()``         :meth:`start_tls` (the loop's own TLS)
    ``connection_made()``       after STARTTLS: :meth:`_tls_made`
    ``_reset_timeout()``        moves the deadline of one timer
    ==========================  ========================================

    :meth:`serve` is aiosmtpd's command loop, reply for reply, without its
    per-command costs (see there).
    """

    def __init__(self, handler: Any, **kwargs: Any) -> None:
        self.init_as_aiosmtpd(handler, **kwargs)
        # aiosmtpd keeps command_size_limits on its class, one dict for every
        # connection: each new connection clears it (in SMTP.__init__), each EHLO
        # changes MAIL's.  A MAIL line that EHLO allowed (RFC 1870 §3: 26 octets more
        # for SIZE=) was refused as too long once another client connected.
        self.command_size_limits = collections.defaultdict(
            lambda limit=self.command_size_limit: limit)

    def init_as_aiosmtpd(
            self, handler: Any, *, data_size_limit: int | None = aiosmtpd.smtp.DATA_SIZE_DEFAULT,
            enable_SMTPUTF8: bool = False, decode_data: bool = False,
            hostname: str | None = None, ident: str | None = None, tls_context: Any = None,
            require_starttls: bool = False, timeout: float = 300, auth_required: bool = False,
            auth_require_tls: bool = True, auth_exclude_mechanism: Iterable[str] | None = None,
            auth_callback: Any = None, command_call_limit: int | dict[str, int] | None = None,
            authenticator: Any = None, proxy_protocol_timeout: float | None = None,
            loop: asyncio.AbstractEventLoop | None = None) -> None:
        """What ``SMTP.__init__`` leaves on a new connection, same arguments, same
        attributes (its advisory log lines about the TLS context and AUTH settings
        are left out: they are configuration, checked once at start-up)."""
        self.__ident__ = ident or aiosmtpd.smtp.__ident__
        self.loop = loop if loop else aiosmtpd.smtp.make_loop()
        asyncio.StreamReaderProtocol.__init__(
            self, asyncio.StreamReader(loop=self.loop, limit=self.line_length_limit),
            client_connected_cb=self._cb_client_connected, loop=self.loop)
        self.event_handler = handler
        assert data_size_limit is None or isinstance(data_size_limit, int)
        self.data_size_limit = data_size_limit
        self.enable_SMTPUTF8 = enable_SMTPUTF8
        self._decode_data = decode_data
        self.command_size_limits.clear()
        self.hostname = hostname or aiosmtpd.smtp.socket.getfqdn()
        self.tls_context = tls_context
        self.require_starttls = tls_context and require_starttls
        self._timeout_duration = timeout
        self._timeout_handle = None
        self._tls_handshake_okay = True
        self._tls_protocol = None
        self._original_transport = None
        self.session = None
        self.envelope = None
        self.transport = None
        self._handler_coroutine = None
        self._auth_require_tls = auth_require_tls
        if proxy_protocol_timeout is not None and proxy_protocol_timeout <= 0:
            raise ValueError("proxy_protocol_timeout must be > 0")
        self._proxy_timeout = proxy_protocol_timeout
        if authenticator is not None:
            self._authenticator, self._auth_callback = authenticator, None
        else:
            self._auth_callback = auth_callback or aiosmtpd.smtp.login_always_fail
            self._authenticator = None
        self._auth_required = auth_required
        names = _HookNames.of(type(self), handler)
        self._auth_methods = {
            mechanism: aiosmtpd.smtp._AuthMechAttr(getattr(self if own else handler, name), own)
            for mechanism, name, own in names.mechanisms}
        for mechanism in auth_exclude_mechanism or ():
            self._auth_methods.pop(mechanism, None)
        self._handle_hooks = {hook: getattr(handler, name) for hook, name in names.hooks}
        self._ehlo_hook_ver = names.ehlo_hook_version
        self._smtp_methods = {command: getattr(self, name) for command, name in names.commands}
        if command_call_limit is None:
            self._enforce_call_limit = False
        else:
            self._enforce_call_limit = True
            if isinstance(command_call_limit, int):
                self._call_limit_base = {}
                self._call_limit_default = command_call_limit
            elif isinstance(command_call_limit, dict):
                if not all(isinstance(v, int) for v in command_call_limit.values()):
                    raise TypeError("All command_call_limit values must be int")
                self._call_limit_base = command_call_limit
                self._call_limit_default = command_call_limit.get(
                    "*", aiosmtpd.smtp.CALL_LIMIT_DEFAULT)
            else:
                raise TypeError("command_call_limit must be int or Dict[str, int]")

    # --- aiosmtpd calls these; each hands over to our name -------------------------
    async def _handle_client(self) -> None:
        try:
            await self.serve()
        except (asyncio.CancelledError, ConnectionError):
            # The connection's end: its loss (aiosmtpd cancels this task), QUIT (it
            # cancels itself), a shutdown, a reset or a broken pipe.  Ended here, not
            # raised on: a task that ends with an exception keeps it, its traceback
            # keeps the command loop's frames, they keep this connection, and the
            # connection keeps the task, so every connection was left to the garbage
            # collector (about 67 objects each; its collections then paused the
            # event loop every few hundred connections, 4-6 ms each).
            pass
        finally:
            self._let_go()

    def _let_go(self) -> None:
        """The command loop is over: drop what ties this connection to itself (its
        command and AUTH tables hold its own bound methods), so that it is freed as
        soon as the last reference goes, not at the next garbage collection."""
        self._smtp_methods = {}
        self._auth_methods = {}
        self._handle_hooks = {}  # with our PROXY hook, a method of this connection
        self._client_connected_cb = None  # asyncio's StreamReaderProtocol: our method

    def _timeout_cb(self) -> None:
        self.on_timeout()

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        return self.parse_path(arg)

    def _set_post_data_state(self) -> None:
        # aiosmtpd calls it at the end of DATA, and (through _set_rset_state) at
        # RSET, HELO, EHLO and when a connection (or its TLS layer) is made.
        self.before_envelope_reset()
        super()._set_post_data_state()

    def _cb_client_connected(self, reader: asyncio.StreamReader,
                             writer: asyncio.StreamWriter) -> None:
        super()._cb_client_connected(
            reader, _ClosingOnce(writer.transport, self, reader, self.loop))

    async def smtp_STARTTLS(self, arg: str) -> None:
        # aiosmtpd's, but for the handshake: its hand-built SSLProtocol is replaced
        # by the loop's start_tls() (see start_tls).
        if arg:
            await self.push("501 Syntax: STARTTLS")
            return
        if not self.tls_context:
            await self.push("454 TLS not available")
            return
        await self.push("220 Ready to start TLS")
        await self.start_tls()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self._original_transport is None:  # the socket's (or implicit TLS's) connection
            super().connection_made(transport)
        else:  # the TLS transport start_tls made
            self._tls_made(transport)

    def _reset_timeout(self, duration: float | None = None) -> None:
        # aiosmtpd cancels its timer and makes a new one for every command; here the
        # timer only moves the connection's deadline, and one that comes due early
        # arms itself again for what is left (see _timer_due).  A shorter deadline
        # than the armed one arms it afresh.
        loop = self.loop
        now = loop.time()
        deadline = self._deadline = now + (duration or self._timeout_duration)
        handle = self._timeout_handle
        if handle is not None:
            if now < handle.when() <= deadline and not handle.cancelled():
                return  # still to come, and no later than the deadline
            handle.cancel()
        self._timeout_handle = loop.call_at(deadline, self._timer_due)

    _deadline = 0.0

    def _timer_due(self) -> None:
        if self._deadline - self.loop.time() > TIMER_SLACK:
            self._timeout_handle = self.loop.call_at(self._deadline, self._timer_due)
            return
        self._timeout_cb()

    # --- our names: by default, what aiosmtpd does ------------------------------------
    async def serve(self) -> None:
        """The connection's life: the PROXY header, the greeting, the command loop.

        aiosmtpd's ``_handle_client``, reply for reply, with its per-command costs
        taken out: each line was sanitised for two log calls whether or not they
        log (a fifth of the loop's own time), and the timer was made anew (see
        _reset_timeout)."""
        session = self.session
        assert session is not None
        log = _aiosmtpd_log
        log.info("%r handling connection", session.peer)
        if self._proxy_timeout is not None:
            self._reset_timeout(self._proxy_timeout)
            session.proxy_data = await aiosmtpd.smtp.get_proxy(self._reader)
            if session.proxy_data:
                log.info("%r valid PROXY handshake", session.peer)
                status = await self._call_handler_hook("PROXY", session.proxy_data)
            else:
                log.warning("%r invalid PROXY handshake", session.peer)
                status = False
            if status is aiosmtpd.smtp.MISSING or not status:
                log.info("%r rejected by handle_PROXY", session.peer)
                assert self.transport is not None
                self.transport.close()
                return
            self._reset_timeout()
        await self.push(f"220 {self.hostname} {self.__ident__}")
        call_limit: MutableMapping[str, int] = {}
        if self._enforce_call_limit:
            call_limit = collections.defaultdict(lambda: self._call_limit_default,
                                                 self._call_limit_base)
        bogus_budget = aiosmtpd.smtp.BOGUS_LIMIT
        reader = self._reader
        methods = self._smtp_methods
        while self.transport is not None:
            try:
                try:
                    line: bytes = await reader.readuntil()
                except asyncio.LimitOverrunError as error:
                    # Line too long: read to its end, then 500.
                    await reader.read(error.consumed)
                    while True:
                        try:
                            await reader.readuntil()
                            break
                        except asyncio.LimitOverrunError as more:
                            await reader.read(more.consumed)
                    await self.push("500 Command line too long")
                    continue
                line = line.rstrip(b"\r\n")
                if log.isEnabledFor(logging.INFO):
                    log.info("%r >> %r", self.session.peer, aiosmtpd.smtp.sanitize(line))
                if not line:
                    await self.push("500 Error: bad syntax")
                    continue
                command_bytes, _, arg_bytes = line.partition(b" ")
                try:
                    command = command_bytes.upper().decode("ascii")
                except UnicodeDecodeError:
                    await self.push("500 Error: bad syntax")
                    continue
                arg: str | None = None
                if arg_bytes:
                    arg_bytes = arg_bytes.strip()
                    if self.enable_SMTPUTF8:
                        arg = str(arg_bytes, encoding="utf-8", errors="surrogateescape")
                    else:
                        try:
                            arg = str(arg_bytes, encoding="ascii", errors="strict")
                        except UnicodeDecodeError:
                            await self.push("500 Error: strict ASCII mode")
                            continue
                limit = (self.command_size_limits[command] if self.session.extended_smtp
                         else self.command_size_limit)
                if len(line) > limit:
                    await self.push("500 Command line too long")
                    continue
                if not self._tls_handshake_okay and command != "QUIT":
                    await self.push("554 Command refused due to lack of security")
                    continue
                if (self.require_starttls and not self._tls_protocol
                        and command not in aiosmtpd.smtp.ALLOWED_BEFORE_STARTTLS):
                    await self.push("530 Must issue a STARTTLS command first")
                    continue
                if self._enforce_call_limit:
                    budget = call_limit[command]
                    if budget < 1:
                        log.warning("%r over limit for %s", self.session.peer, command)
                        await self.push(f"421 4.7.0 {command} sent too many times")
                        self.transport.close()
                        continue
                    call_limit[command] = budget - 1
                method = methods.get(command)
                if method is None:
                    log.warning("%r unrecognised: %s", self.session.peer, command)
                    bogus_budget -= 1
                    if bogus_budget < 1:
                        log.warning("%r too many bogus commands", self.session.peer)
                        await self.push("502 5.5.1 Too many unrecognized commands, goodbye.")
                        self.transport.close()
                        continue
                    await self.push(f'500 Error: command "{command}" not recognized')
                    continue
                self._reset_timeout()
                await method(arg)
            except (asyncio.CancelledError, ConnectionResetError):
                log.info("%r Connection lost during _handle_client()", self.session.peer)
                self._writer.close()
                raise
            except Exception as error:
                status = None
                try:
                    status = await self.handle_exception(error)
                except Exception as inner_error:
                    try:
                        log.exception("%r Exception in handle_exception()", self.session.peer)
                        status = f"500 Error: ({inner_error.__class__.__name__}) {inner_error}"
                    except Exception:
                        status = "500 Error: Cannot describe error"
                finally:
                    if isinstance(error, TLSSetupException):
                        self.transport.close()
                        self.connection_lost(error)
                    else:
                        await self.push(status)  # type: ignore[arg-type]

    def on_timeout(self) -> None:
        """The command (or PROXY header) timer ran out: aiosmtpd closes the transport."""
        SMTP._timeout_cb(self)

    def parse_path(self, arg: str) -> tuple[str | None, str | None]:
        """``<path> params`` of MAIL FROM: / RCPT TO: → (address, params) or (None, None)."""
        return SMTP._getaddr(self, arg)

    def before_envelope_reset(self) -> None:
        """The transaction's envelope is about to be replaced by an empty one."""

    # --- STARTTLS on the loop's own TLS ------------------------------------------------
    tls_handshaking = False

    async def start_tls(self) -> None:
        """The TLS handshake after ``220 Ready to start TLS``, then the session reset
        (RFC 3207 §4.2).  A failed handshake raises aiosmtpd's TLSSetupException, for
        its command loop (close, connection_lost, as before)."""
        assert self.tls_context is not None and self.transport is not None
        plain = self.transport
        # RFC 3207 §4.2: whatever the client sent after STARTTLS in the clear is no
        # command (STARTTLS command injection, CVE-2011-0411 and CVE-2024-34083).
        # Dropped now: once start_tls() has the transport, plaintext can no longer
        # reach the reader, and what the reader gets next is decrypted (asyncio hands
        # over data that came with the handshake's last flight at once, before this
        # coroutine resumes: aiosmtpd's way, clearing after the handshake, would lose it).
        self._reader._buffer.clear()
        self._original_transport = plain
        self.tls_handshaking = True
        try:
            tls = await self.loop.start_tls(
                plain, self, self.tls_context, server_side=True,
                ssl_handshake_timeout=STARTTLS_HANDSHAKE_TIMEOUT)
        except asyncio.CancelledError:
            # We ended the session mid-handshake (its timer, shutdown).  A TLS layer
            # still shaking hands never tells its protocol that the connection is gone.
            self.tls_handshaking = False
            plain.abort()
            self.connection_lost(None)
            raise
        except Exception as error:
            self.tls_handshaking = False
            raise TLSSetupException() from error
        self.tls_handshaking = False
        if tls is None or tls.is_closing():  # the socket went away mid-handshake
            raise TLSSetupException() from ConnectionResetError("lost during the TLS handshake")
        self.connection_made(tls)

    def _tls_made(self, transport: asyncio.BaseTransport) -> None:
        """What aiosmtpd's connection_made does for the TLS layer of STARTTLS: the
        session forgotten (RFC 3207 §4.2), the reader and writer on the new
        transport, session.ssl, the handler's STARTTLS hook.  Its buffer was
        cleared before the handshake (start_tls)."""
        self._set_rset_state()
        self.session = self._create_session()
        self.session.peer = transport.get_extra_info("peername")
        self._reset_timeout()
        self._reader._transport = transport  # type: ignore[attr-defined]
        self._writer._transport = transport  # type: ignore[attr-defined]
        self.transport = transport
        # aiosmtpd reads _tls_protocol only as "has STARTTLS happened" outside the
        # two methods replaced here (tests/test_aiosmtpd_adapter.py checks).
        self._tls_protocol = transport  # type: ignore[assignment]
        self.session.ssl = {name: transport.get_extra_info(name) for name in _SSL_EXTRA}
        hook = self._handle_hooks.get("STARTTLS")
        self._tls_handshake_okay = (
            True if hook is None else hook(self, self.session, self.envelope))

    # --- state and actions aiosmtpd keeps private -----------------------------------
    def reset_envelope(self) -> None:
        """End of the transaction: a new, empty envelope (after before_envelope_reset)."""
        self._set_post_data_state()

    def reset_state(self) -> None:
        """HELO/EHLO (RFC 5321 §4.1.4): as RSET, a new empty envelope."""
        self._set_rset_state()

    def restart_timer(self, duration: float | None = None) -> None:
        """Arm the timer afresh: ``duration`` seconds, or the command timeout."""
        self._reset_timeout(duration)

    async def call_hook(self, name: str, *args: Any) -> Any:
        """The handler's ``handle_<name>`` hook's answer (aiosmtpd's MISSING if none)."""
        return await self._call_handler_hook(name, *args)

    def set_hook(self, name: str, hook: Callable[..., Any]) -> None:
        """Use ``hook`` as ``handle_<name>`` for this connection."""
        self._handle_hooks[name] = hook

    @property
    def mechanisms_offered(self) -> list[str]:
        """The AUTH mechanisms aiosmtpd found, sorted (for EHLO)."""
        return sorted(self._auth_methods)

    @property
    def started_tls(self) -> bool:
        """STARTTLS has completed on this connection (not implicit TLS)."""
        return self._tls_protocol is not None

    @property
    def command_task(self) -> asyncio.Task[None] | None:
        """The task running :meth:`serve` (None before the connection is made)."""
        return self._handler_coroutine

    def transports(self) -> list[asyncio.BaseTransport]:
        """The transports to abort to drop the connection: after STARTTLS, the TLS
        one and the socket's beneath it."""
        return [t for t in (self._original_transport, self.transport) if t is not None]

    def strip_keyword(self, keyword: str, arg: str) -> str | None:
        """``arg`` without ``keyword`` (``FROM:``, ``TO:``) at its start; None if absent."""
        return self._strip_command_keyword(keyword, arg)

    # --- the socket, beneath aiosmtpd's line reader ---------------------------------
    def has_buffered_input(self) -> bool:
        """The client has sent something not yet read (an early talker, before the greeting)."""
        return bool(self._reader._buffer)

    def has_buffered_line(self) -> bool:
        """The client's next command line (or part of it) has already arrived."""
        return b"\n" in self._reader._buffer

    @property
    def output_closing(self) -> bool:
        """Our side is closing or closed: nothing more can be written."""
        return self._writer.transport.is_closing()

    async def write(self, data: bytes) -> None:
        """Write ``data`` as it is and wait until the transport takes more."""
        writer = self._writer
        writer.write(data)
        # A reply is a few dozen octets: the socket nearly always takes it at once,
        # and drain() would only make and await two coroutines to find that out.
        if writer.transport.get_write_buffer_size():
            await writer.drain()

    @contextmanager
    def reading_data(self, limit: int) -> Iterator[None]:
        """Read with :meth:`read_some` while inside, with ``limit`` as the reader's limit.

        aiosmtpd sets the StreamReader's limit to the command line limit, which also
        pauses the socket once twice that is buffered: DATA wants larger reads."""
        reader = self._reader
        saved, reader._limit = reader._limit, limit
        try:
            yield
        finally:
            reader._limit = saved

    async def read_some(self, size: int) -> bytes:
        """Up to ``size`` octets, as soon as any arrive; b"" at the end of the stream."""
        return await self._reader.read(size)

    def unread(self, data: bytes) -> None:
        """Put ``data`` back in front of what the reader holds (StreamReader has no
        unread): what a pipelining client sent after DATA's end, for the command loop."""
        self._reader._buffer[:0] = data


def keep_help_texts(cls: type[SMTP]) -> None:
    """aiosmtpd's HELP reads the syntax its @syntax decorator put on each smtp_*
    method; an override has none, and its command dropped out of HELP.  Each of
    ``cls``'s takes the syntax of the method it overrides."""
    for name, method in vars(cls).items():
        parent = getattr(SMTP, name, None)
        if name.startswith("smtp_") and hasattr(parent, "__smtp_syntax__"):
            for attr in ("__smtp_syntax__", "__smtp_syntax_extended__", "__smtp_syntax_when__"):
                setattr(method, attr, getattr(parent, attr))


def help_only_when(method: Callable[..., Any], attribute: str) -> None:
    """HELP names ``method``'s command only on connections whose ``attribute`` is true."""
    method.__smtp_syntax_when__ = attribute  # type: ignore[attr-defined]


# The adapter's own smtp_STARTTLS keeps HELP's text for it.
keep_help_texts(SMTPAdapter)
