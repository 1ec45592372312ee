"""Held mail: messages kept for review instead of forwarded, on disk, durably.

Any verdict can say ``hold`` (content scan, quota, suspension, inbound policy).  The
handler then calls :meth:`HeldStore.hold` with the envelope, the verdict and its
evidence, and the exact bytes that would have gone downstream (after our stamps and
DKIM signature), and answers 250 only after it returns: by then the message is in a
file that was written to ``tmp/``, fsynced, renamed into ``new/``, and whose
directory was fsynced (the Maildir protocol, as gateway/downstream/maildir.py).

One file per message holds everything, so the single rename makes it appear whole::

    PORTCULLIS-HELD 1\\n
    {"id": ..., "sender": ..., "recipients": [...], "evidence": {...}, ...}\\n
    <the message bytes, exactly as they would have been sent>

``release`` claims the file by renaming it into ``releasing/`` (so two operators, or
two gateways expiring at once, never send it twice), relays it through the given
downstream with the same envelope and bytes, and only then removes it; a failure
puts it back.  ``expire`` releases or deletes what is older than the configured age,
and logs each decision: held mail never expires silently.

Several gateways share held mail by sharing the directory (NFS or similar): all the
store relies on is an atomic rename within one file system.  A Redis-backed store
would fit behind the same methods (record in a hash, bytes in a string, the claim as
``RENAME``/``SET NX``) for sites without a shared file system; see docs/content.md.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from gateway.downstream.base import Downstream
from gateway.message import Buffer, message_parts, write_parts

log = logging.getLogger("portcullis.held")

MAGIC = b"PORTCULLIS-HELD 1\n"
_ID = re.compile(r"^\d{14}-[0-9a-f]{10}$")


class HeldNotFound(KeyError):
    """No held message with that id."""


class HeldBusy(Exception):
    """The message is being released (by another command or gateway), or a release was
    interrupted; ``release(..., force=True)`` takes it over."""


@dataclass(frozen=True)
class HeldMessage:
    id: str
    held_at: float
    direction: str  # "outbound" | "inbound"
    sender: str
    recipients: tuple[str, ...]
    mail_options: tuple[str, ...]
    rcpt_options: tuple[tuple[str, ...], ...]
    login: str | None
    txid: str | None
    # Which rule held it ("content", "quota", "suspended", "inbound") and what the client heard.
    reason: str
    reply: str
    evidence: Mapping[str, Any] = field(default_factory=dict)
    size: int = 0
    # "held", or "releasing" while a release runs (or after one was interrupted).
    state: str = "held"

    def record(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("state")
        return data

    @classmethod
    def from_record(cls, data: Mapping[str, Any], state: str) -> HeldMessage:
        return cls(
            id=data["id"], held_at=float(data["held_at"]), direction=data["direction"],
            sender=data["sender"], recipients=tuple(data["recipients"]),
            mail_options=tuple(data.get("mail_options", ())),
            rcpt_options=tuple(tuple(o) for o in data.get("rcpt_options", ())),
            login=data.get("login"), txid=data.get("txid"), reason=data.get("reason", ""),
            reply=data.get("reply", ""), evidence=data.get("evidence", {}),
            size=int(data.get("size", 0)), state=state,
        )


@dataclass(frozen=True)
class ReleaseResult:
    id: str
    delivered: tuple[str, ...]
    # Recipients still held, with the downstream's answer (4xx; or every recipient when
    # nothing was delivered: then the message stays held whole).
    deferred: tuple[tuple[str, str], ...]
    # Recipients the downstream refused for good (5xx) while others were delivered:
    # dropped from the held message, and logged.
    refused: tuple[tuple[str, str], ...]
    # The downstream's answer to DATA (None when no recipient was accepted).
    data_reply: str | None
    # The held file is gone (everything delivered or refused for good).
    removed: bool

    @property
    def ok(self) -> bool:
        return bool(self.delivered)


@dataclass(frozen=True)
class ExpiryDecision:
    id: str
    age: float
    action: str  # "released" | "deleted" | "kept"
    detail: str
    # Who got it, when released (held mail is charged to its account then).
    delivered: tuple[str, ...] = ()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def check_held_id(held_id: str) -> str:
    # Ids become file names: nothing but our own format may reach the file system.
    if not _ID.match(held_id):
        raise HeldNotFound(held_id)
    return held_id


class HeldMail:
    """What every hold store does the same way: release (claim, relay, settle) and
    expiry.  A store provides hold, list, get, message, delete, close and the four
    claim primitives below; HeldStore keeps held mail in a directory, PostgresHeldStore
    (gateway/store/held_postgres.py) in a database every gateway reaches."""

    async def hold(
        self,
        *,
        message: bytes | list[Buffer],
        sender: str,
        recipients: Sequence[str],
        direction: str,
        reason: str,
        reply: str,
        now: float,
        evidence: Mapping[str, Any] | None = None,
        login: str | None = None,
        txid: str | None = None,
        mail_options: Sequence[str] = (),
        rcpt_options: Sequence[Sequence[str]] | None = None,
    ) -> HeldMessage:
        """Store the message durably; return only once it would survive a crash."""
        if not recipients:
            raise ValueError("a held message needs at least one recipient")
        # aiosmtpd gives the null sender as "<>" (LIBRARY-NOTES); the downstream wants "".
        sender = "" if sender == "<>" else sender
        parts = message_parts(message)  # our fields and the message, not joined
        stamp = time.strftime("%Y%m%d%H%M%S", time.gmtime(now))
        held = HeldMessage(
            id=f"{stamp}-{secrets.token_hex(5)}", held_at=now, direction=direction,
            sender=sender, recipients=tuple(recipients), mail_options=tuple(mail_options),
            rcpt_options=tuple(tuple(o) for o in (rcpt_options or [()] * len(recipients))),
            login=login, txid=txid, reason=reason, reply=reply,
            evidence=dict(evidence or {}), size=sum(map(len, parts)),
        )
        if len(held.rcpt_options) != len(held.recipients):
            raise ValueError("rcpt_options needs one entry per recipient")
        await self._store(held, parts)
        log.info("held %s: %s %s from <%s> to %d recipients (login %s, tx %s): %s",
                 held.id, direction, reason, sender, len(recipients), login or "-", txid or "-", reply)
        return held

    async def _store(self, held: HeldMessage, parts: list[Buffer]) -> None:
        """Keep it durably: return only once it would survive a crash."""
        raise NotImplementedError

    async def list(self) -> list[HeldMessage]:
        raise NotImplementedError

    async def get(self, held_id: str) -> HeldMessage:
        raise NotImplementedError

    async def message(self, held_id: str) -> bytes:
        raise NotImplementedError

    async def delete(self, held_id: str, why: str = "deleted by an operator") -> HeldMessage:
        raise NotImplementedError

    async def close(self) -> None:
        return None

    # --- the claim: at most one release of a message runs at a time, on any gateway ---
    async def _claim_for_release(self, held_id: str, force: bool) -> tuple[HeldMessage, bytes]:
        """Mark it as being released (HeldBusy if it already is, unless ``force``)."""
        raise NotImplementedError

    async def _give_back(self, held: HeldMessage, rest: HeldMessage | None = None,
                         message: bytes = b"") -> None:
        """Held again: whole, or (``rest``) with fewer recipients."""
        raise NotImplementedError

    async def _released(self, held: HeldMessage) -> None:
        """Delivered: gone for good."""
        raise NotImplementedError

    async def _housekeep(self, now: float) -> None:
        return None

    async def release(self, held_id: str, downstream: Downstream, force: bool = False) -> ReleaseResult:
        """Send the held message through ``downstream`` with its original envelope and
        bytes; remove it only once the downstream has taken it."""
        held, message = await self._claim_for_release(held_id, force)
        try:
            result = await self._relay(held, message, downstream)
        except BaseException:
            await self._give_back(held)
            raise
        remaining = tuple(r for r, _ in result.deferred)
        if not result.delivered:
            await self._give_back(held)
        elif remaining:
            options = dict(zip(held.recipients, held.rcpt_options, strict=True))
            rest = replace(held, recipients=remaining, rcpt_options=tuple(options[r] for r in remaining),
                           state="held")
            await self._give_back(held, rest, message)
        else:
            await self._released(held)
        result = replace(result, removed=bool(result.delivered) and not remaining)
        log.info("held %s: release via %s: delivered to %d, deferred %d, refused %d%s; DATA: %s; %s",
                 held_id, downstream.name, len(result.delivered), len(result.deferred),
                 len(result.refused),
                 "".join(f" [{r}: {reply}]" for r, reply in result.refused + result.deferred),
                 result.data_reply or "-", "removed" if result.removed else "still held")
        return result

    @staticmethod
    async def _relay(held: HeldMessage, message: bytes, downstream: Downstream) -> ReleaseResult:
        tx = downstream.begin(held.sender, list(held.mail_options))
        delivered: list[str] = []
        deferred: list[tuple[str, str]] = []
        refused: list[tuple[str, str]] = []
        for rcpt, options in zip(held.recipients, held.rcpt_options, strict=True):
            reply = await tx.rcpt(rcpt, list(options))
            if reply.is_success:
                delivered.append(rcpt)
            elif reply.is_temporary:
                deferred.append((rcpt, str(reply)))
            else:
                refused.append((rcpt, str(reply)))
        if not delivered:
            await tx.abort()
            # Nothing was sent: every recipient stays held, whatever the reason.
            return ReleaseResult(held.id, (), tuple(deferred + refused), (), None, False)
        data = await tx.data(message)
        if not data.is_success:
            await tx.abort()
            # DATA refused: nothing was delivered, so the message stays held whole.
            everyone = tuple((r, str(data)) for r in delivered) + tuple(deferred + refused)
            return ReleaseResult(held.id, (), everyone, (), str(data), False)
        return ReleaseResult(held.id, tuple(delivered), tuple(deferred), tuple(refused), str(data), False)

    # --- expiry --------------------------------------------------------------
    async def expire(
        self,
        now: float,
        max_age: float,
        at_max_age: str,
        downstreams: Mapping[str, Downstream | None],
    ) -> list[ExpiryDecision]:
        """Release or delete (``at_max_age``) every held message older than ``max_age``,
        logging each; a release that fails keeps the message for the next run."""
        await self._housekeep(now)
        decisions = []
        for held in await self.list():
            age = now - held.held_at
            if held.state != "held" or age < max_age:
                continue
            decision = await self._expire_one(held, age, at_max_age, downstreams)
            decisions.append(decision)
            level = logging.ERROR if decision.action == "kept" else logging.WARNING
            log.log(level, "held %s: expired after %.1f days (hold.at_max_age: %s): %s: %s",
                    held.id, age / 86400, at_max_age, decision.action, decision.detail)
        return decisions

    async def _expire_one(self, held: HeldMessage, age: float, at_max_age: str,
                          downstreams: Mapping[str, Downstream | None]) -> ExpiryDecision:
        try:
            if at_max_age == "delete":
                await self.delete(held.id, why="deleted at max age")
                return ExpiryDecision(held.id, age, "deleted", f"from <{held.sender}>")
            downstream = downstreams.get(held.direction)
            if downstream is None:
                return ExpiryDecision(held.id, age, "kept", f"no {held.direction} downstream to release to")
            result = await self.release(held.id, downstream)
        except (HeldNotFound, HeldBusy):
            return ExpiryDecision(held.id, age, "kept", "released or deleted meanwhile")
        except OSError as exc:
            return ExpiryDecision(held.id, age, "kept", f"{type(exc).__name__}: {exc}")
        if result.ok:
            return ExpiryDecision(held.id, age, "released",
                                  f"delivered to {len(result.delivered)}, DATA: {result.data_reply}",
                                  result.delivered)
        return ExpiryDecision(held.id, age, "kept",
                              "downstream refused: " + "; ".join(r for _, r in result.deferred[:1]
                                                                 + result.refused[:1]))


class HeldStore(HeldMail):
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._new = self.path / "new"
        self._tmp = self.path / "tmp"
        self._releasing = self.path / "releasing"
        for d in (self.path, self._new, self._tmp, self._releasing):
            d.mkdir(mode=0o700, parents=True, exist_ok=True)

    # --- writing -------------------------------------------------------------
    def _write(self, held: HeldMessage, parts: list[Buffer]) -> None:
        # json.dumps escapes newlines, so the record is exactly one line.
        record = MAGIC + json.dumps(held.record(), separators=(",", ":")).encode() + b"\n"
        tmp = self._tmp / f"{held.id}.{os.getpid()}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            write_parts(fd, [record, *parts])
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, self._new / f"{held.id}.held")
        _fsync_dir(self._new)  # the rename itself survives a crash

    # --- reading -------------------------------------------------------------
    @staticmethod
    def _read(path: Path, state: str, with_message: bool) -> tuple[HeldMessage, bytes]:
        with open(path, "rb") as f:
            if f.readline() != MAGIC:
                raise ValueError(f"{path}: not a held message")
            held = HeldMessage.from_record(json.loads(f.readline()), state)
            return held, (f.read() if with_message else b"")

    def _locate(self, held_id: str) -> tuple[Path, str]:
        check_held_id(held_id)
        for directory, state in ((self._new, "held"), (self._releasing, "releasing")):
            path = directory / f"{held_id}.held"
            if path.exists():
                return path, state
        raise HeldNotFound(held_id)

    def _list(self) -> list[HeldMessage]:
        out = []
        for directory, state in ((self._new, "held"), (self._releasing, "releasing")):
            for path in directory.glob("*.held"):
                try:
                    out.append(self._read(path, state, False)[0])
                except FileNotFoundError:
                    continue  # released or deleted while we listed
                except (ValueError, KeyError, OSError) as exc:
                    log.error("held: cannot read %s: %s (left in place)", path, exc)
        return sorted(out, key=lambda h: (h.held_at, h.id))

    async def list(self) -> list[HeldMessage]:
        return await asyncio.to_thread(self._list)

    async def get(self, held_id: str) -> HeldMessage:
        path, state = self._locate(held_id)
        return (await asyncio.to_thread(self._read, path, state, False))[0]

    async def message(self, held_id: str) -> bytes:
        path, state = self._locate(held_id)
        return (await asyncio.to_thread(self._read, path, state, True))[1]

    # --- deleting ------------------------------------------------------------
    async def delete(self, held_id: str, why: str = "deleted by an operator") -> HeldMessage:
        path, state = self._locate(held_id)
        if state == "releasing":
            raise HeldBusy(held_id)
        held = (await asyncio.to_thread(self._read, path, state, False))[0]
        try:
            await asyncio.to_thread(self._unlink, path)
        except FileNotFoundError:
            raise HeldNotFound(held_id) from None
        log.warning("held %s: %s (%s from <%s> to %s)", held_id, why, held.direction,
                    held.sender, ", ".join(held.recipients))
        return held

    def _unlink(self, path: Path) -> None:
        path.unlink()
        _fsync_dir(path.parent)

    async def _store(self, held: HeldMessage, parts: list[Buffer]) -> None:
        await asyncio.to_thread(self._write, held, parts)

    # --- releasing (HeldMail's primitives) -------------------------------------
    async def _claim_for_release(self, held_id: str, force: bool) -> tuple[HeldMessage, bytes]:
        claimed = await asyncio.to_thread(self._claim, held_id, force)
        try:
            return await asyncio.to_thread(self._read, claimed, "releasing", True)
        except BaseException:
            await asyncio.to_thread(self._put_back, claimed)
            raise

    async def _give_back(self, held: HeldMessage, rest: HeldMessage | None = None,
                         message: bytes = b"") -> None:
        await asyncio.to_thread(self._put_back, self._releasing / f"{held.id}.held", rest, message)

    async def _released(self, held: HeldMessage) -> None:
        await asyncio.to_thread(self._unlink, self._releasing / f"{held.id}.held")

    async def _housekeep(self, now: float) -> None:
        await asyncio.to_thread(self._clean_tmp, now)

    def _clean_tmp(self, now: float, older_than: float = 86400.0) -> None:
        # A crash between write and rename leaves a file in tmp/ that no one will ever
        # rename (Maildir's rule: remove what has sat in tmp/ for a day and more).
        for path in self._tmp.iterdir():
            try:
                if now - path.stat().st_mtime > older_than:
                    path.unlink()
                    log.warning("held: removed %s, left half-written by a crash", path)
            except FileNotFoundError:
                continue

    def _claim(self, held_id: str, force: bool) -> Path:
        check_held_id(held_id)
        target = self._releasing / f"{held_id}.held"
        try:
            # Atomic: of two releases at once, one rename wins; the other finds nothing.
            os.rename(self._new / f"{held_id}.held", target)
        except FileNotFoundError:
            if target.exists():
                if force:
                    return target
                raise HeldBusy(held_id) from None
            raise HeldNotFound(held_id) from None
        return target

    def _put_back(self, claimed: Path, held: HeldMessage | None = None, message: bytes = b"") -> None:
        if held is not None:  # fewer recipients than before: write the remainder anew
            self._write(held, [message])
            self._unlink(claimed)
        else:
            os.rename(claimed, self._new / claimed.name)
            _fsync_dir(self._new)
