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


def test_cached_dir_lists_every_hook_and_command_name_dir_would():
    # aiosmtpd keeps only the handle_* and smtp_* names of dir(); those must match.
    h = Handler()
    h.handle_EXTRA = lambda: None
    h.smtp_XCMD = lambda: None
    h.other = 1
    wanted = [n for n in dir(h) if n.startswith(("handle_", "smtp_"))]
    assert introspection._names(h) == wanted
    assert "handle_EXTRA" in wanted and "smtp_XCMD" in wanted
    assert introspection._names(Handler()) == ["handle_DATA"]
