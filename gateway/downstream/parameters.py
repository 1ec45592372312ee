"""Which MAIL and RCPT parameters go on to the downstream: only those of extensions it
offers in its EHLO reply (RFC 5321 §2.2.2: a client uses an extension's parameters
only when the server advertised it).

The gateway answers the client's MAIL before a downstream connection is chosen (the
downstream's MAIL goes out pipelined with the first RCPT, gateway/downstream/smtp.py),
so the choice is made there, per connection, against that connection's EHLO.
"""

from __future__ import annotations

from collections.abc import Iterable

# Parameter name -> the EHLO keyword (lower case) that must be offered for it.
MAIL_PARAMETERS = {
    "SIZE": "size",  # RFC 1870
    "BODY": "8bitmime",  # RFC 6152 (BODY=7BIT/8BITMIME)
    "SMTPUTF8": "smtputf8",  # RFC 6531 §3.4
    "RET": "dsn",  # RFC 3461 §4.3
    "ENVID": "dsn",  # RFC 3461 §4.4
}
RCPT_PARAMETERS = {
    "NOTIFY": "dsn",  # RFC 3461 §4.1
    "ORCPT": "dsn",  # RFC 3461 §4.2
}
DSN_MAIL = ("RET", "ENVID")
DSN_RCPT = ("NOTIFY", "ORCPT")


def name_of(parameter: str) -> str:
    return parameter.partition("=")[0].upper()


def passed(parameters: Iterable[str], known: dict[str, str],
           offered: frozenset[str]) -> tuple[list[str], list[str]]:
    """(parameters to send, parameters dropped because the extension is not offered).
    Parameters we do not know are never passed: we cannot vouch for what they mean."""
    sent, dropped = [], []
    for parameter in parameters:
        keyword = known.get(name_of(parameter))
        (sent if keyword is not None and keyword in offered else dropped).append(parameter)
    return sent, dropped
