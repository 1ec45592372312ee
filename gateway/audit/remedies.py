"""How to close what the audit found, per server software, in words an ISP can send.

The software is guessed from what the server said of itself (an SMTP greeting, an HTTP
``Server:`` or ``Via:`` header); when nothing gives it away, the report lists the
advice for every common server of that kind.  Plain data and one pure function.
"""

from __future__ import annotations

import re

# (name, pattern over what the server said): first match wins.
_SIGNATURES = (
    ("Postfix", re.compile(r"postfix", re.I)),
    ("Exim", re.compile(r"\bexim\b", re.I)),
    ("Sendmail", re.compile(r"sendmail", re.I)),
    ("Microsoft Exchange", re.compile(r"microsoft|exchange", re.I)),
    ("Squid", re.compile(r"squid", re.I)),
    ("tinyproxy", re.compile(r"tinyproxy", re.I)),
    ("Dante", re.compile(r"dante", re.I)),
)


def guess_software(texts: list[str]) -> str:
    """The server software named in what it said, or '' when it names none."""
    joined = "\n".join(texts)
    for name, pattern in _SIGNATURES:
        if pattern.search(joined):
            return name
    return ""


RELAY_SOFTWARE = ("Postfix", "Exim", "Sendmail", "Microsoft Exchange")
PROXY_SOFTWARE = ("Squid", "tinyproxy", "Dante")

REMEDIES = {
    "Postfix": (
        "In /etc/postfix/main.cf, let only your own networks and logged-in users relay: "
        "set `mynetworks` to your own addresses only (for example `127.0.0.0/8 [::1]/128`), "
        "and `smtpd_relay_restrictions = permit_mynetworks, permit_sasl_authenticated, "
        "reject_unauth_destination`. Keep `relay_domains` to the domains you really relay "
        "for. Then run `postfix reload`."
    ),
    "Exim": (
        "In the Exim configuration, the `acl_check_rcpt` ACL must end with "
        "`require message = relay not permitted` / `domains = +local_domains : "
        "+relay_to_domains`, and `hostlist relay_from_hosts` must list only your own "
        "addresses (on Debian: `dc_relay_nets` in /etc/exim4/update-exim4.conf.conf, then "
        "`update-exim4.conf` and restart exim4)."
    ),
    "Sendmail": (
        "Remove `FEATURE(`promiscuous_relay')`, `FEATURE(`relay_local_from')` and "
        "`FEATURE(`loose_relay_check')` from sendmail.mc; list only your own networks in "
        "/etc/mail/access (`Connect:192.0.2 RELAY`) and only your own domains in "
        "relay-domains; rebuild sendmail.cf and restart sendmail."
    ),
    "Microsoft Exchange": (
        "In the Exchange admin center (mail flow, receive connectors), remove the "
        "`Anonymous users` permission group with `Ms-Exch-SMTP-Accept-Any-Recipient` from "
        "every connector that faces the Internet (`Get-ReceiveConnector | "
        "Get-ADPermission -User 'NT AUTHORITY\\ANONYMOUS LOGON'` shows it); a relay "
        "connector for devices must be limited to their addresses (RemoteIPRanges)."
    ),
    "Squid": (
        "In /etc/squid/squid.conf keep the stock rules before any `allow`: "
        "`http_access deny !Safe_ports` and `http_access deny CONNECT !SSL_ports`, allow "
        "only your own clients (`acl localnet src ...` / `http_access allow localnet`) and "
        "end with `http_access deny all`; or make Squid listen on 127.0.0.1 only. Then "
        "`squid -k reconfigure`."
    ),
    "tinyproxy": (
        "In /etc/tinyproxy/tinyproxy.conf list only your own clients with `Allow` (for "
        "example `Allow 127.0.0.1`), restrict CONNECT with `ConnectPort 443`, and bind it "
        "to an inside address with `Listen`; then restart tinyproxy."
    ),
    "Dante": (
        "In /etc/danted.conf, `client pass` and `socks pass` rules must name only your own "
        "clients in `from:` (never `0.0.0.0/0`), and `socksmethod: username` requires a "
        "login; end with `socks block { from: 0.0.0.0/0 to: 0.0.0.0/0 }`. Then restart "
        "danted."
    ),
}

UNKNOWN_PROXY = (
    "If you did not set up a proxy on this address, a computer behind it is probably "
    "infected with malware that runs one: disconnect it, clean or reinstall it, and "
    "change the passwords used on it. A home router with 'port forwarding' to such a "
    "computer must have that rule removed."
)

UNKNOWN_RELAY = (
    "Whatever the mail server, it must accept mail for other domains only from your own "
    "networks or from users who log in with a password; mail from anyone else must be "
    "accepted only for the domains you host."
)


def remedies_for(kind: str, software: str) -> list[tuple[str, str]]:
    """(software, advice) pairs: the one named, or every common server of that kind."""
    if software in REMEDIES:
        return [(software, REMEDIES[software])]
    names = RELAY_SOFTWARE if kind == "relay" else PROXY_SOFTWARE
    general = UNKNOWN_RELAY if kind == "relay" else UNKNOWN_PROXY
    return [("any server", general), *((n, REMEDIES[n]) for n in names)]
