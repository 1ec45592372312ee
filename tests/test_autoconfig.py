"""Mail-client autoconfig documents: structure, submission-only SMTP, escaping, refusals.

Each document is parsed back (xml.etree, plistlib) and checked element by element.
Fetching them over HTTP is in test_http.py.
"""

from __future__ import annotations

import plistlib
import xml.etree.ElementTree as ET

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from gateway.config.model import Config
from gateway.config.ops import HTTP
from gateway.ops import autoconfig as ac
from gateway.ops.autoconfig import Endpoint, MailAddress

NS = {
    "r": ac.NS_AUTODISCOVER_RESPONSE,
    "o": ac.NS_OUTLOOK_RESPONSE,
}
IMAP = Endpoint("imap.isp.example", 993, "tls")
POP3 = Endpoint("pop.isp.example", 110, "starttls")
SETTINGS = ac.client_settings("smtp.isp.example", 465, 587, "ISP Mail", imap=IMAP)
ALICE = MailAddress("alice", "customer.example")


def served(domain: str) -> bool:
    return domain == "customer.example"


# --- which listeners are offered ---------------------------------------------------

def test_implicit_tls_is_offered_before_starttls():
    assert SETTINGS.smtp == (
        Endpoint("smtp.isp.example", 465, "tls"),
        Endpoint("smtp.isp.example", 587, "starttls"),
    )


def test_only_the_listeners_that_exist_are_offered():
    assert ac.client_settings("smtp.isp.example", None, 2587).smtp == (
        Endpoint("smtp.isp.example", 2587, "starttls"),
    )
    assert ac.client_settings("smtp.isp.example", None, None).smtp == ()


def _config(listeners: dict, **http) -> tuple[Config, HTTP]:
    config = Config.model_validate({
        "hostname": "Gateway.ISP.example",
        "listeners": listeners,
        "downstream": {"inbound": "smtp://127.0.0.1:10025", "outbound": "smtp://127.0.0.1:10026"},
        "policy_dir": "policy",
    })
    return config, HTTP.model_validate(http)


def test_settings_from_config_never_offer_the_inbound_mx_port():
    config, http = _config({"inbound": {"port": 25}, "submission": {"port": 2587}})
    settings = ac.client_settings_from_config(config, http)
    assert settings.smtp == (Endpoint("gateway.isp.example", 2587, "starttls"),)
    assert settings.imap is None and settings.pop3 is None


def test_public_ports_and_hostname_override_the_listeners():
    # In a container the listeners bind high ports; clients see 465 and 587.
    config, http = _config(
        {"submission": {"port": 2587}, "submissions": {"port": 2465}},
        autoconfig={
            "hostname": "SMTP.isp.example.", "submissions_port": 465, "submission_port": 587,
            "imap": {"hostname": "imap.isp.example", "port": 993},
            "pop3": {"hostname": "pop.isp.example", "port": 110, "security": "starttls"},
            "login": "local_part",
        },
    )
    settings = ac.client_settings_from_config(config, http)
    assert [(e.hostname, e.port, e.security) for e in settings.smtp] == [
        ("smtp.isp.example", 465, "tls"), ("smtp.isp.example", 587, "starttls"),
    ]
    assert settings.imap == IMAP and settings.pop3 == POP3
    assert settings.login == "local_part"


def test_autoconfig_null_turns_it_off():
    config, http = _config({"submission": {"port": 587}}, autoconfig=None)
    assert ac.client_settings_from_config(config, http) is None
    assert ac.look_up("alice@customer.example", served, None).status == 404


@pytest.mark.parametrize(
    "section",
    [
        {"port": 0},
        {"prot": 8080},
        {"autoconfig": {"imap": {"hostname": "imap.isp.example"}}},
        {"autoconfig": {"imap": {"hostname": "imap.isp.example", "port": 993, "security": "ssl"}}},
        {"autoconfig": {"hostname": "not a host"}},
        {"autoconfig": {"display_name": "two\nlines"}},
        {"autoconfig": {"login": "email"}},
    ],
)
def test_bad_http_sections_are_refused(section):
    with pytest.raises(ValidationError):
        HTTP.model_validate(section)


def test_http_section_is_frozen():
    with pytest.raises(ValidationError):
        HTTP().port = 1  # type: ignore[misc]


# --- which address --------------------------------------------------------------------

@pytest.mark.parametrize(
    ("raw", "status"),
    [
        ("alice@customer.example", 200),
        ("Alice.Smith+tag@Customer.Example.", 200),
        ("o'hara&co@customer.example", 200),
        ("alice@other.example", 404),
        ("alice", 400),
        ("", 400),
        (None, 400),
        ('"quoted"@customer.example', 400),
        ("a..b@customer.example", 400),
        (".a@customer.example", 400),
        ("<x>@customer.example", 400),
        ("alice@customer.example\r\nX: y", 400),
        ("alice@[192.0.2.1]", 400),
        ("a" * 65 + "@customer.example", 400),
        ("alice@customer.example</domain><x>", 400),
    ],
)
def test_look_up(raw, status):
    assert ac.look_up(raw, served, SETTINGS).status == status


def test_look_up_normalises_the_domain():
    assert ac.look_up("Bob@CUSTOMER.example.", served, SETTINGS).address == MailAddress(
        "Bob", "customer.example"
    )


def test_no_submission_listener_means_no_autoconfig():
    bare = ac.client_settings("smtp.isp.example", None, None)
    assert ac.look_up("alice@customer.example", served, bare).status == 404


@pytest.mark.parametrize(
    ("host", "domain"),
    [
        ("autoconfig.customer.example", "customer.example"),
        ("autoconfig.Customer.Example:8080", "customer.example"),
        ("customer.example", "customer.example"),
        ("autodiscover.customer.example", "customer.example"),
        ("[::1]:8080", None),
        ("bad host", None),
    ],
)
def test_domain_from_host(host, domain):
    assert ac.domain_from_host(host) == domain


# --- Thunderbird ------------------------------------------------------------------------

def test_thunderbird_document_has_the_clientconfig_1_1_structure():
    root = ET.fromstring(ac.thunderbird_config(SETTINGS, "customer.example"))
    assert root.tag == "clientConfig" and root.get("version") == "1.1"
    provider = root.find("emailProvider")
    assert provider.get("id") == "customer.example"
    assert provider.findtext("domain") == "customer.example"
    assert provider.findtext("displayName") == "ISP Mail"
    incoming = provider.findall("incomingServer")
    assert [(s.get("type"), s.findtext("hostname"), s.findtext("port"), s.findtext("socketType"))
            for s in incoming] == [("imap", "imap.isp.example", "993", "SSL")]
    outgoing = provider.findall("outgoingServer")
    assert [(s.get("type"), s.findtext("port"), s.findtext("socketType")) for s in outgoing] == [
        ("smtp", "465", "SSL"), ("smtp", "587", "STARTTLS"),
    ]
    for server in incoming + outgoing:
        assert server.findtext("username") == "%EMAILADDRESS%"
        assert server.findtext("authentication") == "password-cleartext"


def test_thunderbird_without_mailbox_servers_lists_only_smtp():
    settings = ac.client_settings("smtp.isp.example", 465, None, login="local_part")
    provider = ET.fromstring(ac.thunderbird_config(settings, "customer.example")).find("emailProvider")
    assert provider.findall("incomingServer") == []
    [smtp] = provider.findall("outgoingServer")
    assert smtp.findtext("username") == "%EMAILLOCALPART%"


# --- Autodiscover ---------------------------------------------------------------------

def autodiscover_request(address: str) -> bytes:
    return (
        '<?xml version="1.0" encoding="utf-8"?>'
        f'<Autodiscover xmlns="{ac.NS_AUTODISCOVER_REQUEST}"><Request>'
        f"<EMailAddress>{address}</EMailAddress>"
        f"<AcceptableResponseSchema>{ac.NS_OUTLOOK_RESPONSE}</AcceptableResponseSchema>"
        "</Request></Autodiscover>"
    ).encode()


def test_autodiscover_request_gives_its_address():
    assert ac.autodiscover_address(autodiscover_request(" alice@customer.example ")) == (
        "alice@customer.example"
    )


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not xml",
        b"<Other><EMailAddress>a@customer.example</EMailAddress></Other>",
        # A billion-laughs bomb: refused before the parser sees it.
        b'<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;">]>'
        b"<Autodiscover><Request><EMailAddress>&b;</EMailAddress></Request></Autodiscover>",
        # An external entity.
        b'<!DOCTYPE a [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
        b"<Autodiscover><Request><EMailAddress>&x;</EMailAddress></Request></Autodiscover>",
        b"<Autodiscover>" + b" " * ac.MAX_AUTODISCOVER_REQUEST + b"</Autodiscover>",
    ],
)
def test_autodiscover_refuses_what_is_not_a_plain_request(body):
    assert ac.autodiscover_address(body) is None


def test_autodiscover_response_has_the_outlook_schema_structure():
    root = ET.fromstring(ac.autodiscover_response(SETTINGS, ALICE))
    assert root.tag == f"{{{ac.NS_AUTODISCOVER_RESPONSE}}}Autodiscover"
    account = root.find("o:Response/o:Account", NS)
    assert account.findtext("o:AccountType", namespaces=NS) == "email"
    assert account.findtext("o:Action", namespaces=NS) == "settings"
    protocols = [
        {child.tag.split("}")[1]: child.text for child in p}
        for p in account.findall("o:Protocol", NS)
    ]
    assert [(p["Type"], p["Server"], p["Port"], p["Encryption"]) for p in protocols] == [
        ("IMAP", "imap.isp.example", "993", "SSL"),
        ("SMTP", "smtp.isp.example", "465", "SSL"),
        ("SMTP", "smtp.isp.example", "587", "TLS"),
    ]
    assert {p["LoginName"] for p in protocols} == {"alice@customer.example"}
    assert {p["AuthRequired"] for p in protocols} == {"on"}
    assert {p["SPA"] for p in protocols} == {"off"}


# --- Apple profile ---------------------------------------------------------------------

def test_mobileconfig_is_a_profile_with_one_mail_payload():
    profile = plistlib.loads(ac.mobileconfig(SETTINGS, ALICE))
    assert profile["PayloadType"] == "Configuration"
    assert profile["PayloadVersion"] == 1
    [payload] = profile["PayloadContent"]
    assert payload["PayloadType"] == "com.apple.mail.managed"
    assert payload["EmailAddress"] == "alice@customer.example"
    assert payload["EmailAccountType"] == "EmailTypeIMAP"
    assert (payload["IncomingMailServerHostName"], payload["IncomingMailServerPortNumber"]) == (
        "imap.isp.example", 993,
    )
    assert (payload["OutgoingMailServerHostName"], payload["OutgoingMailServerPortNumber"]) == (
        "smtp.isp.example", 465,
    )
    assert payload["OutgoingMailServerUseSSL"] is True
    assert payload["OutgoingMailServerAuthentication"] == "EmailAuthPassword"
    assert payload["OutgoingMailServerUsername"] == "alice@customer.example"
    assert profile["PayloadIdentifier"].startswith("example.isp.smtp.")
    assert profile["PayloadUUID"] != payload["PayloadUUID"]


def test_mobileconfig_uuid_is_stable_per_address_so_reinstalling_replaces():
    first = plistlib.loads(ac.mobileconfig(SETTINGS, ALICE))
    again = plistlib.loads(ac.mobileconfig(SETTINGS, ALICE))
    bob = plistlib.loads(ac.mobileconfig(SETTINGS, MailAddress("bob", "customer.example")))
    assert first["PayloadUUID"] == again["PayloadUUID"] != bob["PayloadUUID"]


def test_mobileconfig_with_pop_only_uses_pop():
    settings = ac.client_settings("smtp.isp.example", None, 587, pop3=POP3)
    [payload] = plistlib.loads(ac.mobileconfig(settings, ALICE))["PayloadContent"]
    assert payload["EmailAccountType"] == "EmailTypePOP"
    assert payload["OutgoingMailServerPortNumber"] == 587


def test_mobileconfig_needs_an_incoming_server():
    # Apple's Mail payload requires one; there is no valid profile without it.
    assert ac.mobileconfig(ac.client_settings("smtp.isp.example", 465, 587), ALICE) is None


def test_mobileconfig_filename_is_safe():
    name = ac.mobileconfig_filename(MailAddress("o'hara&co", "customer.example"))
    assert name == "o_hara_co_customer.example.mobileconfig"


# --- escaping: whatever the address, the document says exactly it ----------------------

ATEXT = st.sampled_from(list("abcXYZ019!#$%&'*+/=?^_`{|}~-") + ["é", "ü", "中"])


@given(local=st.lists(st.text(ATEXT, min_size=1, max_size=8), min_size=1, max_size=3))
def test_any_accepted_address_round_trips_through_every_document(local):
    raw = ".".join(local) + "@customer.example"
    answer = ac.look_up(raw, served, SETTINGS)
    assert answer.status == 200
    address = answer.address
    root = ET.fromstring(ac.autodiscover_response(SETTINGS, address))
    assert {e.text for e in root.iter(f"{{{ac.NS_OUTLOOK_RESPONSE}}}LoginName")} == {raw}
    [payload] = plistlib.loads(ac.mobileconfig(SETTINGS, address))["PayloadContent"]
    assert payload["EmailAddress"] == raw
    request = ac.autodiscover_address(autodiscover_request(raw.replace("&", "&amp;")))
    assert request == raw


@given(raw=st.text(max_size=80))
def test_arbitrary_text_is_refused_or_round_trips(raw):
    answer = ac.look_up(raw, lambda d: True, SETTINGS)
    if answer.status != 200:
        assert answer.status == 400 and answer.address is None
        return
    address = answer.address
    ET.fromstring(ac.autodiscover_response(SETTINGS, address))  # well-formed
    [payload] = plistlib.loads(ac.mobileconfig(SETTINGS, address))["PayloadContent"]
    assert payload["EmailAddress"] == str(address)
    assert "<" not in str(address) and ">" not in str(address) and '"' not in str(address)


def test_full_http_section_parses():
    http = HTTP.model_validate({
        "address": "0.0.0.0", "port": 8443, "readiness_timeout": 2,
        "tls": {"cert": "autoconfig.crt", "key": "autoconfig.key"},
        "metrics_dir": "/dev/shm/portcullis-metrics",
        "autoconfig": {"display_name": "ISP Mail", "imap": {"hostname": "imap.isp.example",
                                                            "port": 143, "security": "starttls"}},
    })
    assert http.port == 8443 and str(http.tls.cert) == "autoconfig.crt"
    assert http.autoconfig.imap.security == "starttls" and http.autoconfig.pop3 is None
    assert HTTP().address == "127.0.0.1" and HTTP().autoconfig is not None
