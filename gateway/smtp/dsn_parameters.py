"""The DSN parameters of MAIL and RCPT (RFC 3461 §4), taken out of the command before
aiosmtpd sees it: aiosmtpd refuses them (555) and upper-cases every value, while
ENVID and ORCPT are xtext the downstream must get back exactly as sent (§4.4: the
envelope id is returned in the DSN).

Pure: a command's parameter text in, (the rest, the DSN parameters, a refusal) out.
"""

from __future__ import annotations

import re

from gateway import replies
from gateway.replies import Reply

# RFC 3461 §4: xtext is "!" to "~" except "+" and "=", or "+" and two upper-case hex digits.
_XTEXT = r"(?:[!-*,-<>-~]|\+[0-9A-F]{2})+"
_VALID = {
    # §4.3: RET=FULL / RET=HDRS
    "RET": re.compile(r"FULL|HDRS", re.IGNORECASE),
    # §4.4: at most 100 characters of xtext
    "ENVID": re.compile(_XTEXT),
    # §4.1: NEVER alone, or a comma-separated list of SUCCESS, FAILURE, DELAY
    "NOTIFY": re.compile(r"NEVER|(?:SUCCESS|FAILURE|DELAY)(?:,(?:SUCCESS|FAILURE|DELAY))*",
                         re.IGNORECASE),
    # §4.2: addr-type ";" xtext, at most 500 characters
    "ORCPT": re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*;" + _XTEXT),
}
_MAX_LENGTH = {"ENVID": 100, "ORCPT": 500}
MAIL_NAMES = ("RET", "ENVID")
RCPT_NAMES = ("NOTIFY", "ORCPT")


def take_dsn_parameters(parameters: str, names: tuple[str, ...],
                        offered: bool) -> tuple[str, list[str], Reply | None]:
    """Split ``parameters`` (the text after the path) into the rest and the DSN ones,
    as sent.  A refusal when one is malformed or repeated (RFC 5321 §4.1.1.11, 501
    5.5.4), or when DSN was not advertised (RFC 3461 §4: the parameters may be used
    only with a server that did; 555 5.5.4, RFC 5321 §4.1.1.11)."""
    rest, taken, seen = [], [], set()
    for parameter in parameters.split():
        name, eq, value = parameter.partition("=")
        name = name.upper()
        if name not in names:
            rest.append(parameter)
            continue
        if not offered:
            return parameters, [], replies.DSN_NOT_OFFERED
        if (not eq or name in seen or not _VALID[name].fullmatch(value)
                or len(value) > _MAX_LENGTH.get(name, len(value))):
            return parameters, [], replies.BAD_PARAMETER.with_text(
                f"Invalid {name} parameter (RFC 3461 §4)")
        seen.add(name)
        taken.append(f"{name}={value.upper() if name in ('RET', 'NOTIFY') else value}")
    return " ".join(rest), taken, None
