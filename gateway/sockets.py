"""The listening sockets of one gateway, which no other process may share.

Several worker processes serve each address, in one of two ways:

- the MX (``listeners.inbound``) and the HTTP port: each worker has its own
  SO_REUSEPORT socket, so the kernel spreads connections over the workers' accept
  queues.  MX sessions are short and many: the hash spreads them evenly, and no
  worker is woken for a connection another takes;
- submission (``listeners.submission``, ``listeners.submissions``): one socket that
  every worker serves, taking connections in turn, the least-loaded first
  (gateway/accepting.py).  Mail clients keep their sessions open for many
  messages, and the kernel's hash, blind to what each worker carries, split 20 of
  them 15 and 5.

SO_REUSEPORT alone would also let a second gateway run by the same user join in
silently, with its own configuration and its own state; so before opening them the
gateway binds each address once *without* SO_REUSEPORT, which the kernel refuses
while anyone holds it (sharing needs the option on every socket), as Postfix
refuses to start with "address already in use".

The supervisor (or the single process) opens every socket before any worker starts and
holds them until it stops: a worker restarted after a crash takes its slot's socket
again, and the address is never free for someone else in between.
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


def open_socket(host: str, port: int, *, shared: bool = False) -> socket.socket:
    """A listening socket; ``shared`` lets this process's other sockets bind it too."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        # SO_REUSEADDR: a restart need not wait for the old connections' TIME_WAIT; on
        # Linux it never lets two sockets listen on one address.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if shared:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
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


# Served by every worker from one socket, in turn (gateway/accepting.py).
TURN_TAKING = frozenset({"listeners.submission", "listeners.submissions"})


def claim(addresses: Iterable[Address], copies: int) -> list[dict[str, socket.socket]]:
    """Sockets for ``copies`` worker slots, keyed by Address.key: a socket of its own
    per slot for each address, but one socket in every slot for the TURN_TAKING ones.

    Raises AddressUnavailable (nothing left open) when an address is held by another
    process or cannot be bound.
    """
    addresses = list(addresses)
    slots: list[dict[str, socket.socket]] = [{} for _ in range(copies)]
    try:
        for address in addresses:
            try:
                if copies == 1 or address.field in TURN_TAKING:
                    # Exclusive: fails with EADDRINUSE if any socket, shared or not, holds it.
                    sock = open_socket(address.host, address.port)
                    for slot in slots:
                        slot[address.key] = sock
                    continue
                # The probe: fails with EADDRINUSE if any socket, shared or not, holds it.
                open_socket(address.host, address.port).close()
                for slot in slots:
                    slot[address.key] = open_socket(address.host, address.port, shared=True)
            except OSError as exc:
                raise AddressUnavailable(address, _explain(exc)) from None
    except AddressUnavailable:
        release(slots)
        raise
    return slots


def release(slots: Iterable[dict[str, socket.socket]]) -> None:
    for slot in slots:
        for sock in slot.values():
            sock.close()  # a socket in several slots: closing it again does nothing
