"""The cached introspection finds exactly what aiosmtpd's own would."""

import inspect

from gateway.smtp import introspection


class Handler:
    def handle_DATA(self):
        pass

    async def auth_CUSTOM(self, server, args):
        pass


def test_cached_getmembers_matches_inspect_for_auth_members_including_instance_attributes():
    h = Handler()
    h.auth_extra = 5  # an instance attribute aiosmtpd would also (wrongly) take as a mechanism
    expected = [(n, v) for n, v in inspect.getmembers(h) if n.startswith("auth_")]
    assert introspection._getmembers(h) == expected
    # Bound to this instance, not to the first one seen.
    other = Handler()
    assert introspection._getmembers(other)[0][1].__self__ is other


def test_cached_dir_matches_dir():
    h = Handler()
    h.handle_EXTRA = lambda: None
    assert introspection._names(h) == dir(h)
