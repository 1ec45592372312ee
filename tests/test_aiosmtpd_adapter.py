"""The contract between gateway/smtp/aiosmtpd_adapter.py and the aiosmtpd installed.

The adapter is the one module allowed to use aiosmtpd's private members.  These
tests fail, naming the member, when an aiosmtpd upgrade renames one, changes its
signature, stops calling one we override, or starts using a name of ours; and
when a private member is used anywhere else in the gateway.  Read them before
changing the aiosmtpd pin in pyproject.toml.
"""

from __future__ import annotations

import ast
import asyncio
import collections
import importlib.metadata
import inspect
import re
import smtplib
import ssl
import subprocess
import sys
import tomllib
import weakref
from pathlib import Path
from typing import Any

import aiosmtpd.smtp
import aiosmtplib
import pytest
from aiosmtpd.smtp import SMTP

from gateway.smtp import aiosmtpd_adapter
from gateway.smtp.aiosmtpd_adapter import HookDiscovery, SMTPAdapter
from gateway.smtp.handler import GatewayHandler
from gateway.smtp.protocol import GatewaySMTP

ROOT = Path(__file__).resolve().parent.parent
AIOSMTPD_SOURCE = Path(aiosmtpd.smtp.__file__).read_text()

# --- what the adapter relies on ---------------------------------------------------------
# Methods of aiosmtpd's SMTP the adapter overrides or calls: (parameters, is async).
PRIVATE_METHODS = {
    "_handle_client": ("(self)", True),
    "_timeout_cb": ("(self)", False),
    "_getaddr": ("(self, arg)", False),
    "_set_post_data_state": ("(self)", False),
    "_set_rset_state": ("(self)", False),
    "_cb_client_connected": ("(self, reader, writer)", False),
    "_reset_timeout": ("(self, duration=None)", False),
    "_call_handler_hook": ("(self, command, *args)", True),
    "_strip_command_keyword": ("(self, keyword, arg)", False),
    "_create_session": ("(self)", False),
}
# Attributes of a connection, as SMTP.__init__ leaves them (before the connection is made).
PRIVATE_ATTRIBUTES = {
    "_handle_hooks": dict,
    "_auth_methods": dict,
    "_smtp_methods": dict,
    "_tls_protocol": type(None),
    "_handler_coroutine": type(None),
    "_original_transport": type(None),
    "_tls_handshake_okay": bool,
}
# Set by _cb_client_connected once connected: aiosmtpd's reader and writer, and the
# StreamReader's own buffer and limit beneath them.
CONNECTED_ATTRIBUTES = {"_reader": asyncio.StreamReader, "_writer": asyncio.StreamWriter}
STREAM_READER_ATTRIBUTES = {"_buffer": bytearray, "_limit": int}
# After STARTTLS the reader and writer are moved onto the TLS transport (as aiosmtpd does).
TRANSPORT_ATTRIBUTE = "_transport"
# What aiosmtpd's @syntax decorator leaves on a command, read by its HELP.
SYNTAX_ATTRIBUTES = ("__smtp_syntax__", "__smtp_syntax_extended__", "__smtp_syntax_when__")

# Names that GatewaySMTP or SMTPAdapter define and aiosmtpd's SMTP defines too: the
# overrides we mean.  Any other shared name is a collision (an upgrade that starts
# using, say, ``self._greeted`` would silently share our state).
INTENDED_OVERRIDES = {
    "__dir__", "__init__", "__slots__", "__doc__", "__module__", "__qualname__",
    # the adapter's
    "_handle_client", "_timeout_cb", "_getaddr", "_set_post_data_state",
    "_cb_client_connected", "_reset_timeout",
    "_client_connected_cb",  # asyncio's, dropped once the command loop ends (_let_go)
    "command_size_limits",  # made the connection's own (aiosmtpd shares one dict)
    # protocol.py's (public members of aiosmtpd's SMTP and asyncio's protocol)
    "line_length_limit", "connection_made", "connection_lost", "data_received", "push",
    "handle_exception", "auth_PLAIN", "auth_LOGIN", "smtp_HELO", "smtp_EHLO", "smtp_MAIL",
    "smtp_RCPT", "smtp_RSET", "smtp_VRFY", "smtp_EXPN", "smtp_AUTH", "smtp_QUIT", "smtp_DATA",
    "smtp_STARTTLS",  # counts a failed handshake as tls_failed (docs/operations.md)
}


def aiosmtpd_private_names() -> set[str]:
    """Private names aiosmtpd's SMTP defines: its methods, and what it sets on self."""
    tree = ast.parse(AIOSMTPD_SOURCE)
    [smtp] = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "SMTP"]
    names = {n.name for n in smtp.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)}
    names |= assigned_on_self(smtp)
    return {n for n in names if n.startswith("_") and not n.startswith("__")}


def assigned_on_self(node: ast.AST) -> set[str]:
    return {t.attr for n in ast.walk(node) for t in _targets(n)
            if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name)
            and t.value.id == "self"}


def _targets(node: ast.AST) -> list[ast.AST]:
    if isinstance(node, ast.Assign):
        return [e for t in node.targets for e in (t.elts if isinstance(t, ast.Tuple) else [t])]
    if isinstance(node, ast.AugAssign | ast.AnnAssign):
        return [node.target]
    return []


def defined_in(path: Path, class_name: str) -> set[str]:
    """What a class of ours defines: its body's names and what it sets on self."""
    tree = ast.parse(path.read_text())
    [cls] = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == class_name]
    names = {n.name for n in cls.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)}
    names |= {t.id for n in cls.body for t in _targets(n) if isinstance(t, ast.Name)}
    return names | assigned_on_self(cls)


def assigned_in(path: Path, class_name: str, method: str) -> set[str]:
    """What one method of a class of ours sets on self."""
    tree = ast.parse(path.read_text())
    [cls] = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == class_name]
    [fn] = [n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == method]
    return assigned_on_self(fn)


def new_connection(handler: Any = None, loop: asyncio.AbstractEventLoop | None = None,
                   cls: type[GatewaySMTP] = GatewaySMTP, **kwargs: Any) -> GatewaySMTP:
    loop = loop or asyncio.new_event_loop()
    kwargs.setdefault("hostname", "mx.test")
    return cls(handler or object(), listener="inbound", offers_auth=True,
               implicit_tls=False, max_errors=10, data_timeout=10, max_line_length=998,
               loop=loop, **kwargs)


# --- the members exist, as they were ----------------------------------------------------
@pytest.mark.parametrize("name", sorted(PRIVATE_METHODS))
def test_each_private_method_keeps_the_signature_the_adapter_relies_on(name):
    expected, is_async = PRIVATE_METHODS[name]
    method = getattr(SMTP, name, None)
    assert method is not None, f"aiosmtpd's SMTP.{name} is gone: see gateway/smtp/aiosmtpd_adapter.py"
    signature = inspect.signature(method)
    # Names, kinds and defaults: what a call relies on (annotations may change freely).
    found = str(signature.replace(
        parameters=[p.replace(annotation=p.empty) for p in signature.parameters.values()],
        return_annotation=signature.empty))
    assert found == expected, f"aiosmtpd's SMTP.{name}{found}, the adapter expects {expected}"
    assert inspect.iscoroutinefunction(method) is is_async, (
        f"aiosmtpd's SMTP.{name} is {'no longer' if is_async else 'now'} a coroutine")


def test_each_private_attribute_is_set_by_aiosmtpd_as_the_adapter_expects():
    conn = new_connection()
    try:
        for name, kind in PRIVATE_ATTRIBUTES.items():
            assert name in vars(conn), f"aiosmtpd's SMTP no longer sets self.{name}"
            value = vars(conn)[name]
            assert isinstance(value, kind), f"aiosmtpd's self.{name} is a {type(value).__name__}"
        for mechanism in conn._auth_methods.values():
            assert hasattr(mechanism, "method"), "aiosmtpd's _auth_methods holds no .method"
        reader = asyncio.StreamReader(limit=100, loop=conn.loop)
        for name, kind in STREAM_READER_ATTRIBUTES.items():
            assert isinstance(getattr(reader, name, None), kind), f"StreamReader.{name} changed"
        assert TRANSPORT_ATTRIBUTE in vars(reader), "StreamReader._transport is gone"
        assert "transport" in vars(asyncio.StreamWriter) and TRANSPORT_ATTRIBUTE in (
            inspect.getsource(asyncio.StreamWriter.transport.fget)), "StreamWriter._transport"
    finally:
        conn.loop.close()


def test_aiosmtpd_reads_tls_protocol_only_as_has_starttls_happened():
    """SMTPAdapter.start_tls leaves the TLS transport in ``_tls_protocol``, not the
    SSLProtocol aiosmtpd made: sound while, outside the two methods the adapter
    replaces for STARTTLS, aiosmtpd only tests it for truth."""
    tree = ast.parse(AIOSMTPD_SOURCE)
    [smtp] = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "SMTP"]
    replaced = {"connection_made", "smtp_STARTTLS", "__init__"}
    other_uses = []
    for method in smtp.body:
        if not isinstance(method, ast.FunctionDef | ast.AsyncFunctionDef) or method.name in replaced:
            continue
        truth_tests = {id(operand) for node in ast.walk(method)
                       for operand in (
                           [node.operand] if isinstance(node, ast.UnaryOp)
                           and isinstance(node.op, ast.Not)
                           else node.values if isinstance(node, ast.BoolOp)
                           else [node.test] if isinstance(node, ast.If | ast.IfExp) else [])}
        for node in ast.walk(method):
            if isinstance(node, ast.Attribute) and node.attr == "_tls_protocol" \
                    and id(node) not in truth_tests:
                other_uses.append(f"{method.name}:{node.lineno}")
    assert not other_uses, f"aiosmtpd uses _tls_protocol as an SSLProtocol: {other_uses}"
    assert "SSLProtocol" in inspect.getsource(SMTP.smtp_STARTTLS)  # still the one replaced
    assert "_tls_protocol._extra" in inspect.getsource(SMTP.connection_made)


def test_commands_keep_the_help_syntax_attributes_the_adapter_copies():
    for name in ("smtp_MAIL", "smtp_RCPT", "smtp_DATA", "smtp_AUTH", "smtp_EHLO"):
        for attr in SYNTAX_ATTRIBUTES:
            assert hasattr(getattr(SMTP, name), attr), f"aiosmtpd's SMTP.{name}.{attr} is gone"
    assert "__smtp_syntax_when__" in inspect.getsource(SMTP._syntax_available), (
        "aiosmtpd's HELP no longer reads __smtp_syntax_when__ (help_only_when)")


def test_our_names_collide_with_none_of_aiosmtpds():
    ours = defined_in(ROOT / "gateway/smtp/protocol.py", "GatewaySMTP")
    ours |= defined_in(ROOT / "gateway/smtp/aiosmtpd_adapter.py", "SMTPAdapter")
    ours |= defined_in(ROOT / "gateway/smtp/aiosmtpd_adapter.py", "HookDiscovery")
    theirs = set(dir(SMTP)) | aiosmtpd_private_names() | set(vars(_bare_smtp()))
    # SMTPAdapter.init_as_aiosmtpd sets aiosmtpd's own attributes, as SMTP.__init__
    # does (test_a_connection_is_left_as_smtp_init_leaves_it holds it to that).
    mirrored = assigned_in(ROOT / "gateway/smtp/aiosmtpd_adapter.py", "SMTPAdapter",
                           "init_as_aiosmtpd")
    assert mirrored <= theirs, f"set as aiosmtpd's, but not aiosmtpd's: {mirrored - theirs}"
    shared = sorted((ours & theirs) - INTENDED_OVERRIDES - mirrored)
    assert not shared, f"names of ours that aiosmtpd's SMTP also uses: {shared}"
    # Each override we mean is still one (else it is dead code, never called).
    gone = sorted(n for n in INTENDED_OVERRIDES & ours if n not in theirs)
    assert not gone, f"overrides of names aiosmtpd's SMTP no longer has: {gone}"


def _bare_smtp() -> SMTP:
    loop = asyncio.new_event_loop()
    try:
        return SMTP(object(), loop=loop)
    finally:
        loop.close()


# --- nobody else touches them ------------------------------------------------------------
def test_no_module_but_the_adapter_uses_aiosmtpds_private_members():
    private = aiosmtpd_private_names() | set(SYNTAX_ATTRIBUTES)
    found = []
    for path in sorted((ROOT / "gateway").rglob("*.py")):
        if path.name == "aiosmtpd_adapter.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            name = (node.attr if isinstance(node, ast.Attribute)
                    else node.name if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
                    else None)
            if name in private:
                found.append(f"{path.relative_to(ROOT)}:{node.lineno} {name}")
    assert not found, "aiosmtpd's private members outside the adapter:\n" + "\n".join(found)


def test_importing_the_gateway_changes_nothing_in_the_libraries_it_uses():
    # In a fresh interpreter: the libraries first, a snapshot of their modules and
    # classes, then every module of the gateway, and the snapshot again.
    script = r"""
import importlib, inspect, pkgutil, sys
LIBRARIES = ["aiosmtpd.smtp", "aiosmtpd.proxy_protocol", "aiosmtplib", "dkim", "dkim.crypto",
             "dkim.util", "dkim.canonicalization", "spf", "authres", "publicsuffixlist",
             "dns.resolver", "dns.asyncresolver", "yaml", "nacl.signing",
             "cryptography.hazmat.primitives.asymmetric.rsa", "inspect", "builtins"]
for name in LIBRARIES:
    importlib.import_module(name)
watched = [m for n, m in sys.modules.items() if n.split(".")[0] in
           {l.split(".")[0] for l in LIBRARIES} and m is not None]
def snapshot():
    seen = {}
    for module in watched:
        for key, value in list(vars(module).items()):
            seen[(module.__name__, key)] = (id(value), inspect.ismodule(value))
            if inspect.isclass(value) and value.__module__ == module.__name__:
                for attr, member in list(vars(value).items()):
                    seen[(module.__name__, f"{key}.{attr}")] = (id(member), False)
    return seen
before = snapshot()
import gateway
for info in pkgutil.walk_packages(gateway.__path__, "gateway."):
    importlib.import_module(info.name)
after = snapshot()
# A submodule imported for the first time is bound in its package: not a change.
changed = sorted(f"{m}.{k}" for (m, k) in after.keys() | before.keys()
                 if before.get((m, k)) != after.get((m, k))
                 and not ((m, k) not in before and after[(m, k)][1]))
print("\n".join(changed))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         cwd=ROOT, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    changed = set(out.stdout.split())
    assert not changed, "library globals replaced at import:\n" + "\n".join(sorted(changed))


# --- the pin is the version checked ------------------------------------------------------
def test_pyproject_pins_the_aiosmtpd_and_dkimpy_these_tests_checked():
    pins = {}
    for requirement in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
            "dependencies"]:
        m = re.fullmatch(r"([A-Za-z0-9_.-]+)\s*==\s*([\w.]+)", requirement)
        if m:
            pins[m.group(1).lower()] = m.group(2)
    assert pins.get("aiosmtpd") == aiosmtpd_adapter.AIOSMTPD_VERSION, (
        f"pyproject pins aiosmtpd {pins.get('aiosmtpd')}, the adapter was checked against "
        f"{aiosmtpd_adapter.AIOSMTPD_VERSION}")
    assert importlib.metadata.version("aiosmtpd") == aiosmtpd_adapter.AIOSMTPD_VERSION
    assert pins.get("dkimpy") == importlib.metadata.version("dkimpy")


# --- hooks are found by name: ours are found, and are ones aiosmtpd calls ----------------
def hooks_aiosmtpd_calls() -> set[str]:
    return set(re.findall(r"""_call_handler_hook\(\s*['"](\w+)['"]""", AIOSMTPD_SOURCE)
               + re.findall(r"""_handle_hooks\.get\(\s*['"](\w+)['"]""", AIOSMTPD_SOURCE))


def default_dir(obj: Any) -> list[str]:
    """dir() as it would be without HookDiscovery."""
    return sorted(object.__dir__(obj))


def test_every_hook_of_ours_is_one_aiosmtpd_calls():
    # aiosmtpd ignores a handle_* it does not know (a misspelt hook never runs).
    known = hooks_aiosmtpd_calls()
    assert {"MAIL", "RCPT", "DATA", "PROXY"} <= known
    ours = {n.removeprefix("handle_") for n in dir(GatewayHandler) if n.startswith("handle_")}
    assert ours and ours <= known, f"hooks aiosmtpd never calls: {sorted(ours - known)}"
    commands = {n for n in vars(GatewaySMTP) if n.startswith(("smtp_", "auth_"))}
    missing = sorted(n for n in commands if not hasattr(SMTP, n))
    assert not missing, f"commands or mechanisms aiosmtpd does not have: {missing}"


# --- the adapter's constructor leaves what aiosmtpd's would ------------------------------
class ByAiosmtpd(GatewaySMTP):
    """The same connection, made by aiosmtpd's own SMTP.__init__."""

    def init_as_aiosmtpd(self, handler: Any, **kwargs: Any) -> None:
        SMTP.__init__(self, handler, **kwargs)


class HandlerWithEverything(HookDiscovery):
    """A handler with an EHLO hook and an AUTH mechanism of its own."""

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        return responses

    async def handle_MAIL(self, server, session, envelope, address, options):
        return "250 OK"

    async def auth_CRAM__MD5(self, server, args):
        return None


def _same(a: Any, b: Any, conn_a: Any, conn_b: Any) -> bool:
    """Equal, with a method bound to its own connection counting as the same."""
    if inspect.ismethod(a) and inspect.ismethod(b):
        return a.__func__ is b.__func__ and (a.__self__ is b.__self__ or (
            a.__self__ is conn_a and b.__self__ is conn_b))
    if isinstance(a, dict) and isinstance(b, dict):
        return list(a) == list(b) and all(_same(a[k], b[k], conn_a, conn_b) for k in a)
    if isinstance(a, tuple) and isinstance(b, tuple):
        return len(a) == len(b) and all(_same(x, y, conn_a, conn_b) for x, y in zip(a, b, strict=True))
    if isinstance(a, asyncio.Future | asyncio.StreamReader | collections.deque | weakref.ref):
        return type(a) is type(b)  # each connection's own
    return a == b


CONFIGURATIONS = {
    "mx": dict(data_size_limit=10_000_000, timeout=60, command_call_limit=1000,
               ident="ESMTP Portcullis", decode_data=False, enable_SMTPUTF8=False),
    "submission": dict(tls_context=ssl.create_default_context(ssl.Purpose.CLIENT_AUTH),
                       require_starttls=True, auth_required=True, auth_require_tls=True,
                       command_call_limit={"MAIL": 5, "*": 50}),
    "submissions": dict(auth_required=True, auth_require_tls=False, proxy_protocol_timeout=5,
                        auth_exclude_mechanism=["LOGIN"], command_call_limit={"RCPT": 3}),
    "defaults": dict(hostname=None),
    "authenticator": dict(authenticator=lambda *a: None, data_size_limit=None),
}


@pytest.mark.parametrize("handler_cls", [GatewayHandler, HandlerWithEverything, object])
@pytest.mark.parametrize("config", sorted(CONFIGURATIONS))
def test_a_connection_is_left_as_smtp_init_leaves_it(config, handler_cls):
    loop = asyncio.new_event_loop()
    try:
        handler = handler_cls.__new__(handler_cls)  # hooks found, never called
        kwargs = {"hostname": "mx.test", **CONFIGURATIONS[config]}
        ours, theirs = (new_connection(handler, loop, cls=cls, **kwargs)
                        for cls in (GatewaySMTP, ByAiosmtpd))
        mine, aiosmtpds = vars(ours), vars(theirs)
        assert sorted(mine) == sorted(aiosmtpds), (
            f"attributes only aiosmtpd's SMTP.__init__ sets: {sorted(set(aiosmtpds) - set(mine))}; "
            f"only ours: {sorted(set(mine) - set(aiosmtpds))}")
        # aiosmtpd's attributes (and asyncio's beneath): ours are per connection (its id).
        different = [k for k in vars(_bare_smtp())
                     if not _same(mine[k], aiosmtpds[k], ours, theirs)]
        assert not different, "set otherwise than by SMTP.__init__: " + ", ".join(
            f"{k}={mine[k]!r} (aiosmtpd: {aiosmtpds[k]!r})" for k in different)
    finally:
        loop.close()


def test_the_constructor_refuses_what_smtp_init_refuses():
    loop = asyncio.new_event_loop()
    try:
        for bad, error in (({"proxy_protocol_timeout": 0}, ValueError),
                           ({"command_call_limit": {"MAIL": "5"}}, TypeError),
                           ({"command_call_limit": 2.5}, TypeError)):
            for cls in (GatewaySMTP, ByAiosmtpd):
                with pytest.raises(error):
                    new_connection(object(), loop, cls=cls, **bad)
    finally:
        loop.close()


def test_aiosmtpd_finds_the_same_hooks_commands_and_mechanisms_as_with_a_full_dir():
    loop = asyncio.new_event_loop()
    try:
        # Its hooks are never called here: an instance without its constructor will do.
        handler = GatewayHandler.__new__(GatewayHandler)
        conn = new_connection(handler, loop)
        # handle_PROXY is set by the connection itself (set_hook).
        assert set(conn._handle_hooks) == {
            n.removeprefix("handle_") for n in default_dir(handler) if n.startswith("handle_")
        } | {"PROXY"}
        assert set(conn._smtp_methods) == {
            n.removeprefix("smtp_") for n in default_dir(conn) if n.startswith("smtp_")}
        assert set(conn._auth_methods) == {"PLAIN", "LOGIN"}
        # Our async mechanisms, not aiosmtpd's synchronous built-ins.
        assert conn._auth_methods["PLAIN"].method.__func__ is GatewaySMTP.auth_PLAIN
        assert conn._auth_methods["LOGIN"].method.__func__ is GatewaySMTP.auth_LOGIN
        # Bound to this connection, not to the first one made.
        other = new_connection(handler, loop)
        assert other._smtp_methods["DATA"].__self__ is other
        assert other._handle_hooks["MAIL"].__self__ is handler
    finally:
        loop.close()


def test_dir_lists_the_class_hook_names_only():
    class Handler(HookDiscovery):
        async def handle_DATA(self, server, session, envelope):
            return "250 OK"

        def other(self):
            pass

    h = Handler()
    assert dir(h) == ["handle_DATA"]
    # An instance attribute named like a hook is not one (ours are all on the class:
    # test_aiosmtpd_finds_the_same_hooks... above compares with a full dir()).
    h.handle_RCPT = lambda *a: None  # type: ignore[attr-defined]
    assert dir(h) == ["handle_DATA"]
    assert [n for n in default_dir(Handler()) if n.startswith(aiosmtpd_adapter.HOOK_PREFIXES)] \
        == ["handle_DATA"]


# --- aiosmtpd still calls what the adapter overrides, over a real socket --------------
class Recorder(SMTPAdapter):
    """The adapter's defaults, each call recorded; and the adapter's own helpers,
    used by an XPEEK command."""

    def __init__(self, handler: Any, calls: list[str], **kwargs: Any):
        self.calls = calls
        super().__init__(handler, **kwargs)

    async def serve(self) -> None:
        self.calls.append("serve")
        await super().serve()

    def on_timeout(self) -> None:
        self.calls.append("on_timeout")
        super().on_timeout()

    def parse_path(self, arg: str) -> tuple[str | None, str | None]:
        self.calls.append(f"parse_path {arg.split()[0]}")
        return super().parse_path(arg)

    def before_envelope_reset(self) -> None:
        self.calls.append("before_envelope_reset")

    async def smtp_XPEEK(self, arg: str) -> None:
        # What the client sent after this line, read, put back, and left to the loop.
        buffered = self.has_buffered_line()
        with self.reading_data(64):
            data = await self.read_some(64)
        self.unread(data)
        self.restart_timer()
        self.calls.append(f"peek {buffered} {self.strip_keyword('TO:', 'to: <x@y>')}")
        await self.write(b"250 " + data.strip() + b"\r\n")


class RecordingHandler(HookDiscovery):
    def __init__(self, calls: list[str]):
        self.calls = calls

    async def handle_MAIL(self, server, session, envelope, address, options):
        self.calls.append("handle_MAIL")
        envelope.mail_from = address
        return "250 OK"

    async def handle_RCPT(self, server, session, envelope, address, options):
        self.calls.append("handle_RCPT")
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        self.calls.append("handle_DATA")
        return "250 taken"


def test_aiosmtpd_calls_each_overridden_member_in_a_real_session():
    calls: list[str] = []
    connections: list[Recorder] = []

    async def session() -> list[str]:
        loop = asyncio.get_running_loop()

        def factory() -> Recorder:
            conn = Recorder(RecordingHandler(calls), calls, hostname="mx.test", timeout=0.5,
                            loop=loop)
            connections.append(conn)
            return conn

        server = await loop.create_server(factory, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        replies = []
        clients: list[aiosmtplib.SMTP] = []
        try:
            client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=5, start_tls=False)
            await client.connect()
            await client.ehlo(hostname="client.test")
            calls.append("-- ehlo")
            await client.sendmail("a@sender.test", ["b@rcpt.test"], b"Subject: x\r\n\r\nhi\r\n")
            calls.append("-- sent")
            await client.rset()
            calls.append("-- rset")
            await client.execute_command(b"NOOP")
            clients.append(client)
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            await reader.readline()
            writer.write(b"XPEEK\r\nNOOP\r\n")  # one write: NOOP is in the buffer at XPEEK
            replies += [await reader.readline(), await reader.readline()]
            # Then silent: the command timer (0.5 s) ends both sessions.
            replies.append(await asyncio.wait_for(reader.read(), 5))
            writer.close()
            await asyncio.sleep(0.2)
        finally:
            for client in clients:
                client.close()
            server.close()
            await server.wait_closed()
        return replies

    replies = asyncio.run(session())
    assert replies == [b"250 NOOP\r\n", b"250 OK\r\n", b""]
    first = calls[: calls.index("-- rset") + 1]
    assert first == [
        "before_envelope_reset", "serve",  # connection_made resets, then starts serve()
        "before_envelope_reset", "-- ehlo",  # EHLO is a reset too
        "parse_path <a@sender.test>", "handle_MAIL",
        "parse_path <b@rcpt.test>", "handle_RCPT", "handle_DATA",
        "before_envelope_reset", "-- sent",  # the end of DATA
        "before_envelope_reset", "-- rset",
    ]
    assert "peek True <x@y>" in calls
    assert calls.count("on_timeout") == 2  # both connections, after their silence
    # The writer aiosmtpd was handed closes its transport once (a TLS one must not twice).
    assert all(isinstance(c._writer, aiosmtpd_adapter._ClosingOnce) for c in connections)
    assert all(c.command_task is not None and c.command_task.done() for c in connections)



# --- aiosmtpd's shared state, made the connection's own -----------------------------------
def mail_from_with_a_source_route() -> str:
    """A MAIL command over 512 octets and within RFC 1870's 26 more for SIZE: a
    source route (RFC 5321 §4.1.2, obsolete, still to be accepted) of two long hosts."""
    host = ".".join("a" * 60 for _ in range(4)) + ".test"
    return f"MAIL FROM:<@{host},@{host}:s@example.com> SIZE=100"


def test_a_new_connection_leaves_the_mail_line_limit_of_the_others_alone(gateway):
    # aiosmtpd keeps command_size_limits on its class, one dict for every connection:
    # each new connection cleared it, and MAIL lines that EHLO had allowed (SIZE,
    # RFC 1870 §3) became "too long" on every connection already open.
    line = mail_from_with_a_source_route()
    assert 512 < len(line) <= 512 + 26
    with smtplib.SMTP("127.0.0.1", gateway.ports["inbound"], timeout=15) as first:
        first.ehlo("first.example")
        with smtplib.SMTP("127.0.0.1", gateway.ports["inbound"], timeout=15) as second:
            assert second.noop()[0] == 250  # it is connected: its SMTP object exists
            code, text = first.docmd(line)
            assert code == 250, text


def test_no_property_of_ours_is_named_like_a_hook():
    # aiosmtpd's inspect.getmembers() reads every auth_*/handle_*/smtp_* name on each
    # new connection: a property named so runs then (before the connection is set
    # up, so it raised AttributeError, caught and thrown away, per connection), and
    # a method named so would be offered as an AUTH mechanism or a command.
    from gateway.smtp.handler import GatewayHandler
    from gateway.smtp.protocol import GatewaySMTP

    for cls in (GatewaySMTP, GatewayHandler):
        named = [n for n in dir(cls) if n.startswith(("auth_", "handle_", "smtp_"))
                 and isinstance(inspect.getattr_static(cls, n), property)]
        assert not named, f"{cls.__name__}: properties named like hooks: {named}"
