"""One audit of one host and port as a plain record: a line of the scan's JSON Lines,
the row of its CSV, the input of the report.  Pure conversions, no I/O.

Only what is open carries its evidence (the transcript); the rest is named with its
verdict, so a line stays a few kilobytes even for the full relay battery.
"""

from __future__ import annotations

from datetime import UTC, datetime

from gateway.audit.proxy import ProxyAudit
from gateway.audit.relay import RelayAudit
from gateway.audit.remedies import guess_software

OPEN = "open"
CLOSED = "closed"
NO_ANSWER = "no answer"
ERROR = "error"


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def relay_record(audit: RelayAudit, when: str) -> dict:
    greeting = str(audit.greeting) if audit.greeting else ""
    findings = []
    for r in audit.results:
        finding: dict = {"test": r.probe.name, "verdict": r.verdict}
        if r.is_open:
            finding["evidence"] = list(r.evidence())
        findings.append(finding)
    proofs = [
        {"test": p.probe.name, "verdict": p.verdict, "token": p.token, "detail": p.detail,
         "evidence": list(p.arrival.transcript) if p.arrival else [],
         "arrived_from": p.arrival.peer if p.arrival else ""}
        for p in audit.proofs
    ]
    status = OPEN if audit.is_open else ERROR if audit.error else CLOSED
    return {
        "host": audit.host, "port": audit.port, "kind": "relay", "status": status, "time": when,
        "software": guess_software([greeting]), "greeting": greeting, "tls": audit.tls,
        "open": [r.probe.name for r in audit.open_results],
        "proven": [p.probe.name for p in audit.proven] if audit.proofs else None,
        "findings": findings, "proofs": proofs, "notes": list(audit.notes), "error": audit.error,
    }


def proxy_record(audit: ProxyAudit, when: str) -> dict:
    answers = [line for r in audit.results for line in r.transcript if line.startswith("S:")]
    findings = []
    for r in audit.results:
        finding: dict = {"test": r.method, "verdict": r.verdict, "answer": r.proxy_said or r.error}
        if r.arrival is not None:
            finding["evidence"] = list(r.transcript)
            finding["arrived_from"] = r.arrival.peer
            finding["listener_saw"] = list(r.arrival.transcript)
        findings.append(finding)
    status = OPEN if audit.is_open else ERROR if audit.error else CLOSED
    return {
        "host": audit.host, "port": audit.port, "kind": "proxy", "status": status, "time": when,
        "software": guess_software(answers), "listener": audit.listener,
        "open": [r.method for r in audit.open_results], "proven": None,
        "findings": findings, "error": audit.error,
    }


def silent_record(host: str, port: int, kind: str, reason: str, when: str) -> dict:
    """Nothing listens (or nothing answered in time): no audit was run."""
    return {"host": host, "port": port, "kind": kind, "status": NO_ANSWER, "time": when,
            "software": "", "open": [], "proven": None, "findings": [], "error": reason}
