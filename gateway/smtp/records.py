"""What each connection and each transaction leaves on record: exactly one log line.

A transaction begins at MAIL (a refused MAIL is a transaction that ended at stage
``mail``) and ends with the reply to DATA, a refused MAIL, RSET or a new HELO/EHLO,
or with the connection (disconnect, timeout, shutdown).  Its line names the rule
that decided a refusal and the facts that rule used, and counts the recipients
accepted and refused on the way (a refused RCPT does not end the transaction).

A connection's line is written when it closes: how it ended, what it did, how long
it took.  docs/operations.md lists every field; with ``--log-format json`` each
field is a key of the line's JSON object (``record.fields``).

A transaction also keeps its trail: each step that decided something appends a
:class:`TrailStep` (what it decided, the rule, its facts, the reply).  A transaction
that was refused, refused a recipient, was held or suspended its account, and a
connection that was refused something, is written to the decision journal as well
(gateway/store/journal.py, in the background), where ``portcullis explain`` finds
it by its id from any gateway sharing the store.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Protocol

txlog = logging.getLogger("portcullis.transaction")
connlog = logging.getLogger("portcullis.connection")

# "550-5.7.1 text" / "250 OK" → code, enhanced code (or None).
_STATUS = re.compile(r"^(\d{3})[ -](?:([245]\.\d{1,3}\.\d{1,3})\b)?")
# A log line is for people and greps: keep a reply text or a fact to this length.
_MAX_TEXT = 200
# A text value with any of these is quoted, so the line still splits into name=value.
_QUOTED = re.compile(r"[\s\"'=]")
# Refusals the SMTP engine writes itself, before any rule is asked.
PROTOCOL_RULE = "smtp.protocol"
# How a transaction ends when we said 421 and closed (gateway/smtp/protocol.py).
_GOODBYES = frozenset({"timeout", "data_timeout", "shutdown", "too_many_errors"})


def status_result(status: str) -> str:
    """``550 5.7.1`` for a reply as written on the wire; ``-`` for none."""
    m = _STATUS.match(status)
    if m is None:
        return "-"
    return f"{m.group(1)} {m.group(2)}" if m.group(2) else m.group(1)


def status_text(status: str) -> str:
    """The text of a reply's first line, without code and enhanced code."""
    first = status.split("\r\n", 1)[0]
    m = _STATUS.match(first)
    return (first[m.end():] if m else first).strip()[:_MAX_TEXT]


def is_refusal(status: str) -> bool:
    return status[:1] in ("4", "5")


class JournalSink(Protocol):
    """Where decisions go besides the log (gateway/store/journal.py: Journal)."""

    def submit(self, kind: str, id: str, cid: str, record: Mapping[str, object]) -> None: ...


# A step's outcome that puts its transaction in the journal.
_JOURNALLED = frozenset({"refused", "held", "suspended"})


@dataclass(slots=True)
class TrailStep:
    """One decision on a transaction's trail."""

    stage: str  # mail | rcpt | data
    outcome: str  # refused | held | suspended, or what a step that let it pass says
    rule: str = ""
    facts: dict[str, object] = field(default_factory=dict)
    recipient: str = ""  # a RCPT step: the address as the client gave it
    reply: str = ""  # the reply this step's decision was answered with, first line


@dataclass(slots=True)
class TransactionRecord:
    """One transaction, from MAIL to the reply that ends it."""

    txid: str
    started: float = field(default_factory=time.monotonic)
    stage: str = "mail"  # mail | rcpt | data: how far it got
    sender: str | None = None  # None: MAIL was refused before the sender was read
    rcpts: int = 0
    refused_rcpts: int = 0
    rcpt_rules: list[str] = field(default_factory=list)
    # The rule that decided the transaction's outcome, and the facts it used.
    rule: str = ""
    facts: dict[str, object] = field(default_factory=dict)
    checks: str = ""  # the inbound checks' and the scanner's summary
    size: int = 0
    # What was decided on the way, in order (the journal's "steps").
    trail: list[TrailStep] = field(default_factory=list)

    def decide(self, rule: str, facts: Iterable[tuple[str, object]] | Mapping[str, object] = ()) -> None:
        """The transaction is refused by ``rule``.  A refusal that names no rule
        keeps the one already decided (the quota check before the reply)."""
        if not rule and self.rule:
            return
        self.rule = rule
        self.facts = dict(facts)
        self.trail.append(TrailStep(self.stage, "refused", rule, dict(self.facts)))

    def recipient_refused(self, rule: str,
                          facts: Iterable[tuple[str, object]] | Mapping[str, object] = ()) -> None:
        self.refused_rcpts += 1
        if rule not in self.rcpt_rules:
            self.rcpt_rules.append(rule)
        self.trail.append(TrailStep("rcpt", "refused", rule, dict(facts)))

    def recipient_answered(self, recipient: str, status: str) -> None:
        """The reply to a refused RCPT, on its step (the protocol knows both)."""
        if self.trail and self.trail[-1].stage == "rcpt" and not self.trail[-1].reply:
            self.trail[-1].recipient = _rcpt_address(recipient)
            self.trail[-1].reply = status.split("\r\n", 1)[0][:_MAX_TEXT]

    def held(self, rule: str, facts: Mapping[str, object]) -> None:
        """Kept for review instead of forwarded (the client hears 250)."""
        self.rule = rule
        self.facts = dict(facts)
        self.trail.append(TrailStep(self.stage, "held", rule, dict(facts)))

    def suspended(self, facts: Mapping[str, object]) -> None:
        """This transaction brought its account to a suspension."""
        self.trail.append(TrailStep(self.stage, "suspended", "compromise.suspended", dict(facts)))

    def steps_passed(self, names: list[str], deciding: str, at: int) -> None:
        """The pipeline steps a message passed before ``deciding`` stopped it, put on
        the trail where that step's own entries begin (``at``)."""
        self.trail.insert(at, TrailStep(self.stage, "passed", "",
                                        {"steps": names, "decided_by": deciding}))

    def step(self, outcome: str, rule: str = "", facts: Mapping[str, object] = ()) -> None:
        """Any other step's decision on the trail (a pipeline step that passed)."""
        self.trail.append(TrailStep(self.stage, outcome, rule, dict(facts)))

    @property
    def is_journalled(self) -> bool:
        return any(s.outcome in _JOURNALLED for s in self.trail)


@dataclass(slots=True)
class ConnectionRecord:
    """One connection, from accept to close (STARTTLS does not start a new one)."""

    cid: str
    listener: str
    started: float = field(default_factory=time.monotonic)
    tls: str = "none"  # "TLSv1.3/TLS_AES_256_GCM_SHA384" once encrypted
    login: str = ""
    transactions: int = 0
    errors: int = 0  # 5xx replies sent
    tempfails: int = 0  # 4xx replies sent
    auth_failures: int = 0  # 535 and lockout 454 answers to AUTH
    auth_rule: str = ""  # the rule behind the last refused AUTH
    screening: str = ""  # MX screening: a refusal's rule, or the score and listings


def write_transaction(record: TransactionRecord, *, listener: str, client: str, login: str,
                      status: str, ended: str, journal: JournalSink | None = None,
                      ended_at: float | None = None) -> None:
    """The transaction's one line.  ``status`` is its last reply (empty: none was sent,
    the connection went first); ``ended`` says what ended it, ``ended_at`` when
    (time.monotonic(); now by default: a line written after the quota settle
    still says how long its client waited).  A refusal, a hold or a suspension
    also goes to ``journal``."""
    refused = is_refusal(status)
    logged = txlog.isEnabledFor(logging.INFO)
    journalled = journal is not None and (refused or record.is_journalled)
    if not (logged or journalled):  # an accepted message with INFO off: nothing to make
        return
    fields: dict[str, object] = {
        "txid": record.txid, "listener": listener, "client": client, "login": login or "-",
        "from": record.sender if record.sender is not None else "-",
        "stage": record.stage, "rcpts": record.rcpts, "refused_rcpts": record.refused_rcpts,
        "rcpt_rules": ",".join(record.rcpt_rules), "size": record.size,
        "checks": record.checks, "result": status_result(status) if status else "-",
        "rule": record.rule if refused else "", "ended": ended,
        "ms": int(((ended_at or time.monotonic()) - record.started) * 1000),
        "reply": status_text(status) if status else "",
    }
    if refused and not record.rule:
        # Cut by our own goodbye (a timeout, shutdown): that is the rule; else the
        # SMTP engine refused it before any rule was asked.
        fields["rule"] = ended if ended in _GOODBYES else PROTOCOL_RULE
    if logged:
        line = fields
        if refused and record.facts:  # the journal keeps the facts apart: the line gets a copy
            line = dict(fields)
            _add_facts(line, record.facts)
        txlog.info(_Line(line), extra={"fields": line})
    if journalled:
        assert journal is not None
        _journal_transaction(journal, record, fields, status)


def _journal_transaction(journal: JournalSink, record: TransactionRecord,
                         fields: dict[str, object], status: str) -> None:
    entry = dict(fields)
    entry["rule"] = fields["rule"] or record.rule  # a hold's rule too
    entry["facts"] = _plain(record.facts)
    entry["status"] = status.split("\r\n", 1)[0][:_MAX_TEXT]
    trail = [asdict(s) for s in record.trail]
    for s in trail:
        s["facts"] = _plain(s["facts"])
    if trail and is_refusal(status) and not trail[-1]["reply"] and trail[-1]["outcome"] == "refused":
        trail[-1]["reply"] = entry["status"]
    entry["steps"] = trail
    journal.submit("transaction", record.txid, record.txid.partition(".")[0], entry)


def _rcpt_address(arg: str) -> str:
    """``TO:<bob@example.com> NOTIFY=NEVER`` → ``<bob@example.com>``."""
    text = arg.strip()
    if text[:3].upper() == "TO:":
        text = text[3:].strip()
    if text.startswith("<") and ">" in text:
        text = text[: text.index(">") + 1]
    return text[:_MAX_TEXT]


def _plain(facts: Mapping[str, object]) -> dict[str, object]:
    """Facts as JSON can hold them."""
    out: dict[str, object] = {}
    for name, value in facts.items():
        if isinstance(value, (list, tuple, set, frozenset)):
            value = [v if isinstance(v, (int, float, bool, str)) else str(v) for v in value]
        elif not isinstance(value, (int, float, bool, str)) and value is not None:
            value = str(value)
        out[str(name)] = value
    return out


# How a connection ends when we refused it something as a whole.
_REFUSED_ENDS = frozenset({"refused_limit", "refused_proxy", "too_many_errors"})


def write_connection(record: ConnectionRecord, *, client: str, ended: str,
                     journal: JournalSink | None = None) -> None:
    # Refused something (an AUTH, a command, the connection itself): journalled, so
    # ``explain CID`` can say what.  A clean connection costs no store write.
    journalled = journal is not None and bool(record.errors or record.tempfails or record.auth_rule
                                              or ended in _REFUSED_ENDS)
    logged = connlog.isEnabledFor(logging.INFO)
    if not (logged or journalled):
        return
    fields: dict[str, object] = {
        "cid": record.cid, "listener": record.listener, "client": client, "tls": record.tls,
        "login": record.login or "-", "ended": ended, "transactions": record.transactions,
        "errors": record.errors, "tempfails": record.tempfails,
        "auth_failures": record.auth_failures, "auth_rule": record.auth_rule,
        "screening": record.screening,
        "ms": int((time.monotonic() - record.started) * 1000),
    }
    if logged:
        connlog.info(_Line(fields), extra={"fields": fields})
    if journalled:
        assert journal is not None
        journal.submit("connection", record.cid, record.cid, dict(fields))


def _add_facts(fields: dict[str, object], facts: Mapping[str, object]) -> None:
    """A rule's facts become fields of their own; one whose name a fixed field has
    is kept as ``fact_<name>`` rather than overwriting it."""
    for name, value in facts.items():
        key = name if name not in fields else f"fact_{name}"
        if isinstance(value, (list, tuple, set, frozenset)):
            value = ",".join(str(v) for v in value)
        elif not isinstance(value, (int, float, bool)) and value is not None:
            value = str(value)[:_MAX_TEXT]
        fields[key] = value


class _Line:
    """A log line's text, made when it is written: by the log's writer thread
    (gateway/log_output.py), not by the event loop.  Its fields are not changed
    after they are logged."""

    __slots__ = ("fields",)

    def __init__(self, fields: Mapping[str, object]) -> None:
        self.fields = fields

    def __str__(self) -> str:
        return _text(self.fields)


def _text(fields: Mapping[str, object]) -> str:
    """``name=value`` pairs, empty fields left out; a value with spaces or quotes is
    quoted (``reply`` always is: it is someone's words)."""
    parts = []
    for name, value in fields.items():
        if name == "from":  # the null sender is <>, not an empty field
            parts.append(f"from=<{value}>" if value != "-" else "from=-")
        elif value == "" or value is None:
            continue
        elif name == "checks":  # name=value pairs of their own: inline
            parts.append(str(value))
        elif name == "result" or isinstance(value, (int, float)):  # "250 2.0.0"
            parts.append(f"{name}={value}")
        elif name == "reply" or _QUOTED.search(str(value)):
            parts.append(f"{name}={str(value)!r}")
        else:
            parts.append(f"{name}={value}")
    return " ".join(parts)
