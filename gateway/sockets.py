"""The listening sockets of one gateway, which no other process may share.

Each address has one socket, opened by the supervisor (or the single process)
before any worker starts and held until it stops; every worker serves it, taking
connections in turn (gateway/accepting.py: one SO_REUSEPORT socket per worker let
the kernel hash long-lived sessions unevenly over the workers).  The socket is
bound without SO_REUSEPORT, which the kernel refuses while anyone holds the
address, so a second gateway run by the same user cannot join in with its own
configuration and its own state: it refuses to start, as Postfix does with
"address already in use".

A worker restarted after a crash serves the same socket again, and the address is
never free for someone else in between.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Iterable
from dataclasses import dataclass

BACKLOG = 1024


@dataclass(frozen=True)
class Address:
    """A listening address and the config field that names it (``listeners.inbound``)."""

    field: str
    host: str
    port: int
    # Which of the field's addresses (a listener may have several).
    index: int = 0

    @property
    def key(self) -> str:
        """This address's socket in a slot: the field, and the index after the first."""
        return self.field if self.index == 0 else f"{self.field}#{self.index}"

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


class AddressUnavailable(Exception):
    """One line for the operator: which field, which address, what is wrong."""

    def __init__(self, address: Address, reason: str):
        super().__init__(f"{address.field}: {address}: {reason}")


def open_socket(host: str, port: int) -> socket.socket:
    """A listening socket that no other socket may share."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        # SO_REUSEADDR: a restart need not wait for the old connections' TIME_WAIT; on
        # Linux it never lets two sockets listen on one address.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((host, port))
        sock.listen(BACKLOG)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def _explain(exc: OSError) -> str:
    if exc.errno == errno.EADDRINUSE:
        return "address already in use by another process"
    if exc.errno == errno.EACCES:
        return "permission denied (ports below 1024 need root or CAP_NET_BIND_SERVICE)"
    return exc.strerror or str(exc)


def claim(addresses: Iterable[Address], copies: int) -> list[dict[str, socket.socket]]:
    """One socket per address, keyed by Address.key, and the same sockets for each of
    ``copies`` worker slots (every worker serves every address).

    Raises AddressUnavailable (nothing left open) when an address is held by another
    process or cannot be bound.
    """
    opened: dict[str, socket.socket] = {}
    try:
        for address in addresses:
            try:
                # Exclusive: fails with EADDRINUSE if any socket, shared or not, holds it.
                opened[address.key] = open_socket(address.host, address.port)
            except OSError as exc:
                raise AddressUnavailable(address, _explain(exc)) from None
    except AddressUnavailable:
        release([opened])
        raise
    return [opened for _ in range(max(1, copies))]


def release(slots: Iterable[dict[str, socket.socket]]) -> None:
    for slot in slots:
        for sock in slot.values():
            sock.close()
