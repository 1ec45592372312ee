"""gateway/sockets.py: our workers share an address, no other process may."""

from __future__ import annotations

import socket

import pytest

from gateway.sockets import Address, AddressUnavailable, claim, release
from tests.support.ports import free_port


def address(field: str = "listeners.inbound") -> Address:
    return Address(field, "127.0.0.1", free_port())


def connects(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
        return True
    except OSError:
        return False


@pytest.mark.parametrize("copies", [1, 2, 4])
def test_a_second_claim_on_an_address_is_refused_whatever_the_worker_count(copies):
    addr = address()
    slots = claim([addr], copies)
    try:
        assert len(slots) == copies and all(addr.field in slot for slot in slots)
        for other in (1, 2):
            with pytest.raises(AddressUnavailable) as refused:
                claim([addr], other)
            assert str(refused.value) == (
                f"listeners.inbound: 127.0.0.1:{addr.port}: address already in use by another process")
    finally:
        release(slots)
    assert not connects(addr.port)


def test_a_plain_listener_elsewhere_blocks_the_claim():
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        with pytest.raises(AddressUnavailable, match=f"http: 127.0.0.1:{port}: address already in use"):
            claim([Address("http", "127.0.0.1", port)], 2)


def test_a_refused_claim_leaves_none_of_its_addresses_bound():
    free, taken = address("listeners.submission"), address("http")
    held = claim([taken], 1)
    try:
        with pytest.raises(AddressUnavailable, match="^http: "):
            claim([free, taken], 3)
        # The address claimed before the refusal is free again.
        release(claim([free], 1))
    finally:
        release(held)


def test_an_address_not_on_this_host_is_one_line_naming_the_field():
    with pytest.raises(AddressUnavailable) as refused:
        claim([Address("listeners.submissions", "192.0.2.1", free_port())], 2)
    assert str(refused.value).startswith("listeners.submissions: 192.0.2.1:")
    assert "\n" not in str(refused.value)


def test_ipv6_addresses_are_written_in_brackets():
    assert str(Address("listeners.inbound", "::1", 25)) == "[::1]:25"


def test_a_listener_with_several_addresses_gets_a_socket_for_each_in_every_slot():
    port = free_port()
    addresses = [Address("listeners.inbound", "127.0.0.1", port, 0),
                 Address("listeners.inbound", "::1", port, 1)]
    slots = claim(addresses, 2)
    try:
        for slot in slots:
            assert set(slot) == {"listeners.inbound", "listeners.inbound#1"}
            assert slot["listeners.inbound#1"].family == socket.AF_INET6
        with pytest.raises(AddressUnavailable, match=r"^listeners\.inbound: \[::1\]:"):
            claim(addresses[1:], 1)
    finally:
        release(slots)
