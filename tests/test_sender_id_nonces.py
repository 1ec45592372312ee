"""Sender-id tokens draw their AES-GCM nonces from a batch of os.urandom (issue 16):
no nonce is ever used twice, across batches and threads, and every token opens."""

from __future__ import annotations

import base64
import threading

from gateway.stamps.sender_id import _NONCE, _NONCES_PER_DRAW, SenderIds


def nonce_of(token: str) -> bytes:
    body = token.partition(".")[2]
    return base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))[:_NONCE]


def test_every_token_has_its_own_nonce_across_batches_and_threads():
    ids = SenderIds(["a long enough secret for the test"])
    made: list[str] = []

    def make_many(n: int) -> None:
        for i in range(n):
            made.append(ids.make("alice@acme.example", f"TX{i}", 1_700_000_000))

    threads = [threading.Thread(target=make_many, args=(_NONCES_PER_DRAW + 7,)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(made) == 4 * (_NONCES_PER_DRAW + 7)
    assert len({nonce_of(t) for t in made}) == len(made)
    opened = ids.open(made[-1])
    assert opened is not None and opened.login == "alice@acme.example"
