"""The letter to the customer: per host, what is open, the evidence, and how to close it.

Built from the scan's records (:mod:`gateway.audit.records`), in plain text for an
e-mail or in Markdown for a ticket system.  Pure formatting: no I/O.  What a server
said is shown as it said it, minus anything that is not printable.
"""

from __future__ import annotations

import ipaddress

from gateway.audit.remedies import remedies_for

_WHAT = {
    "relay": "an open mail relay",
    "proxy": "an open proxy",
}
_WHY = {
    "relay": (
        "An open mail relay passes mail from anyone to anyone. Spammers find such servers "
        "within hours and send their mail through them, so that it appears to come from "
        "you: your address ends up on blocklists and your own mail stops being delivered."
    ),
    "proxy": (
        "An open proxy lets anyone on the Internet make connections that appear to come "
        "from your address. Spammers use open proxies to send mail to any mail server, and "
        "others use them to hide attacks and fraud; the complaints come to you."
    ),
}


def _printable(text: str) -> str:
    return "".join(c if c.isprintable() else "?" for c in str(text))


def hosts_with_findings(found: list[dict]) -> list[str]:
    """Every host with something open, in address order."""
    return sorted({r["host"] for r in found if r.get("status") == "open"}, key=_address_order)


def _address_order(host: str) -> tuple:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return (9, 0, host)
    return (address.version, int(address), "")


def format_host_report(host: str, found: list[dict], *, markdown: bool = False) -> str:
    """The report for one host, from every record about it."""
    mine = [r for r in found if r["host"] == host]
    opened = [r for r in mine if r.get("status") == "open"]
    h1, h2, code = ("# ", "## ", "    ") if markdown else ("", "", "    ")
    out = [f"{h1}Security check of {host}", ""]
    if not opened:
        tested = ", ".join(f"{r['port']}/{r['kind']}" for r in mine) or "nothing"
        out.append(f"Nothing open was found on {host} (tested: {tested}).")
        return "\n".join(out) + "\n"
    first = sorted({r.get("time", "") for r in opened})[0]
    out += [
        f"On {first} (UTC) we tested {host} from our network, as we do for the addresses "
        "we provide, and found:",
        "",
    ]
    for r in opened:
        proven = " (proven: our test message came back to us through it)" if r.get("proven") else ""
        out.append(f"- port {r['port']}: {_WHAT[r['kind']]}{proven}"
                   + (f", run by {r['software']}" if r.get("software") else ""))
    for kind in ("relay", "proxy"):
        if any(r["kind"] == kind for r in opened):
            out += ["", _WHY[kind]]
    for r in opened:
        out += ["", f"{h2}Port {r['port']}: {_WHAT[r['kind']]}", ""]
        out += _evidence(r, code)
        out += ["", "How to close it:" if not markdown else "**How to close it:**", ""]
        for software, advice in remedies_for(r["kind"], r.get("software", "")):
            out.append(f"- {software}: {advice}")
    out += [
        "",
        "Please close it within a few days and tell us when you have; we will test again. "
        "If you need help, reply to this message.",
    ]
    return "\n".join(_printable(line) for line in out) + "\n"


def _evidence(record: dict, indent: str) -> list[str]:
    lines = ["What we saw (C: our test, S: your server):"]
    if record["kind"] == "relay" and record.get("greeting"):
        lines.append(f"{indent}S: {record['greeting']}")
    shown = 0
    for finding in record.get("findings", []):
        if "evidence" not in finding or shown >= 3:
            continue
        shown += 1
        lines += ["", f"Test: {finding['test']}"]
        lines += [f"{indent}{line}" for line in finding["evidence"][:12]]
        if finding.get("arrived_from"):
            lines.append(f"Our own server then received the connection from "
                          f"{finding['arrived_from']}:")
            lines += [f"{indent}{line}" for line in finding.get("listener_saw", [])[:8]]
    for proof in record.get("proofs") or []:
        if proof.get("arrived_from"):
            lines += ["", f"Proof ({proof['test']}): the test message {proof['token']} was "
                      f"delivered to our own server by {proof['arrived_from']}:"]
            lines += [f"{indent}{line}" for line in proof["evidence"][:8]]
    hidden = sum(1 for f in record.get("findings", []) if "evidence" in f) - shown
    if hidden > 0:
        lines += ["", f"({hidden} more tests found the same; the full record is kept.)"]
    return lines
