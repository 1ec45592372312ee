"""bench/submission.py keeps measuring what its rows say: a few messages through one
Postfix row and one gateway row reach the sink signed, and its checks can fail.
No timing is asserted: the bench prints figures, the tests only keep its setup alive."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.submission import (
    REFERENCE,
    Setting,
    gateway_row,
    in_turn,
    measure_row,
    postfix_row,
    rows,
    self_signed,
)
from bench.submission_checks import check_signed, check_unsigned, refuses_mismatched_sender
from bench.submission_client import message
from bench.submission_peers import DOMAIN, Ceiling, accounts
from tests.support.dkim_keys import rsa_key
from tests.support.postfix import postfix_available

needs_postfix = pytest.mark.skipif(not postfix_available(), reason="needs root and Debian's postfix")


@pytest.fixture(scope="module")
def setting() -> Iterator[Setting]:
    with tempfile.TemporaryDirectory(prefix="portcullis-bench-test-") as tmp:
        Path(tmp).chmod(0o755)  # Postfix and smtp-sink drop privileges
        yield Setting(Path(tmp), self_signed(Path(tmp)), accounts(4), messages=8, warmup=4,
                      processes=1, latency_seconds=0, big_mb=2)


@needs_postfix
def test_postfix_with_opendkim_row_forwards_every_message_signed(setting):
    row = measure_row(postfix_row(REFERENCE, opendkim=True), setting)
    assert (row.delivered, row.signed) == (13, 13)  # 4 + 8, and the one large message
    assert row.refusal.startswith("553 5.7.1"), row.refusal
    assert row.rate > 0 and row.cpu_per_message > 0 and row.peak_pss > 0
    assert row.big_rss > 0 and row.big_pss > 0


@needs_postfix
def test_gateway_row_forwards_every_message_signed(setting):
    row = measure_row(gateway_row("portcullis --workers 1, sqlite", "1", "sqlite"), setting)
    assert (row.delivered, row.signed) == (13, 13)
    # The large message's own peak holds at least the 2 MiB it was.
    assert 2 * 2**20 < row.big_pss
    assert row.refusal.startswith("553 5.7.1"), row.refusal


def test_a_server_without_a_sender_check_fails_the_sanity_check(setting, tmp_path):
    logins = setting.logins
    with Ceiling(tmp_path, setting.cert, logins) as ceiling, \
            pytest.raises(RuntimeError, match="sender check is not on"):
        refuses_mismatched_sender(ceiling.port, *logins[0], logins[1][0])


def test_signature_checks_refuse_unsigned_forged_and_unexpected_signatures():
    key, other = rsa_key(2048), rsa_key(2048, 1)
    plain = message(f"a@{DOMAIN}", 1, 2000)
    signed = key.sign(plain, b"bench", DOMAIN.encode())
    check_signed([signed], key.record, DOMAIN)
    with pytest.raises(RuntimeError, match="0 DKIM-Signature"):
        check_signed([plain], key.record, DOMAIN)
    with pytest.raises(RuntimeError, match="does not verify"):
        check_signed([signed], other.record, DOMAIN)
    with pytest.raises(RuntimeError, match="not an rsa-sha256 signature by other.example"):
        check_signed([signed], key.record, "other.example")
    with pytest.raises(RuntimeError, match="signed, though"):
        check_unsigned([signed])
    check_unsigned([plain])


def test_every_other_round_measures_the_baseline_first():
    # The order a round starts in is kept; only each gateway row and its baseline swap.
    specs = rows(Path("/elsewhere/wt-old"), ["workers 1"])
    labels = [s.label for s in specs]
    assert labels == ["portcullis --workers 1, nothing metered",  # no baseline of its own
                      "portcullis --workers 1, sqlite", "  baseline wt-old",
                      "portcullis --workers 1, redis", "  baseline wt-old"]
    assert in_turn([0, 1, 2, 3, 4], specs) == [0, 2, 1, 4, 3]
    # A round that starts on a baseline row: that one has no gateway row before it.
    assert in_turn([2, 3, 4, 0, 1], specs) == [2, 4, 3, 0, 1]
