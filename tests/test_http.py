"""The operations HTTP server over a real socket, fetched with a real HTTP client (aiohttp).

Readiness is probed against a real downstream (a TCP server the test starts and
stops); metrics are scraped before and after the gateway counts something.
"""

from __future__ import annotations

import asyncio
import plistlib
import socket
import ssl
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator

import aiohttp
import pytest
import pytest_asyncio
import trustme
from prometheus_client.parser import text_string_to_metric_families

from gateway.ops import autoconfig as ac
from gateway.ops.http import AutoconfigSite, OpsHTTPServer, readiness_from
from gateway.ops.metrics import Metrics

pytestmark = pytest.mark.asyncio

SETTINGS = ac.client_settings(
    "smtp.isp.example", 465, 587, "ISP Mail", imap=ac.Endpoint("imap.isp.example", 993, "tls")
)
SITE = AutoconfigSite(SETTINGS, lambda domain: domain == "customer.example")


class Downstream:
    """A real TCP listener standing in for the downstream MTA; can be stopped."""

    def __init__(self) -> None:
        self.server: asyncio.AbstractServer | None = None
        self.port = 0

    async def start(self) -> None:
        async def greet(reader, writer):
            writer.write(b"220 downstream ESMTP\r\n")
            await writer.drain()
            writer.close()

        self.server = await asyncio.start_server(greet, "127.0.0.1", self.port)
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
            self.server = None

    async def problems(self) -> list[str]:
        """The readiness probe: can we open a connection and read a 220?"""
        try:
            async with asyncio.timeout(1):
                reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
                line = await reader.readline()
                writer.close()
        except (OSError, TimeoutError) as exc:
            return [f"downstream 127.0.0.1:{self.port} unreachable: {type(exc).__name__}"]
        return [] if line.startswith(b"220") else ["downstream did not greet"]


@pytest_asyncio.fixture
async def fake_downstream() -> AsyncIterator[Downstream]:
    d = Downstream()
    await d.start()
    try:
        yield d
    finally:
        await d.stop()


@pytest_asyncio.fixture
async def ops(fake_downstream) -> AsyncIterator[tuple[OpsHTTPServer, Metrics, str]]:
    metrics = Metrics(listeners=["inbound", "submission"])
    server = OpsHTTPServer(
        "127.0.0.1", 0, registry=metrics.registry, readiness=fake_downstream.problems,
        autoconfig_site=SITE, readiness_timeout=2,
    )
    await server.start()
    try:
        yield server, metrics, f"http://127.0.0.1:{server.bound_port}"
    finally:
        await server.stop()


@pytest_asyncio.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        yield session


async def scrape(client: aiohttp.ClientSession, base: str) -> dict[tuple, float]:
    async with client.get(base + "/metrics") as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        text = await response.text()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


# --- health ------------------------------------------------------------------------------

async def test_healthz_answers_while_the_process_runs(ops, client):
    _, _, base = ops
    async with client.get(base + "/healthz") as response:
        assert response.status == 200
        assert await response.text() == "ok\n"
        # No version of aiohttp or Python given away.
        assert response.headers["Server"] == "portcullis"


async def test_readyz_goes_503_when_the_downstream_goes_down_and_back(ops, client, fake_downstream):
    _, _, base = ops
    async with client.get(base + "/readyz") as response:
        assert response.status == 200
    await fake_downstream.stop()
    async with client.get(base + "/readyz") as response:
        assert response.status == 503
        body = await response.text()
    assert f"downstream 127.0.0.1:{fake_downstream.port} unreachable" in body
    await fake_downstream.start()  # same port again
    async with client.get(base + "/readyz") as response:
        assert response.status == 200


async def test_readyz_lists_every_problem(client):
    async def two_problems():
        return ["listener submission not bound", "store unreachable"]

    server = OpsHTTPServer("127.0.0.1", 0, registry=Metrics().registry, readiness=two_problems)
    await server.start()
    try:
        async with client.get(f"http://127.0.0.1:{server.bound_port}/readyz") as response:
            assert response.status == 503
            lines = (await response.text()).splitlines()
    finally:
        await server.stop()
    assert lines == ["not ready:", "- listener submission not bound", "- store unreachable"]


async def test_readiness_from_named_checks_reports_each_failure_by_name(fake_downstream):
    async def store_ok():
        return None

    async def downstream_reachable():
        problems = await fake_downstream.problems()
        if problems:
            raise ConnectionError(problems[0])

    probe = readiness_from({"store": store_ok, "downstream outbound": downstream_reachable})
    assert await probe() == []
    await fake_downstream.stop()
    [problem] = await probe()
    assert problem.startswith("downstream outbound: ConnectionError: downstream 127.0.0.1:")


async def test_a_probe_that_hangs_or_crashes_means_not_ready(client):
    async def hangs():
        await asyncio.sleep(30)
        return []

    async def crashes():
        raise RuntimeError("secret detail")

    for probe, expected in ((hangs, "took longer than 0.2s"), (crashes, "RuntimeError")):
        server = OpsHTTPServer("127.0.0.1", 0, registry=Metrics().registry, readiness=probe,
                               readiness_timeout=0.2)
        await server.start()
        try:
            async with client.get(f"http://127.0.0.1:{server.bound_port}/readyz") as response:
                assert response.status == 503
                body = await response.text()
        finally:
            await server.stop()
        assert expected in body and "secret detail" not in body


# --- metrics -----------------------------------------------------------------------------

async def test_metrics_change_as_the_gateway_counts(ops, client):
    _, metrics, base = ops
    replies = ("portcullis_smtp_replies_total", (("class", "5xx"), ("listener", "submission")))
    auth = ("portcullis_auth_attempts_total", (("listener", "submission"), ("result", "failure")))
    latency = ("portcullis_downstream_seconds_count", (("downstream", "outbound"),))
    before = await scrape(client, base)
    assert before[replies] == 0 and before[auth] == 0
    assert latency not in before

    metrics.reply("submission", 535)
    metrics.reply("submission", 550)
    metrics.auth_attempt("submission", success=False)
    metrics.downstream_took("outbound", 0.04)
    metrics.set_suspended(1)

    after = await scrape(client, base)
    assert after[replies] == before[replies] + 2
    assert after[auth] == before[auth] + 1
    assert after[latency] == 1
    assert after[("portcullis_suspended_accounts", ())] == 1


async def test_metrics_speak_openmetrics_when_asked(ops, client):
    _, metrics, base = ops
    metrics.message("inbound", "accepted")
    headers = {"Accept": "application/openmetrics-text; version=1.0.0"}
    async with client.get(base + "/metrics", headers=headers) as response:
        assert response.headers["Content-Type"].startswith("application/openmetrics-text")
        text = await response.text()
    assert 'portcullis_messages_total{listener="inbound",outcome="accepted"} 1.0' in text
    assert text.rstrip().endswith("# EOF")


# --- autoconfig over HTTP --------------------------------------------------------------------

@pytest.mark.parametrize(
    "path", ["/mail/config-v1.1.xml", "/.well-known/autoconfig/mail/config-v1.1.xml"]
)
async def test_thunderbird_fetches_its_config(ops, client, path):
    _, _, base = ops
    async with client.get(base + path, params={"emailaddress": "alice@customer.example"}) as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("application/xml")
        root = ET.fromstring(await r.read())
    assert root.tag == "clientConfig" and root.get("version") == "1.1"
    ports = [s.findtext("port") for s in root.iter("outgoingServer")]
    assert ports == ["465", "587"]


async def test_thunderbird_without_an_address_uses_the_host_name(ops, client):
    server, _, base = ops
    headers = {"Host": f"autoconfig.customer.example:{server.bound_port}"}
    async with client.get(base + "/mail/config-v1.1.xml", headers=headers) as r:
        assert r.status == 200
        root = ET.fromstring(await r.read())
    assert root.find("emailProvider").get("id") == "customer.example"
    headers = {"Host": "autoconfig.stranger.example"}
    async with client.get(base + "/mail/config-v1.1.xml", headers=headers) as r:
        assert r.status == 404


async def test_outlook_autodiscover_post(ops, client):
    _, _, base = ops
    body = (
        f'<Autodiscover xmlns="{ac.NS_AUTODISCOVER_REQUEST}"><Request>'
        "<EMailAddress>alice@customer.example</EMailAddress>"
        f"<AcceptableResponseSchema>{ac.NS_OUTLOOK_RESPONSE}</AcceptableResponseSchema>"
        "</Request></Autodiscover>"
    )
    for path in ("/autodiscover/autodiscover.xml", "/Autodiscover/Autodiscover.xml"):
        async with client.post(base + path, data=body,
                               headers={"Content-Type": "text/xml"}) as r:
            assert r.status == 200
            root = ET.fromstring(await r.read())
        ns = {"o": ac.NS_OUTLOOK_RESPONSE}
        types = [p.findtext("o:Type", namespaces=ns) for p in root.iterfind(".//o:Protocol", ns)]
        assert types == ["IMAP", "SMTP", "SMTP"]


async def test_autodiscover_refuses_bombs_strangers_and_giants(ops, client):
    _, _, base = ops
    url = base + "/autodiscover/autodiscover.xml"
    bomb = (b'<!DOCTYPE l [<!ENTITY a "aaaa">]><Autodiscover><Request>'
            b"<EMailAddress>&a;@customer.example</EMailAddress></Request></Autodiscover>")
    async with client.post(url, data=bomb) as r:
        assert r.status == 400
    stranger = (f'<Autodiscover xmlns="{ac.NS_AUTODISCOVER_REQUEST}"><Request>'
                "<EMailAddress>eve@other.example</EMailAddress></Request></Autodiscover>")
    async with client.post(url, data=stranger) as r:
        assert r.status == 404
    async with client.post(url, data=b"<Autodiscover>" + b" " * 100_000) as r:
        assert r.status == 413
    async with client.get(url) as r:
        assert r.status == 405


async def test_apple_profile_download(ops, client):
    _, _, base = ops
    async with client.get(base + "/mobileconfig",
                          params={"emailaddress": "alice@customer.example"}) as r:
        assert r.status == 200
        assert r.headers["Content-Type"] == ac.MOBILECONFIG_TYPE
        assert r.headers["Content-Disposition"] == (
            'attachment; filename="alice_customer.example.mobileconfig"'
        )
        profile = plistlib.loads(await r.read())
    [payload] = profile["PayloadContent"]
    assert payload["EmailAddress"] == "alice@customer.example"
    assert payload["OutgoingMailServerPortNumber"] == 465


@pytest.mark.parametrize(
    ("address", "status"),
    [
        ("eve@other.example", 404),
        ('alice@customer.example"/><evil x="', 400),
        ("<script>@customer.example", 400),
        ("alice@customer.example\r\nSet-Cookie: x=1", 400),
    ],
)
async def test_autoconfig_refuses_strangers_and_never_echoes_the_request(ops, client, address,
                                                                         status):
    _, _, base = ops
    for path in ("/mail/config-v1.1.xml", "/mobileconfig"):
        async with client.get(base + path, params={"emailaddress": address}) as r:
            assert r.status == status
            body = await r.text()
            assert "evil" not in body and "script" not in body and "Set-Cookie" not in r.headers


async def test_autoconfig_can_be_switched_off_and_swapped_on_reload(ops, client):
    server, _, base = ops
    params = {"emailaddress": "bob@new.example"}
    async with client.get(base + "/mobileconfig", params=params) as r:
        assert r.status == 404
    server.set_autoconfig(AutoconfigSite(SETTINGS, lambda d: d == "new.example"))
    async with client.get(base + "/mobileconfig", params=params) as r:
        assert r.status == 200
    server.set_autoconfig(None)
    async with client.get(base + "/mobileconfig", params=params) as r:
        assert r.status == 404
    async with client.post(base + "/autodiscover/autodiscover.xml", data=b"<Autodiscover/>") as r:
        assert r.status == 400


async def test_profile_without_an_incoming_server_is_404(client):
    site = AutoconfigSite(ac.client_settings("smtp.isp.example", 465, 587), lambda d: True)
    server = OpsHTTPServer("127.0.0.1", 0, registry=Metrics().registry,
                           readiness=_ready, autoconfig_site=site)
    await server.start()
    try:
        url = f"http://127.0.0.1:{server.bound_port}/mobileconfig"
        async with client.get(url, params={"emailaddress": "a@b.example"}) as r:
            assert r.status == 404
            assert "imap or pop3" in await r.text()
    finally:
        await server.stop()


# --- life cycle ----------------------------------------------------------------------------

async def _ready() -> list[str]:
    return []


async def test_stop_releases_the_port_and_start_twice_is_refused():
    server = OpsHTTPServer("127.0.0.1", 0, registry=Metrics().registry, readiness=_ready)
    await server.start()
    port = server.bound_port
    with pytest.raises(RuntimeError):
        await server.start()
    await server.stop()
    await server.stop()  # twice is harmless
    with pytest.raises(RuntimeError):
        server.bound_port  # noqa: B018
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))


async def test_a_port_in_use_is_an_error_at_start():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        server = OpsHTTPServer("127.0.0.1", sock.getsockname()[1], registry=Metrics().registry,
                               readiness=_ready)
        with pytest.raises(OSError):
            await server.start()


async def test_https_when_given_a_certificate(client):
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("autodiscover.customer.example", "127.0.0.1").configure_cert(server_context)
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    server = OpsHTTPServer("127.0.0.1", 0, registry=Metrics().registry, readiness=_ready,
                           autoconfig_site=SITE, ssl_context=server_context)
    await server.start()
    try:
        url = f"https://127.0.0.1:{server.bound_port}/mail/config-v1.1.xml"
        params = {"emailaddress": "alice@customer.example"}
        async with client.get(url, params=params, ssl=client_context) as r:
            assert r.status == 200
            assert ET.fromstring(await r.read()).tag == "clientConfig"
        with pytest.raises(aiohttp.ClientError):
            async with client.get(url.replace("https", "http"), params=params) as r:
                await r.read()
    finally:
        await server.stop()
