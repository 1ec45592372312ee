"""Telling people: the account holder and the ISP's abuse desk, once per interval.

When an account is suspended, or its mail is held or refused for content, the
handler makes an :class:`Incident` and hands it to :meth:`Notifier.submit` (which
returns at once; the sending runs beside the session).  The notifier

1. asks the shared store whether this account already had a notice of this kind
   within ``notify.interval``: one ``Store.charge`` with ``limit=1`` over that window,
   which is atomic across every worker process and gateway sharing the store, so a
   spam run of thousands of messages makes one notice, not thousands (if the store
   cannot be reached, a per-process memory stands in, and says so in the log);
2. composes the notices (:func:`compose_notices`, pure): a plain-language message to
   the account's own address (what happened, what to do), and a factual one to
   the abuse desk (login, customer, evidence, the commands to act);
3. lets ``sign`` (the DKIM signer) turn each :class:`Notice` into a signed one;
4. sends each through the outbound downstream as its own transaction: not through
   the SMTP handler, so notices are never counted against the customer's quota;
5. POSTs the incident as JSON to ``notify.webhook_url`` when one is set.

Notices use ``Auto-Submitted: auto-generated`` (RFC 3834 §5) so that well-behaved
auto-responders do not answer them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime, make_msgid
from typing import Any

import aiohttp

from gateway.config.content import NotifySettings
from gateway.downstream.base import Downstream
from gateway.store.base import Charge, Store, StoreUnavailable

log = logging.getLogger("portcullis.notify")


@dataclass(frozen=True)
class Incident:
    kind: str  # "suspended" | "held" | "rejected"
    login: str
    at: float
    # Where the account holder reads mail; None when the login is not an address.
    account_address: str | None = None
    customer: str | None = None
    # One plain sentence: "our content filter classified a message as spam".
    reason: str = ""
    # The transaction id or the held message's id, for support to find it.
    reference: str | None = None
    evidence: Mapping[str, Any] = field(default_factory=dict)
    direction: str = "outbound"
    # A signed, expiring link to the account holder's held mail (ops/held_page.py).
    link: str | None = None


# How each path to a suspension reads to the account holder (Suspension.reason is
# the rule's own words, for the abuse desk's evidence).
_SUSPENDED_BECAUSE = {
    "operator": "our abuse desk stopped it from sending",
    "complaint": "recipients reported mail from it as spam",
    "recipients refused downstream": "it sent to many addresses that do not exist",
}


def suspension_incident(login: str, customer: str | None, reason: str, evidence: Mapping[str, Any],
                        at: float, reference: str | None, by: str | None = None) -> Incident:
    """A suspension by any path (the end of DATA, RCPT, a dead-address run, a
    complaint, an operator) as the incident its notices and webhook carry."""
    if by is not None:
        plain = _SUSPENDED_BECAUSE["operator"]
    else:
        plain = next((v for k, v in _SUSPENDED_BECAUSE.items() if k in reason),
                     "it sent far more mail than usual or than its limits allow")
    return Incident("suspended", login, at, account_address=login if "@" in login else None,
                    customer=customer, reason=plain, reference=reference,
                    evidence={"reason": reason, **dict(evidence), **({"by": by} if by else {})})


@dataclass(frozen=True)
class Notice:
    """One message to send: sign its bytes, then relay with this envelope."""

    audience: str  # "account" | "abuse"
    sender: str
    recipients: tuple[str, ...]
    message: bytes


@dataclass(frozen=True)
class NotifyOutcome:
    sent: bool  # False: suppressed by the interval, or not configured
    notices: tuple[str, ...] = ()  # audiences whose notice the downstream accepted
    webhook: int | None = None  # HTTP status, when posted
    detail: str = ""


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M UTC")


_ACCOUNT_TEXT = {
    "held": (
        "A message sent from your account was held for review",
        "A message sent from your account {login} at {when} was not delivered yet:\n"
        "{reason}. It is held, and our staff will review it.\n\n"
        "If you sent it, you do not need to do anything: it is delivered if the review\n"
        "finds it is not spam.\n\n"
        "If you did not send it, someone else may be using your account. Please change\n"
        "your password now, check your computers and phones for malware, and contact\n"
        "our support, quoting the reference below.",
    ),
    "rejected": (
        "A message sent from your account was refused as spam",
        "A message sent from your account {login} at {when} was refused and not\n"
        "delivered: {reason}.\n\n"
        "If you sent it, please remove anything that looks like advertising or unusual\n"
        "links and try again, or contact our support, quoting the reference below.\n\n"
        "If you did not send it, someone else may be using your account. Please change\n"
        "your password now, check your computers and phones for malware, and contact\n"
        "our support.",
    ),
    "suspended": (
        "Your account can no longer send mail",
        "Your account {login} was stopped from sending mail at {when}:\n"
        "{reason}.\n\n"
        "This usually means that someone else is using your password to send spam.\n"
        "Please change your password now, check your computers and phones for malware,\n"
        "and contact our support, quoting the reference below, to have sending switched\n"
        "back on. You can still receive mail as usual.",
    ),
}

_DEFAULT_REASON = {
    "held": "our content filter found it suspicious",
    "rejected": "our content filter classified it as spam",
    "suspended": "it sent far more mail than usual",
}


def _message(sender: str, to: str, subject: str, body: str, hostname: str, now: float,
             kind: str) -> bytes:
    msg = EmailMessage(policy=SMTP)  # CRLF line ends, as the downstream expects
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = subject
    msg["Date"] = format_datetime(datetime.fromtimestamp(now, UTC))
    msg["Message-ID"] = make_msgid("notice", domain=hostname)
    msg["Auto-Submitted"] = "auto-generated"  # RFC 3834 §5: no auto-replies, please
    msg["X-Portcullis-Notice"] = kind
    msg.set_content(body, charset="utf-8")
    return msg.as_bytes()


def compose_notices(incident: Incident, settings: NotifySettings, hostname: str, now: float) -> list[Notice]:
    """The notices for one incident, as bytes and envelope (pure: no I/O, no clock)."""
    sender = settings.sender or f"postmaster@{hostname}"
    reason = incident.reason or _DEFAULT_REASON.get(incident.kind, incident.kind)
    reference = incident.reference or "-"
    notices = []
    if settings.notify_account and incident.account_address and incident.kind in _ACCOUNT_TEXT:
        subject, text = _ACCOUNT_TEXT[incident.kind]
        body = text.format(login=incident.login, when=_when(incident.at), reason=reason)
        if incident.link:
            body += f"\n\nWhat is held from your account, and why:\n{incident.link}"
        body += f"\n\nReference: {reference}\n\n-- \nThe mail service of {hostname}\n"
        notices.append(Notice("account", sender, (incident.account_address,),
                              _message(sender, incident.account_address, subject, body,
                                       hostname, now, incident.kind)))
    if settings.abuse_address:
        lines = [
            f"Incident:  {incident.kind}",
            f"Login:     {incident.login}",
            f"Customer:  {incident.customer or '-'}",
            f"Direction: {incident.direction}",
            f"At:        {_when(incident.at)}",
            f"Reason:    {reason}",
            f"Reference: {reference}",
            f"Gateway:   {hostname}",
            "",
            "Evidence:",
            *(f"  {k}: {json.dumps(v) if not isinstance(v, str) else v}"
              for k, v in sorted(incident.evidence.items())),
            "",
            f"Further incidents of this kind for this login are not reported for "
            f"{settings.interval / 60:g} minutes.",
        ]
        if incident.kind == "held" and incident.reference:
            lines += ["", f"Review:  portcullis held show {incident.reference}",
                      f"Release: portcullis held release {incident.reference}"]
        if incident.kind == "suspended":
            lines += ["", f"Lift:    portcullis accounts unsuspend {incident.login}",
                      f"Lift and release its held mail: portcullis accounts unsuspend "
                      f"{incident.login} --release-held"]
        subject = f"[portcullis] {incident.kind}: {incident.login}"
        notices.append(Notice("abuse", sender, (settings.abuse_address,),
                              _message(sender, settings.abuse_address, subject,
                                       "\n".join(lines) + "\n", hostname, now, incident.kind)))
    return notices


def webhook_payload(incident: Incident, hostname: str) -> dict[str, Any]:
    return {
        "event": incident.kind,
        "login": incident.login,
        "customer": incident.customer,
        "direction": incident.direction,
        "at": datetime.fromtimestamp(incident.at, UTC).isoformat(),
        "reason": incident.reason or _DEFAULT_REASON.get(incident.kind, incident.kind),
        "reference": incident.reference,
        "evidence": dict(incident.evidence),
        "gateway": hostname,
    }


Signer = Callable[[Notice], Awaitable[Notice]]


class Notifier:
    def __init__(self, settings: NotifySettings, downstream: Downstream, store: Store,
                 hostname: str, sign: Signer | None = None,
                 link_for: Callable[[str, float], str] | None = None):
        self.settings = settings
        self.downstream = downstream
        self.store = store
        self.hostname = hostname
        self.sign = sign
        # The account holder's link to their held mail, when the page is on.
        self.link_for = link_for
        self._tasks: set[asyncio.Task[NotifyOutcome]] = set()
        self._fallback: dict[str, float] = {}  # key → last notice, when the store is down
        self._session: aiohttp.ClientSession | None = None

    def submit(self, incident: Incident, now: float | None = None) -> None:
        """For the SMTP handler: notify in the background, never delaying the reply."""
        if incident.kind not in self.settings.events:
            return
        task = asyncio.get_running_loop().create_task(
            self.notify(incident, time.time() if now is None else now))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _first_in_interval(self, key: str, now: float) -> bool:
        window = self.settings.interval
        try:
            result = await self.store.charge(
                [Charge(key=key, window=window, limit=1, name="notices_per_interval")], now)
            return result.accepted
        except StoreUnavailable as exc:
            last = self._fallback.get(key)
            log.warning("notify: store unavailable (%s): limiting notices per process instead", exc)
            if last is not None and now - last < window:
                return False
            self._fallback[key] = now
            return True

    async def notify(self, incident: Incident, now: float) -> NotifyOutcome:
        if incident.kind not in self.settings.events:
            return NotifyOutcome(False, detail="not a notified event")
        key = f"notice:{incident.kind}:{incident.login.lower()}"
        if not await self._first_in_interval(key, now):
            log.debug("notify: %s for %s suppressed (interval)", incident.kind, incident.login)
            return NotifyOutcome(False, detail="already notified within the interval")
        if self.link_for is not None and incident.account_address:
            incident = replace(incident, link=self.link_for(incident.login, now))
        sent = []
        for notice in compose_notices(incident, self.settings, self.hostname, now):
            if await self._send(notice, incident):
                sent.append(notice.audience)
        status = await self._post(incident) if self.settings.webhook_url else None
        return NotifyOutcome(True, tuple(sent), status)

    async def _send(self, notice: Notice, incident: Incident) -> bool:
        try:
            if self.sign is not None:
                notice = await self.sign(notice)
            tx = self.downstream.begin(notice.sender, [])
            accepted = 0
            for rcpt in notice.recipients:
                reply = await tx.rcpt(rcpt, [])
                accepted += reply.is_success
                if not reply.is_success:
                    log.error("notify: %s notice for %s: <%s> refused: %s",
                              notice.audience, incident.login, rcpt, reply)
            if not accepted:
                await tx.abort()
                return False
            reply = await tx.data(notice.message)
        except Exception as exc:  # a notice must never take the gateway down
            log.error("notify: %s notice for %s not sent: %s: %s",
                      notice.audience, incident.login, type(exc).__name__, exc)
            return False
        if not reply.is_success:
            log.error("notify: %s notice for %s refused at DATA: %s", notice.audience, incident.login, reply)
            return False
        log.info("notify: %s notice sent to %s about %s (%s, ref %s)", notice.audience,
                 ", ".join(notice.recipients), incident.login, incident.kind, incident.reference or "-")
        return True

    async def _post(self, incident: Incident) -> int | None:
        url = self.settings.webhook_url
        assert url is not None
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession()
        try:
            async with asyncio.timeout(self.settings.webhook_timeout):
                async with self._session.post(url, json=webhook_payload(incident, self.hostname)) as resp:
                    await resp.read()
                    status = resp.status
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            log.error("notify: webhook %s for %s failed: %s: %s", url, incident.login,
                      type(exc).__name__, exc)
            return None
        if status >= 300:
            log.error("notify: webhook %s for %s answered HTTP %d", url, incident.login, status)
        return status

    async def aclose(self) -> None:
        """Let notices in flight finish (at shutdown), then close the HTTP session."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
            self._session = None
