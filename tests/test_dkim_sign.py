"""DKIM signatures made by gateway.dkim.sign verify with dkimpy and with Perl's Mail::DKIM,
the public keys published by a real NSD on loopback from `keys generate` output."""

from __future__ import annotations

import asyncio
import io
import re
import threading
import time
from argparse import Namespace
from datetime import UTC, datetime
from pathlib import Path

import pytest

from gateway.dkim import commands
from gateway.dkim.keystore import KeyStore
from gateway.dkim.sign import (
    MalformedMessage,
    body_hash,
    canonical_body,
    check_line_endings,
    sign_message,
    sign_message_off_loop,
    sign_message_where_cheapest,
    signed_headers,
)
from tests.support.authdns import authdns_module_factory  # noqa: F401
from tests.support.dkim_verifiers import dkimpy_results, mail_dkim_results
from tests.support.rspamd_dkim import RspamdVerifier

DOMAIN = "acme.example"
NOW = int(time.time())
# Rotation: "old" signs until NOW-100, "new" from NOW-200: both sign in between.
OLD_END = NOW - 100
NEW_START = NOW - 200

MESSAGE = (
    b"From: Alice <alice@acme.example>\r\n"
    b"To: bob@example.org\r\n"
    b"Subject: quarterly\r\n figures  \r\n"
    b"Date: Mon, 23 Nov 2026 19:00:00 +0000\r\n"
    b"Message-ID: <1@acme.example>\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"\r\n"
    b"Hello  Bob, \t\r\n\r\nthe figures:\t12  \r\n\r\n\r\n"
)


def _when(ts: int) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


def generate(keys_dir: Path, selector: str, algorithm: str = "rsa",
             not_before: int | None = None, not_after: int | None = None) -> str:
    args = Namespace(keys_dir=keys_dir, domain=DOMAIN, selector=selector, algorithm=algorithm,
                     bits=2048, not_before=_when(not_before) if not_before else None,
                     not_after=_when(not_after) if not_after else None)
    out = io.StringIO()
    assert commands.cmd_generate(args, out=out) == 0
    return out.getvalue()


@pytest.fixture(scope="module")
def world(tmp_path_factory, authdns_module_factory):  # noqa: F811
    keys_dir = tmp_path_factory.mktemp("keys")
    outputs = [
        generate(keys_dir, "rsa1"),
        generate(keys_dir, "ed1", "ed25519"),
        generate(keys_dir, "old", not_after=OLD_END),
        generate(keys_dir, "new", not_before=NEW_START),
    ]
    dns = authdns_module_factory({DOMAIN: "\n".join(outputs)})
    store = KeyStore.load(keys_dir)
    assert not store.errors
    keys = {s.selector: s.signing_key() for s in store.selectors(DOMAIN)}
    return Namespace(dns=dns, store=store, keys=keys, keys_dir=keys_dir)


@pytest.fixture(scope="module")
def rspamd(world, tmp_path_factory):
    """rspamd checks Ed25519, which Debian 12's Mail::DKIM cannot (tests/support/rspamd_dkim.py)."""
    verifier = RspamdVerifier(tmp_path_factory.mktemp("rspamd"), world.dns.port).start()
    try:
        yield verifier
    finally:
        verifier.stop()


def signed(world, message: bytes, *selectors: str, expire_after: int | None = None) -> bytes:
    keys = [world.keys[s] for s in selectors]
    return sign_message(message, keys, NOW, expire_after) + message


def tags(signature_field: bytes) -> dict[str, str]:
    value = re.sub(rb"\s+", b"", signature_field.split(b":", 1)[1]).decode()
    return dict(t.split("=", 1) for t in value.split(";") if t)


def fields_of(signatures: bytes) -> list[bytes]:
    return [f for f in re.split(rb"\r\n(?=DKIM-Signature:)", signatures) if f]


# --- the signatures verify ---------------------------------------------------------
def test_rsa_signature_verifies_with_dkimpy_and_mail_dkim(world):
    msg = signed(world, MESSAGE, "rsa1")
    assert dkimpy_results(msg, world.dns.port) == [True]
    [perl] = mail_dkim_results(msg, world.dns.port)
    assert (perl.selector, perl.algorithm, perl.result) == ("rsa1", "rsa-sha256", "pass")


def test_ed25519_signature_verifies_with_dkimpy_and_rspamd(world, rspamd):
    # Mail::DKIM on Debian 12 cannot check ed25519-sha256 (see tests/support/dkim_verifiers.py).
    msg = signed(world, MESSAGE, "ed1")
    assert dkimpy_results(msg, world.dns.port) == [True]
    assert rspamd.dkim_trace(msg) == [f"{DOMAIN}:+"]
    assert tags(fields_of(sign_message(MESSAGE, [world.keys["ed1"]], NOW))[0])["a"] == "ed25519-sha256"


def test_dual_signature_rsa_and_ed25519_both_verify_and_share_the_body_hash(world):
    sigs = sign_message(MESSAGE, [world.keys["rsa1"], world.keys["ed1"]], NOW)
    rsa_tags, ed_tags = (tags(f) for f in fields_of(sigs))
    assert (rsa_tags["a"], ed_tags["a"]) == ("rsa-sha256", "ed25519-sha256")
    assert rsa_tags["bh"] == ed_tags["bh"] == body_hash(MESSAGE.split(b"\r\n\r\n", 1)[1]).decode()
    msg = sigs + MESSAGE
    assert dkimpy_results(msg, world.dns.port) == [True, True]
    perl = mail_dkim_results(msg, world.dns.port)
    assert [p.result for p in perl if p.algorithm == "rsa-sha256"] == ["pass"]


def test_signature_tags_have_t_and_x_never_l_and_relaxed_canonicalisation(world):
    [field] = fields_of(sign_message(MESSAGE, [world.keys["rsa1"]], NOW, expire_after=86400))
    t = tags(field)
    assert t["c"] == "relaxed/relaxed" and t["d"] == DOMAIN and t["s"] == "rsa1"
    assert int(t["t"]) == NOW and int(t["x"]) == NOW + 86400
    assert "l" not in t
    assert all(len(line) <= 78 for line in field.split(b"\r\n"))
    msg = signed(world, MESSAGE, "rsa1", expire_after=86400)
    assert dkimpy_results(msg, world.dns.port) == [True]
    assert mail_dkim_results(msg, world.dns.port)[0].result == "pass"


def test_without_expiry_there_is_no_x_tag(world):
    assert "x" not in tags(fields_of(sign_message(MESSAGE, [world.keys["rsa1"]], NOW))[0])


def test_an_expired_x_makes_the_signature_fail(world):
    # Signed two days ago with a one-hour expiry: x= is past even with dkimpy's 10 h leeway.
    keys = [world.keys["rsa1"]]
    msg = sign_message(MESSAGE, keys, NOW - 2 * 86400, expire_after=3600) + MESSAGE
    assert dkimpy_results(msg, world.dns.port) == [False]
    assert mail_dkim_results(msg, world.dns.port)[0].result != "pass"


def test_from_is_listed_once_more_than_present(world):
    h = tags(fields_of(sign_message(MESSAGE, [world.keys["rsa1"]], NOW))[0])["h"].split(":")
    assert h.count("from") == 2
    assert h.count("reply-to") == 1  # absent, signed as absent
    assert h.count("subject") == 2


# --- tampering is detected -----------------------------------------------------------
@pytest.mark.parametrize("selector", ["rsa1", "ed1"])
def test_a_body_changed_after_signing_fails(world, rspamd, selector):
    msg = signed(world, MESSAGE, selector).replace(b"the figures:", b"the figures?")
    assert dkimpy_results(msg, world.dns.port) == [False]
    assert rspamd.dkim_trace(msg) == [f"{DOMAIN}:-"]
    if selector == "rsa1":
        assert mail_dkim_results(msg, world.dns.port)[0].result == "fail"


def test_a_signed_header_changed_after_signing_fails(world):
    msg = signed(world, MESSAGE, "rsa1").replace(b"quarterly", b"Quarterly")
    assert dkimpy_results(msg, world.dns.port) == [False]
    assert mail_dkim_results(msg, world.dns.port)[0].result == "fail"


@pytest.mark.parametrize("where", ["top", "bottom"])
def test_a_second_from_added_after_signing_fails_thanks_to_oversigning(world, rspamd, where):
    msg = signed(world, MESSAGE, "rsa1", "ed1")
    evil = b"From: Mallory <ceo@acme.example>\r\n"
    if where == "top":
        msg = evil + msg
    else:
        head, body = msg.split(b"\r\n\r\n", 1)
        msg = head + b"\r\n" + evil.rstrip(b"\r\n") + b"\r\n\r\n" + body
    assert dkimpy_results(msg, world.dns.port) == [False, False]
    assert mail_dkim_results(msg, world.dns.port)[0].result == "fail"
    assert f"{DOMAIN}:+" not in rspamd.dkim_trace(msg)  # neither the RSA nor the Ed25519 one


def test_a_reply_to_added_after_signing_fails(world):
    head, body = signed(world, MESSAGE, "rsa1").split(b"\r\n\r\n", 1)
    msg = head + b"\r\nReply-To: mallory@evil.example\r\n\r\n" + body
    assert dkimpy_results(msg, world.dns.port) == [False]
    assert mail_dkim_results(msg, world.dns.port)[0].result == "fail"


def test_date_and_message_id_added_downstream_do_not_break_the_signature(world):
    # Postfix adds a missing Date and Message-ID: their absence is not signed.
    bare = b"From: alice@acme.example\r\nTo: bob@example.org\r\nSubject: hi\r\n\r\nhello\r\n"
    msg = signed(world, bare, "rsa1")
    head, body = msg.split(b"\r\n\r\n", 1)
    msg = head + b"\r\nDate: Mon, 23 Nov 2026 19:00:00 +0000\r\nMessage-ID: <x@relay>\r\n\r\n" + body
    assert dkimpy_results(msg, world.dns.port) == [True]
    assert mail_dkim_results(msg, world.dns.port)[0].result == "pass"


def test_received_header_added_after_signing_does_not_break_the_signature(world):
    msg = b"Received: from gateway by mta; Mon, 23 Nov 2026 19:00:01 +0000\r\n" + signed(world, MESSAGE, "rsa1")
    assert dkimpy_results(msg, world.dns.port) == [True]


# --- rotation --------------------------------------------------------------------------
@pytest.mark.parametrize(("at", "expected"), [
    (NEW_START - 50, ["old"]),  # before the new window opens
    (NEW_START, ["new", "old"]),  # overlap: both sign (newest first)
    (OLD_END - 1, ["new", "old"]),
    (OLD_END, ["new"]),  # the old window has closed
    (NOW, ["new"]),
])
def test_rotation_across_a_window_boundary_signs_with_the_selectors_active_then(world, at, expected):
    rotating = [k for k in world.store.active(DOMAIN, at) if k.selector in ("old", "new")]
    assert [k.selector for k in rotating] == expected
    sigs = sign_message(MESSAGE, rotating, at)
    assert [tags(f)["s"] for f in fields_of(sigs)] == expected
    assert dkimpy_results(sigs + MESSAGE, world.dns.port) == [True] * len(expected)
    assert [p.result for p in mail_dkim_results(sigs + MESSAGE, world.dns.port)] == ["pass"] * len(expected)


# --- what cannot be signed ---------------------------------------------------------------
def test_a_message_without_from_cannot_be_signed(world):
    with pytest.raises(MalformedMessage, match="From"):
        sign_message(b"To: bob@example.org\r\n\r\nhi\r\n", [world.keys["rsa1"]], NOW)


@pytest.mark.parametrize("head", [
    b" starts folded\r\nFrom: a@acme.example\r\n",
    b"From: a@acme.example\r\nno colon here\r\n",
    b"From: a@acme.example\r\nBad Name: x\r\n",
    b"From: a@acme.example\r\n: empty name\r\n",
])
def test_a_malformed_header_section_cannot_be_signed(world, head):
    with pytest.raises(MalformedMessage):
        sign_message(head + b"\r\nbody\r\n", [world.keys["rsa1"]], NOW)


@pytest.mark.parametrize("message", [b"From: a@b\nTo: c\r\n\r\n", b"From: a@b\r\n\r\nx\ry\r\n"])
def test_bare_cr_or_lf_is_refused_by_the_line_ending_check(message):
    with pytest.raises(MalformedMessage):
        check_line_endings(message)


def test_no_keys_means_no_signature():
    assert sign_message(MESSAGE, [], NOW) == b""


# --- canonicalisation, RFC 6376 §3.4.6 example and edge cases -----------------------------
def test_rfc6376_example_relaxed_header_and_body():
    names, data = signed_headers(b"A: X\r\nB : Y\t\r\n\tZ  \r\n")
    assert data == b""  # neither A nor B is a field we sign
    assert canonical_body(b" C \r\nD \t E\r\n\r\n\r\n") == b" C\r\nD E\r\n"


def test_relaxed_header_canonicalisation_of_signed_fields():
    names, data = signed_headers(b"SUBJECT : Hello \t\r\n  World  \r\nFrom:a@b\r\n")
    assert data == b"from:a@b\r\nsubject:Hello World\r\n"
    assert names[:4] == ("from", "from", "subject", "subject")


def test_several_instances_are_signed_bottom_up():
    names, data = signed_headers(b"To: one\r\nFrom: a@b\r\nTo: two\r\n")
    assert data == b"from:a@b\r\nto:two\r\nto:one\r\n"
    assert names.count("to") == 3


@pytest.mark.parametrize(("body", "canonical"), [
    (b"", b""),
    (b"\r\n\r\n", b""),
    (b"  \r\n", b""),
    (b"x", b"x\r\n"),
    (b"x  ", b"x\r\n"),  # as it will be on the wire: SMTP adds the final CRLF
    (b"x\r\n \t \r\n", b"x\r\n"),
    (b"a\t\tb\r\n", b"a b\r\n"),
    (b" \tlead\r\n", b" lead\r\n"),
    (b"a" * 2000 + b"     b\r\n", b"a" * 2000 + b" b\r\n"),
])
def test_relaxed_body_canonicalisation(body, canonical):
    assert canonical_body(body) == canonical


def test_obsolete_space_before_colon_verifies_with_mail_dkim(world):
    # RFC 5322 §4.5.8 obs syntax; RFC 6376 §3.4.2 relaxed deletes WSP before the colon.
    # (dkimpy refuses to parse such a header, so only Mail::DKIM can check this one.)
    msg = signed(world, MESSAGE.replace(b"Subject:", b"Subject \t:"), "rsa1")
    assert mail_dkim_results(msg, world.dns.port)[0].result == "pass"


def test_unterminated_last_line_is_signed_as_it_will_be_delivered(world):
    # DATA content always ends in CRLF; if a caller passes bytes that do not, the
    # SMTP client adds it on the wire, and that is what the receiver verifies.
    msg = signed(world, b"From: a@acme.example\r\n\r\nline one\r\nlast  ", "rsa1")
    assert mail_dkim_results(msg, world.dns.port)[0].result == "pass"
    assert dkimpy_results(msg + b"\r\n", world.dns.port) == [True]


def test_a_message_with_no_body_is_signed_and_verifies(world, rspamd):
    msg = signed(world, b"From: a@acme.example\r\nSubject: empty\r\n", "rsa1", "ed1")
    assert dkimpy_results(msg, world.dns.port) == [True, True]
    assert rspamd.dkim_trace(signed(world, b"From: a@acme.example\r\nSubject: empty\r\n", "ed1")) == [
        f"{DOMAIN}:+"]
    assert mail_dkim_results(msg, world.dns.port)[0].result == "pass"


# --- off the event loop --------------------------------------------------------------------
def test_sign_message_off_loop_signs_in_a_worker_thread(world, monkeypatch):
    import gateway.dkim.sign as sign_module

    threads = []
    real = sign_module.sign_message

    def spy(*args):
        threads.append(threading.current_thread())
        return real(*args)

    monkeypatch.setattr(sign_module, "sign_message", spy)

    async def run():
        return await sign_message_off_loop(MESSAGE, [world.keys["rsa1"]], NOW)

    sigs = asyncio.run(run())
    assert threads and threads[0] is not threading.main_thread()
    assert dkimpy_results(sigs + MESSAGE, world.dns.port) == [True]


def test_ordinary_mail_is_signed_on_the_loop_and_a_large_message_in_a_thread(world, monkeypatch):
    # A thread only adds its hop for ordinary mail, even where cryptography drops
    # the GIL through RSA (gateway/dkim/sign.py, INLINE_MAX_BYTES, says how much);
    # a large body's hashing (hashlib drops the GIL) is still worth one.
    import gateway.dkim.sign as sign_module

    threads = []
    real = sign_module.sign_message

    def spy(*args):
        threads.append(threading.current_thread())
        return real(*args)

    monkeypatch.setattr(sign_module, "sign_message", spy)
    stamp = b"Received: from client by gateway; Mon, 23 Nov 2026 19:00:00 +0000\r\n"
    large = MESSAGE + b"x" * (sign_module.INLINE_MAX_BYTES - len(MESSAGE) - len(stamp) + 1) + b"\r\n"

    async def run(message: bytes) -> bytes:
        return await sign_message_where_cheapest(message, [world.keys["rsa1"]], NOW, prefix=stamp)

    for message, on_loop in ((MESSAGE, True), (large, False)):
        threads.clear()
        sigs = asyncio.run(run(message))
        assert len(threads) == 1 and (threads[0] is threading.main_thread()) is on_loop
        assert dkimpy_results(sigs + stamp + message, world.dns.port) == [True]


def test_control_without_oversigning_an_added_top_from_would_pass(world):
    # The reason for oversigning: sign with dkimpy listing From only once, add a From
    # on top, and Mail::DKIM (which picks the bottom From, RFC 6376 §5.4.2) says pass.
    import dkim
    from cryptography.hazmat.primitives import serialization

    pem = world.keys["rsa1"].private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption())
    sig = dkim.sign(MESSAGE, b"rsa1", DOMAIN.encode(), pem, canonicalize=(b"relaxed", b"relaxed"),
                    include_headers=[b"from", b"to", b"subject"])
    assert tags(sig.rstrip(b"\r\n"))["h"].split(":").count("from") == 1
    msg = b"From: Mallory <ceo@acme.example>\r\n" + sig + MESSAGE
    assert mail_dkim_results(msg, world.dns.port)[0].result == "pass"


def test_ed25519_alone_added_from_or_changed_subject_fails_in_rspamd_and_dkimpy(world, rspamd):
    msg = signed(world, MESSAGE, "ed1")
    assert rspamd.dkim_trace(msg) == [f"{DOMAIN}:+"]
    for tampered in (b"From: Mallory <ceo@acme.example>\r\n" + msg, msg.replace(b"quarterly", b"Quarterly")):
        assert dkimpy_results(tampered, world.dns.port) == [False]
        assert rspamd.dkim_trace(tampered) == [f"{DOMAIN}:-"]
