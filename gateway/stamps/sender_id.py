"""The sender identifier stamped on every submitted message (docs/abuse.md).

``X-Portcullis-Sender-Id: v1.<base64url>`` names the sending account, the
transaction and the time, sealed with AES-256-GCM under a key derived from the
gateway's secret: a recipient learns nothing from it (not even that two messages
came from the same account: every token has its own random nonce), and nobody
without the secret can make one that opens, so an abuse report can only pin mail
on an account that really sent it.  The DKIM signature covers the header, so a
genuine token moved onto another message fails DKIM at the receiver.

A client's own X-Portcullis-Sender-Id headers are removed before ours is added:
otherwise an account could copy a token from mail it received and have the
complaints about its mail counted against someone else.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import struct
import threading
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from gateway.message import Message
from gateway.values.sender_id import HEADER, SenderId

_VERSION = "v1"
_AAD = b"portcullis sender-id v1"
_NONCE = 12
# Nonces are drawn from os.urandom this many at a time: one getrandom() call per
# message released the GIL on the event loop's thread, and getting it back behind
# the store's and the signer's threads showed in py-spy (issue 16).
_NONCES_PER_DRAW = 256


def derive_key(secret: str | bytes) -> bytes:
    """HMAC-SHA256 as a key-derivation step (RFC 5869 extract with a fixed salt):
    the secret may be any long string; the AES key is always 32 uniform bytes."""
    raw = secret.encode() if isinstance(secret, str) else secret
    return hmac.new(b"portcullis sender-id", raw, hashlib.sha256).digest()


class SenderIds:
    """Makes and opens tokens.  ``keys[0]`` makes; every key opens (rotation)."""

    def __init__(self, secrets_in_force: list[str | bytes]):
        if not secrets_in_force:
            raise ValueError("at least one secret")
        self._aeads = [AESGCM(derive_key(s)) for s in secrets_in_force]
        self._random = b""
        self._lock = threading.Lock()  # a GCM nonce must never be handed out twice

    def _nonce(self) -> bytes:
        with self._lock:
            if not self._random:
                self._random = os.urandom(_NONCE * _NONCES_PER_DRAW)
            nonce, self._random = self._random[:_NONCE], self._random[_NONCE:]
        return nonce

    def make(self, login: str, txid: str, sent_at: float) -> str:
        nonce = self._nonce()
        plain = struct.pack(">Q", int(sent_at)) + txid.encode() + b"\0" + login.encode()
        sealed = self._aeads[0].encrypt(nonce, plain, _AAD)
        return f"{_VERSION}.{base64.urlsafe_b64encode(nonce + sealed).decode().rstrip('=')}"

    def open(self, token: str) -> SenderId | None:
        """The identifier inside a token, or None when it is not one we made."""
        version, _, body = token.strip().partition(".")
        if version != _VERSION or not body or len(body) > 2000:
            return None
        try:
            blob = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
        except (ValueError, TypeError):
            return None
        if len(blob) < _NONCE + 16 + 9:
            return None
        for aead in self._aeads:
            try:
                plain = aead.decrypt(blob[:_NONCE], blob[_NONCE:], _AAD)
            except InvalidTag:
                continue
            sent_at = struct.unpack(">Q", plain[:8])[0]
            txid, sep, login = plain[8:].partition(b"\0")
            if not sep:
                return None
            try:
                return SenderId(login.decode(), txid.decode(), sent_at)
            except UnicodeDecodeError:
                return None
        return None


def sender_id_header(token: str) -> bytes:
    return f"{HEADER}: {token}\r\n".encode()


_KEY = HEADER.lower().encode()


def strip_sender_id_headers(message: Message) -> Message:
    """The message without any X-Portcullis-Sender-Id field, by the one reading of
    field names (gateway/message.py: ``X-Portcullis-Sender-Id\t:`` is one too); every
    other byte as it was, and the message itself (nothing copied) without one."""
    return message.without(lambda field: field.key == _KEY)


def load_secrets(secret: str | None, secret_file: Path | None, previous: tuple[str, ...],
                 base_dir: Path, create: bool) -> list[str | bytes]:
    """The secrets in force: inline, from a file, or (``create``) a new file made
    next to the gateway file on first start, readable by its owner only."""
    from gateway.config.abuse import DEFAULT_SECRET_FILE

    if secret is not None:
        return [secret, *previous]
    path = secret_file or DEFAULT_SECRET_FILE
    path = path if path.is_absolute() else base_dir / path
    if not path.exists() and create and secret_file is None:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process made it first
            pass
        else:
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_urlsafe(48) + "\n")
    return [path.read_text().strip(), *previous]
