"""Mail-client autoconfiguration documents, made from plain data.

Three dialects, one set of facts (:class:`ClientSettings`):

- Thunderbird autoconfig, clientConfig version 1.1
  (https://wiki.mozilla.org/Thunderbird:Autoconfiguration:ConfigFileFormat);
- Microsoft Autodiscover "POX" for Outlook (request schema
  .../outlook/requestschema/2006, response schema .../outlook/responseschema/2006a);
- an Apple configuration profile with one ``com.apple.mail.managed`` payload.

Only the authenticated submission listeners are advertised, implicit TLS (465)
first and STARTTLS (587) second, as RFC 8314 §3.3 asks.  Port 25 is never
offered to clients.  The IMAP/POP servers are someone else's and appear only
when configured.

Every document is built as a tree (ElementTree, plistlib) and serialised by the
library, so text from the request is always escaped; on top of that an address
is accepted only when it is a plain dot-atom ``local@domain`` (RFC 5322 §3.4.1)
of a domain we serve.
"""

from __future__ import annotations

import plistlib
import re
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from gateway.values.domains import normalise_domain

if TYPE_CHECKING:
    from collections.abc import Callable

    from gateway.config.model import Config
    from gateway.config.ops import HTTP, MailboxServer

Security = Literal["tls", "starttls"]
Login = Literal["address", "local_part"]

NS_AUTODISCOVER_REQUEST = "http://schemas.microsoft.com/exchange/autodiscover/outlook/requestschema/2006"
NS_AUTODISCOVER_RESPONSE = "http://schemas.microsoft.com/exchange/autodiscover/responseschema/2006"
NS_OUTLOOK_RESPONSE = "http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a"
MOBILECONFIG_TYPE = "application/x-apple-aspen-config"
# An Autodiscover request is a few hundred bytes; refuse anything much larger unread.
MAX_AUTODISCOVER_REQUEST = 16 * 1024

# RFC 5322 §3.2.3 atext, plus RFC 6531 UTF-8 letters; dot-atom: no leading,
# trailing or doubled dot.  Quoted local parts are refused: no mail client needs one.
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~\-]|[^\x00-\x7f]"
_DOT_ATOM = re.compile(rf"(?:{_ATEXT})+(?:\.(?:{_ATEXT})+)*")


@dataclass(frozen=True, slots=True)
class Endpoint:
    hostname: str
    port: int
    security: Security


@dataclass(frozen=True, slots=True)
class ClientSettings:
    """What a mail client needs to know, independent of the dialect."""

    smtp: tuple[Endpoint, ...]  # in order of preference
    display_name: str
    login: Login = "address"
    imap: Endpoint | None = None
    pop3: Endpoint | None = None
    # Names the Apple profile (reverse-DNS identifier, stable UUIDs).
    profile_owner: str = "localhost"

    @property
    def incoming(self) -> tuple[Literal["imap", "pop3"], Endpoint] | None:
        if self.imap:
            return "imap", self.imap
        if self.pop3:
            return "pop3", self.pop3
        return None


@dataclass(frozen=True, slots=True)
class MailAddress:
    local: str
    domain: str

    def __str__(self) -> str:
        return f"{self.local}@{self.domain}"


@dataclass(frozen=True, slots=True)
class Lookup:
    """What to answer an autoconfig request: 200 with an address, or an error status."""

    status: int
    address: MailAddress | None = None
    reason: str = ""


def client_settings(
    hostname: str,
    submissions_port: int | None,
    submission_port: int | None,
    display_name: str = "Mail",
    login: Login = "address",
    imap: Endpoint | None = None,
    pop3: Endpoint | None = None,
) -> ClientSettings:
    """Facts for the documents from the listeners that exist (None: not offered)."""
    smtp = []
    if submissions_port:  # RFC 8314 §3.3: implicit TLS first
        smtp.append(Endpoint(hostname, submissions_port, "tls"))
    if submission_port:
        smtp.append(Endpoint(hostname, submission_port, "starttls"))
    return ClientSettings(tuple(smtp), display_name, login, imap, pop3, profile_owner=hostname)


def client_settings_from_config(config: Config, http: HTTP) -> ClientSettings | None:
    """From the gateway's Config and its ``http:`` section (gateway.config.ops.HTTP)."""
    auto = http.autoconfig
    if auto is None:
        return None
    listeners = config.listeners

    def mailbox(server: MailboxServer | None) -> Endpoint | None:
        return Endpoint(server.hostname, server.port, server.security) if server else None

    return client_settings(
        hostname=auto.hostname or config.hostname,
        submissions_port=auto.submissions_port
        or (listeners.submissions.port if listeners.submissions else None),
        submission_port=auto.submission_port
        or (listeners.submission.port if listeners.submission else None),
        display_name=auto.display_name,
        login=auto.login,
        imap=mailbox(auto.imap),
        pop3=mailbox(auto.pop3),
    )


# --- which address, which domain --------------------------------------------------

def parse_address(raw: str) -> MailAddress | None:
    """A plain ``local@domain`` (domain normalised), or None for anything else."""
    if not raw or len(raw) > 254 or not raw.isprintable():
        return None
    local, sep, domain = raw.strip().rpartition("@")
    if not sep or len(local) > 64 or not _DOT_ATOM.fullmatch(local):
        return None
    try:
        return MailAddress(local, normalise_domain(domain))
    except ValueError:
        return None


def domain_from_host(host: str) -> str | None:
    """The customer domain from the Host header: ``autoconfig.example.com:443`` → example.com.

    Thunderbird asks autoconfig.DOMAIN (or DOMAIN/.well-known/...) and may leave out
    the address; the document then only needs the domain.
    """
    name = host.strip()
    if name.startswith("["):
        return None  # an IP literal names no domain
    name = name.rsplit(":", 1)[0] if name.count(":") == 1 else name
    for prefix in ("autoconfig.", "autodiscover."):
        if name.lower().startswith(prefix):
            name = name[len(prefix):]
    try:
        return normalise_domain(name)
    except ValueError:
        return None


def look_up(
    raw_address: str | None,
    is_served_domain: Callable[[str], bool],
    settings: ClientSettings | None,
) -> Lookup:
    """Decide the answer to a request naming ``raw_address`` (None: not given)."""
    if settings is None or not settings.smtp:
        return Lookup(404, reason="autoconfig is not enabled on this gateway")
    if raw_address is None:
        return Lookup(400, reason="emailaddress is required")
    address = parse_address(raw_address)
    if address is None:
        return Lookup(400, reason="emailaddress is not a plain local@domain address")
    if not is_served_domain(address.domain):
        return Lookup(404, reason="this gateway does not serve that domain")
    return Lookup(200, address)


def login_name(settings: ClientSettings, address: MailAddress) -> str:
    return address.local if settings.login == "local_part" else str(address)


# --- Thunderbird --------------------------------------------------------------------

_THUNDERBIRD_SOCKET = {"tls": "SSL", "starttls": "STARTTLS"}


def thunderbird_config(settings: ClientSettings, domain: str) -> bytes:
    """clientConfig 1.1; usernames as placeholders, so no request text is echoed."""
    placeholder = "%EMAILLOCALPART%" if settings.login == "local_part" else "%EMAILADDRESS%"
    root = ET.Element("clientConfig", version="1.1")
    provider = ET.SubElement(root, "emailProvider", id=domain)
    ET.SubElement(provider, "domain").text = domain
    ET.SubElement(provider, "displayName").text = settings.display_name
    ET.SubElement(provider, "displayShortName").text = settings.display_name

    def server(tag: str, kind: str, endpoint: Endpoint) -> None:
        element = ET.SubElement(provider, tag, type=kind)
        ET.SubElement(element, "hostname").text = endpoint.hostname
        ET.SubElement(element, "port").text = str(endpoint.port)
        ET.SubElement(element, "socketType").text = _THUNDERBIRD_SOCKET[endpoint.security]
        ET.SubElement(element, "username").text = placeholder
        # Cleartext inside TLS: the account sources hold hashes, not CRAM secrets.
        ET.SubElement(element, "authentication").text = "password-cleartext"

    if settings.imap:
        server("incomingServer", "imap", settings.imap)
    if settings.pop3:
        server("incomingServer", "pop3", settings.pop3)
    for endpoint in settings.smtp:
        server("outgoingServer", "smtp", endpoint)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True)


# --- Microsoft Autodiscover (POX) ----------------------------------------------------

def autodiscover_address(body: bytes) -> str | None:
    """The EMailAddress of an Autodiscover request, or None when it is not one.

    A document type declaration is refused before parsing: entities are how XML
    bombs work, and no Autodiscover request has a reason to carry one.
    """
    if len(body) > MAX_AUTODISCOVER_REQUEST or b"<!" in body:
        return None
    try:
        root = ET.fromstring(body)
    except ET.ParseError:
        return None
    if _local_name(root.tag) != "Autodiscover":
        return None
    for element in root.iter():
        if _local_name(element.tag) == "EMailAddress":
            return (element.text or "").strip()
    return None


def _local_name(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def autodiscover_response(settings: ClientSettings, address: MailAddress) -> bytes:
    root = ET.Element("Autodiscover", xmlns=NS_AUTODISCOVER_RESPONSE)
    response = ET.SubElement(root, "Response", xmlns=NS_OUTLOOK_RESPONSE)
    user = ET.SubElement(response, "User")
    ET.SubElement(user, "DisplayName").text = str(address)
    account = ET.SubElement(response, "Account")
    ET.SubElement(account, "AccountType").text = "email"
    ET.SubElement(account, "Action").text = "settings"
    login = login_name(settings, address)

    def protocol(kind: str, endpoint: Endpoint) -> None:
        element = ET.SubElement(account, "Protocol")
        ET.SubElement(element, "Type").text = kind
        ET.SubElement(element, "Server").text = endpoint.hostname
        ET.SubElement(element, "Port").text = str(endpoint.port)
        ET.SubElement(element, "DomainRequired").text = "off"
        ET.SubElement(element, "LoginName").text = login
        ET.SubElement(element, "SPA").text = "off"
        ET.SubElement(element, "SSL").text = "on"
        # "SSL" is implicit TLS, "TLS" is STARTTLS; Encryption overrides SSL when present.
        ET.SubElement(element, "Encryption").text = "SSL" if endpoint.security == "tls" else "TLS"
        ET.SubElement(element, "AuthRequired").text = "on"
        if kind == "SMTP":
            ET.SubElement(element, "UsePOPAuth").text = "off"
            ET.SubElement(element, "SMTPLast").text = "off"

    if settings.imap:
        protocol("IMAP", settings.imap)
    if settings.pop3:
        protocol("POP3", settings.pop3)
    for endpoint in settings.smtp:
        protocol("SMTP", endpoint)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True)


# --- Apple configuration profile ---------------------------------------------------

def mobileconfig(settings: ClientSettings, address: MailAddress) -> bytes | None:
    """An unsigned profile for one address; None when no incoming server is configured
    (the Mail payload requires one, so there is no valid profile without it)."""
    incoming = settings.incoming
    if incoming is None or not settings.smtp:
        return None
    kind, inbox = incoming
    outgoing = settings.smtp[0]
    login = login_name(settings, address)
    owner = ".".join(reversed(settings.profile_owner.split(".")))
    # Stable UUIDs: installing the profile again replaces it instead of adding a twin.
    profile_uuid = uuid.uuid5(uuid.NAMESPACE_URL, f"portcullis:{settings.profile_owner}:{address}")
    payload_uuid = uuid.uuid5(profile_uuid, "com.apple.mail.managed")
    payload = {
        "PayloadType": "com.apple.mail.managed",
        "PayloadVersion": 1,
        "PayloadIdentifier": f"{owner}.mail.{payload_uuid}",
        "PayloadUUID": str(payload_uuid).upper(),
        "PayloadDisplayName": settings.display_name,
        "EmailAccountDescription": f"{settings.display_name} ({address})",
        "EmailAccountType": "EmailTypeIMAP" if kind == "imap" else "EmailTypePOP",
        "EmailAddress": str(address),
        "IncomingMailServerAuthentication": "EmailAuthPassword",
        "IncomingMailServerHostName": inbox.hostname,
        "IncomingMailServerPortNumber": inbox.port,
        # Apple uses implicit TLS on 993/995/465 and STARTTLS on other ports when true.
        "IncomingMailServerUseSSL": True,
        "IncomingMailServerUsername": login,
        "OutgoingMailServerAuthentication": "EmailAuthPassword",
        "OutgoingMailServerHostName": outgoing.hostname,
        "OutgoingMailServerPortNumber": outgoing.port,
        "OutgoingMailServerUseSSL": True,
        "OutgoingMailServerUsername": login,
    }
    profile = {
        "PayloadContent": [payload],
        "PayloadDisplayName": f"{settings.display_name}: {address}",
        "PayloadIdentifier": f"{owner}.profile.{profile_uuid}",
        "PayloadType": "Configuration",
        "PayloadUUID": str(profile_uuid).upper(),
        "PayloadVersion": 1,
        "PayloadRemovalDisallowed": False,
    }
    return plistlib.dumps(profile, fmt=plistlib.FMT_XML)


def mobileconfig_filename(address: MailAddress) -> str:
    """A safe file name for Content-Disposition (letters, digits, dot, dash only)."""
    safe = re.sub(r"[^A-Za-z0-9.-]", "_", str(address))
    return f"{safe}.mobileconfig"
