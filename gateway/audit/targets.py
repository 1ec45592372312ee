"""What the operator named: a host and port, address ranges, port lists.  Pure parsing.

Only what is named here is ever contacted, so the parsing is strict: a range that is
too wide, a port out of bounds or a word that is not an address is an error, not a guess.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator

RELAY_PORTS = (25, 465, 587)
PROXY_PORTS = (80, 1080, 3128, 8000, 8080, 8888)
MAX_HOSTS = 65536  # a /16: wider ranges are split by the operator, on purpose

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_host_port(value: str, default_port: int = 25) -> tuple[str, int]:
    """``host``, ``host:port``, ``[v6]``, ``[v6]:port``."""
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        port = rest.removeprefix(":") if rest.startswith(":") else ""
        if rest and not rest.startswith(":"):
            raise ValueError(f"bad address {value!r}")
    elif value.count(":") == 1:
        host, port = value.split(":")
    else:
        host, port = value, ""
    if not host:
        raise ValueError(f"no host in {value!r}")
    if not port:
        return host, default_port
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"bad port in {value!r}")
    return host, int(port)


def parse_ports(value: str) -> tuple[int, ...]:
    """``25,465,587`` or ``8000-8010``; ``none`` for no ports of that kind."""
    if value.strip().lower() == "none":
        return ()
    ports: list[int] = []
    for part in value.split(","):
        low, _, high = part.strip().partition("-")
        if not low.isdigit() or (high and not high.isdigit()):
            raise ValueError(f"bad port list {value!r}: {part.strip()!r} is not a port or a range")
        first, last = int(low), int(high or low)
        if not 1 <= first <= last <= 65535:
            raise ValueError(f"bad port list {value!r}: {part.strip()!r} is out of 1-65535")
        ports += [p for p in range(first, last + 1) if p not in ports]
    return tuple(ports)


def parse_ranges(values: list[str]) -> list[Network]:
    """CIDR ranges or single addresses; host bits set is an error (a typo, probably)."""
    networks = []
    for value in values:
        for part in value.split(","):
            try:
                networks.append(ipaddress.ip_network(part.strip(), strict=True))
            except ValueError as exc:
                raise ValueError(f"bad range {part.strip()!r}: {exc}") from None
    return networks


def hosts_in(ranges: list[Network], excluded: list[Network] = ()) -> list[str]:
    """Every address to test, in order, without duplicates; the network and broadcast
    addresses of an IPv4 range wider than /31 are left out (nothing answers there)."""
    total = sum(n.num_addresses for n in ranges)
    if total > MAX_HOSTS:
        raise ValueError(f"the ranges hold {total} addresses, more than {MAX_HOSTS}: "
                         "scan them in parts")
    seen: set[str] = set()
    hosts = []
    for address in _addresses(ranges):
        if any(address in x for x in excluded) or str(address) in seen:
            continue
        seen.add(str(address))
        hosts.append(str(address))
    return hosts


def _addresses(ranges: list[Network]) -> Iterator[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    for network in ranges:
        if network.num_addresses <= 2:
            yield from network
        else:
            yield from network.hosts()
