"""Delegate AUTH to the ISP's Dovecot, over its authentication protocol (as Postfix's
``smtpd_sasl_type = dovecot`` does).  Portcullis never sees a hash.

The protocol (Dovecot's "Authentication Protocol" design doc, v1.x): line based,
fields separated by TAB.

    C: VERSION 1 2            S: VERSION 1 2
    C: CPID <pid>             S: MECH PLAIN plaintext ... SPID CUID COOKIE DONE
    C: AUTH <id> PLAIN service=smtp secured nologin resp=<base64 "\\0login\\0password">
    S: OK <id> user=<login> [extra fields]     -- password right
    S: FAIL <id> user=... [temp] [reason=...]  -- wrong, unknown, or (temp) cannot tell

One connection per process, kept open and reused; requests are multiplexed on it
by id, so many sessions can authenticate at once.  When it breaks, requests in
flight get TEMPFAIL and the next AUTH reconnects.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import logging
import os

from gateway.accounts.customers import CustomerMap
from gateway.accounts.source import AuthAnswer, Outcome
from gateway.config.accounts import DovecotSettings

log = logging.getLogger(__name__)

_MAJOR = 1


class ProtocolError(Exception):
    pass


def _unescape(value: str) -> str:
    """Dovecot's tab-escaping: \\001 followed by 0, 1, t, r, n (or l)."""
    if "\x01" not in value:
        return value
    out, it = [], iter(value)
    table = {"0": "\0", "1": "\x01", "t": "\t", "r": "\r", "n": "\n", "l": "\n"}
    for ch in it:
        if ch == "\x01":
            nxt = next(it, "")
            out.append(table.get(nxt, nxt))
        else:
            out.append(ch)
    return "".join(out)


def parse_reply(fields: list[str]) -> tuple[dict[str, str], set[str]]:
    """Optional parameters of a reply: name=value pairs and bare flags."""
    values: dict[str, str] = {}
    flags: set[str] = set()
    for field in fields:
        name, eq, value = field.partition("=")
        if eq:
            values[name] = _unescape(value)
        else:
            flags.add(name)
    return values, flags


def plain_response(login: str, password: str) -> str:
    """RFC 4616 PLAIN: authzid NUL authcid NUL passwd, with an empty authzid."""
    # surrogateescape: bytes the SMTP layer could not decode go to Dovecot unchanged.
    login_b = login.encode("utf-8", "surrogateescape")
    password_b = password.encode("utf-8", "surrogateescape")
    return base64.b64encode(b"\0" + login_b + b"\0" + password_b).decode()


class _Connection:
    """One handshaken connection and the requests waiting on it."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader = reader
        self.writer = writer
        self.pending: dict[int, asyncio.Future[list[str]]] = {}
        self.mechanisms: set[str] = set()
        self.closed = False
        self.task: asyncio.Task | None = None

    async def handshake(self) -> None:
        self.writer.write(f"VERSION\t{_MAJOR}\t2\nCPID\t{os.getpid()}\n".encode())
        await self.writer.drain()
        while True:
            line = await self.reader.readline()
            if not line.endswith(b"\n"):
                raise ProtocolError("connection closed during the handshake")
            parts = line.decode("utf-8", "replace").rstrip("\n").split("\t")
            if parts[0] == "VERSION":
                if len(parts) < 2 or parts[1] != str(_MAJOR):
                    raise ProtocolError(f"server speaks auth protocol version {parts[1:]}, we speak {_MAJOR}")
            elif parts[0] == "MECH" and len(parts) > 1:
                self.mechanisms.add(parts[1].upper())
            elif parts[0] == "DONE":
                break
        if "PLAIN" not in self.mechanisms:
            raise ProtocolError("server does not offer PLAIN (add it to auth_mechanisms)")

    async def read_replies(self) -> None:
        try:
            while True:
                line = await self.reader.readline()
                if not line.endswith(b"\n"):
                    break
                parts = line.decode("utf-8", "replace").rstrip("\n").split("\t")
                if len(parts) < 2 or not parts[1].isdigit():
                    continue
                waiter = self.pending.pop(int(parts[1]), None)
                if waiter is not None and not waiter.done():
                    waiter.set_result(parts)
        except (OSError, asyncio.IncompleteReadError, ValueError):
            pass
        finally:
            self.fail_all()

    def fail_all(self) -> None:
        self.closed = True
        for waiter in self.pending.values():
            if not waiter.done():
                waiter.set_exception(ConnectionError("dovecot auth connection closed"))
        self.pending.clear()
        self.writer.close()


class DovecotAuth:
    name = "dovecot"

    def __init__(self, settings: DovecotSettings, customers: CustomerMap):
        self._settings = settings
        self._customers = customers
        self._conn: _Connection | None = None
        self._connecting = asyncio.Lock()
        self._ids = itertools.count(1)

    def replace_directory(self, directory) -> None:
        self._customers.replace_directory(directory)

    async def _open(self) -> _Connection:
        address = self._settings.address
        if address.startswith("/") or address.startswith("unix:"):
            opening = asyncio.open_unix_connection(address.removeprefix("unix:"))
        else:
            host, _, port = address.removeprefix("inet:").rpartition(":")
            opening = asyncio.open_connection(host.strip("[]"), int(port))
        reader, writer = await asyncio.wait_for(opening, self._settings.connect_timeout)
        conn = _Connection(reader, writer)
        try:
            await asyncio.wait_for(conn.handshake(), self._settings.connect_timeout)
        except BaseException:
            writer.close()
            raise
        conn.task = asyncio.ensure_future(conn.read_replies())
        return conn

    async def connection(self) -> _Connection:
        conn = self._conn
        if conn is not None and not conn.closed:
            return conn
        async with self._connecting:
            if self._conn is None or self._conn.closed:
                self._conn = await self._open()
            return self._conn

    async def authenticate(self, login: str, password: str) -> AuthAnswer:
        # No TAB/LF/NUL may reach the line protocol; the password travels base64-encoded,
        # but PLAIN itself separates fields with NUL (RFC 4616 §2).
        if not login or any(c in login for c in "\t\n\r\0") or "\0" in password:
            return AuthAnswer.invalid()
        try:
            conn = await self.connection()
        except (OSError, TimeoutError, ProtocolError) as exc:
            log.warning("dovecot auth at %s unavailable: %s", self._settings.address, exc)
            return AuthAnswer.tempfail()
        request_id = next(self._ids)
        waiter: asyncio.Future[list[str]] = asyncio.get_running_loop().create_future()
        conn.pending[request_id] = waiter
        if conn.closed:  # broke between connection() and now: fail_all() has run
            conn.pending.pop(request_id, None)
            return AuthAnswer.tempfail()
        # nologin: we only check the password (Postfix sends it too).  no-penalty: we
        # cannot pass the client's IP (rip=), so Dovecot's anvil would count every
        # failure against one address -- the gateway -- and slow down every customer's
        # AUTH after a few wrong passwords (measured: 0.5 s, 4.5 s, 8 s).  Brute force is
        # damped by our negative cache and the listener's limits instead.
        params = [f"service={self._settings.service}", "nologin", "no-penalty"]
        if self._settings.secured:
            params.append("secured")
        line = "\t".join(["AUTH", str(request_id), "PLAIN", *params,
                          f"resp={plain_response(login, password)}"])
        try:
            conn.writer.write(line.encode() + b"\n")
            reply = await waiter
        except (OSError, ConnectionError) as exc:
            log.warning("dovecot auth at %s: connection lost: %s", self._settings.address, exc)
            return AuthAnswer.tempfail()
        finally:
            conn.pending.pop(request_id, None)
        return self._answer(login, reply)

    def _answer(self, login: str, reply: list[str]) -> AuthAnswer:
        values, flags = parse_reply(reply[2:])
        if reply[0] == "OK":
            s = self._settings
            customer = values.get(s.customer_field) if s.customer_field else None
            senders = values.get(s.senders_field) if s.senders_field else None
            # Dovecot may rewrite the login (auth_username_format); `user=` is the account.
            user = values.get("user") or login
            return AuthAnswer(Outcome.OK, self._customers.identity(user, customer, senders))
        if reply[0] == "FAIL":
            if "temp" in flags or values.get("code") == "temp_fail":
                log.warning("dovecot auth at %s: temporary failure (%s)", self._settings.address,
                            values.get("reason", "passdb unavailable"))
                return AuthAnswer.tempfail()
            return AuthAnswer.invalid()
        # CONT for PLAIN with an initial response is a server out of step with us.
        log.warning("dovecot auth at %s: unexpected reply %s", self._settings.address, reply[0])
        return AuthAnswer.tempfail()

    async def probe(self, login: str | None = None) -> None:
        """check-config: connect and handshake; raise with a one-line reason.

        The auth-client socket cannot look a login up without its password (that
        takes the privileged auth-userdb socket), so ``login`` is not used here.
        """
        try:
            await self.connection()
        except (OSError, ProtocolError) as exc:
            raise ProtocolError(f"cannot use Dovecot auth at {self._settings.address}: {exc}") from None

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.fail_all()
            if conn.task is not None:
                conn.task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await conn.task
            with contextlib.suppress(OSError):
                await conn.writer.wait_closed()
