"""Free loopback ports for servers started by the tests."""

import socket

# The kernel may hand the same ephemeral port out again once its socket is closed.
# Two listeners of one gateway then bind the same port (SO_REUSEPORT lets them) and
# share its connections: a test talking to "inbound" meets "submission" at random.
_handed_out: set[int] = set()


def free_port() -> int:
    """A port nobody listens on now, and never one this process was given before."""
    for _ in range(1000):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _handed_out:
            _handed_out.add(port)
            return port
    raise RuntimeError("no fresh loopback port after 1000 tries")
