"""DKIM keys checked before they sign (issue 19): a selector signs only once its TXT
record is seen to carry its public key; otherwise the previous key keeps signing.

The rule itself over a table of cases, then a real gateway whose resolver asks a real
NSD, with the new selector's record published late, wrong, then right.
"""

import io
import smtplib
import time
from contextlib import redirect_stderr, redirect_stdout
from datetime import UTC, datetime, timedelta

import pytest
import yaml

from gateway.cli import main
from gateway.dkim.keystore import KeyStore, generate_selector
from gateway.dkim.publication import Publication, judge_records, signing_selectors
from tests.conftest import PASSWORD, customer_policies
from tests.support.dkim_verifiers import dkimpy_results
from tests.support.gateway import GatewayUnderTest
from tests.support.serve_process import eventually

pytest_plugins = ("tests.support.authdns",)

DOMAIN = "acme.example"
NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
GRACE = timedelta(days=7)
MESSAGE = (b"From: Alice <alice@acme.example>\r\nTo: friend@elsewhere.example\r\n"
           b"Subject: keys checked\r\nDate: Mon, 30 Nov 2026 10:00:00 +0000\r\n"
           b"Message-ID: <k@acme.example>\r\n\r\nHello\r\n")


# --- the rule: which selectors sign, given the verdicts ---------------------------------
@pytest.fixture(scope="module")
def rotation(tmp_path_factory):
    """old: signed until NOW; new: signs from NOW (a rotation window); other: Ed25519."""
    keys = tmp_path_factory.mktemp("keys")
    generate_selector(keys, DOMAIN, "old", "ed25519-sha256", not_after=NOW)
    generate_selector(keys, DOMAIN, "new", "ed25519-sha256", not_before=NOW)
    generate_selector(keys, DOMAIN, "rsa", "rsa-sha256", bits=1024)
    return KeyStore.load(keys)


def verdicts(**published):
    return {(DOMAIN, name): Publication(ok, "published" if ok else "missing", "", 0.0)
            for name, ok in published.items()}


AFTER = (NOW + timedelta(hours=1)).timestamp()
BEFORE = (NOW - timedelta(hours=1)).timestamp()
LONG_AFTER = (NOW + GRACE + timedelta(days=1)).timestamp()


@pytest.mark.parametrize(("now", "table", "signing"), [
    # The new key is published: it takes over when its window opens.
    (AFTER, verdicts(old=True, new=True, rsa=True), ["new", "rsa"]),
    # Published late (not yet): the previous key, now retiring, keeps signing.
    (AFTER, verdicts(old=True, new=False, rsa=True), ["old", "rsa"]),
    # Published wrong: the same.
    (AFTER, {**verdicts(old=True, rsa=True),
             (DOMAIN, "new"): Publication(False, "wrong", "NOT the key", 0.0)}, ["old", "rsa"]),
    # No verdict yet (DNS has not answered since start-up): never signs unchecked.
    (AFTER, verdicts(old=True, rsa=True), ["old", "rsa"]),
    (AFTER, {}, []),
    # Before its window a pending key never signs, published or not.
    (BEFORE, verdicts(old=True, new=True, rsa=True), ["old", "rsa"]),
    # A key that went wrong while active stops signing; with no predecessor, nothing
    # of that algorithm signs (the customer's missing_key decides).
    (AFTER, verdicts(old=True, new=True, rsa=False), ["new"]),
    # An expired key is no fallback: its record may be gone.
    (LONG_AFTER, verdicts(old=True, new=False, rsa=True), ["rsa"]),
])
def test_a_selector_signs_only_once_its_key_is_seen_published(rotation, now, table, signing):
    chosen = signing_selectors(rotation.selectors(DOMAIN), table, now, GRACE)
    assert sorted(s.selector for s in chosen) == sorted(signing)


@pytest.mark.parametrize(("records", "outcome", "words"), [
    (None, "missing", "no such name"),
    ([], "missing", "no TXT record"),
    ([b"v=DKIM1; k=ed25519; p="], "wrong", "revoked"),
    ([b"v=DKIM1; k=rsa; p=AAAA"], "wrong", "k=rsa"),
    ([b"v=DKIM1; k=ed25519; p=AAAA", b"v=DKIM1; k=ed25519; p=BBBB"], "wrong", "exactly one"),
])
def test_what_dns_says_becomes_a_verdict(rotation, records, outcome, words):
    new = next(s for s in rotation.selectors(DOMAIN) if s.selector == "new")
    verdict = judge_records(new, records, 5.0)
    assert (verdict.published, verdict.outcome) == (False, outcome)
    assert words in verdict.detail


def test_the_published_record_is_judged_published(rotation):
    new = next(s for s in rotation.selectors(DOMAIN) if s.selector == "new")
    verdict = judge_records(new, [new.dns_value().encode()], 5.0)
    assert (verdict.published, verdict.outcome) == (True, "published")


# --- a real gateway and a real NSD ------------------------------------------------------
class Clock:
    def __init__(self, now: float):
        self.now = now

    def __call__(self) -> float:
        return self.now


def point_at(gw, port: int) -> None:
    """The gateway's resolver asks the test's NSD (the config is read at start())."""
    config = yaml.safe_load(gw.config_path.read_text())
    config["dns"]["port"] = port
    gw.config_path.write_text(yaml.safe_dump(config))


def record(selector) -> str:
    return f'{selector.selector}._domainkey IN TXT "{selector.dns_value()}"'


def submit(gw, client_tls):
    with smtplib.SMTP_SSL("127.0.0.1", gw.ports["submissions"], timeout=20, context=client_tls) as c:
        c.login("alice@acme.example", PASSWORD)
        c.sendmail("alice@acme.example", ["friend@elsewhere.example"], MESSAGE)


def signed_by(content: bytes) -> list[str]:
    head = content.split(b"\r\n\r\n", 1)[0].replace(b"\r\n\t", b" ").replace(b"\r\n ", b" ")
    return [line.split(b" s=")[1].split(b";")[0].decode()
            for line in head.split(b"\r\n") if line.startswith(b"DKIM-Signature:")]


def metric(gw, name, **labels) -> float:
    value = gw.runtime.metrics.registry.get_sample_value(name, labels)
    return value or 0.0


def test_the_new_key_signs_only_once_published_right(tmp_path, authdns_factory, downstream,
                                                        cert_files, password_hash, client_tls):
    keys = tmp_path / "keys"
    switch = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=1)
    old = generate_selector(keys, DOMAIN, "old", "ed25519-sha256", not_after=switch)
    new = generate_selector(keys, DOMAIN, "new", "ed25519-sha256", not_before=switch)
    stranger = generate_selector(tmp_path / "other", DOMAIN, "new", "ed25519-sha256")
    clock = Clock((switch + timedelta(hours=1)).timestamp())  # new's window is open
    gw = GatewayUnderTest(
        tmp_path, inbound_url=downstream.url, outbound_url=downstream.url,
        policies=customer_policies(password_hash), cert=cert_files, clock=clock,
        extra={"dkim": {"check_published": True}, "dns": {"timeout": 2}})
    # The other customers' keys (made by GatewayUnderTest) are published, as is old;
    # the new record is not published yet.
    zones = {DOMAIN: record(old), "globex.example": "@ IN A 192.0.2.1"}
    for s in KeyStore.load(keys).selectors():
        if s.domain != DOMAIN:
            zone = next(z for z in zones if s.domain == z or s.domain.endswith("." + z))
            zones[zone] += f'\n{s.dns_name}. IN TXT "{s.dns_value()}"'
    dns = authdns_factory(zones)
    point_at(gw, dns.port)
    gw.start()
    try:
        refresh = lambda: gw.run(gw.gateway.key_watch.refresh())  # noqa: E731
        # Published late: at start-up the new record is missing, so the old key signs.
        submit(gw, client_tls)
        assert metric(gw, "portcullis_dkim_key_checks_total", outcome="missing") >= 1
        assert metric(gw, "portcullis_dkim_selectors_held_back") == 1
        # Published wrong: still the old key.
        dns.reload({**zones, DOMAIN: zones[DOMAIN] + "\n" + record(stranger)})
        refresh()
        submit(gw, client_tls)
        assert metric(gw, "portcullis_dkim_key_checks_total", outcome="wrong") >= 1
        # Published right: the new key takes over, and its signature verifies.
        dns.reload({**zones, DOMAIN: zones[DOMAIN] + "\n" + record(new)})
        refresh()
        submit(gw, client_tls)
        assert metric(gw, "portcullis_dkim_selectors_held_back") == 0
        # DNS down: the last verdict stands, the new key keeps signing.
        dns.stop()
        refresh()
        submit(gw, client_tls)
        assert metric(gw, "portcullis_dkim_key_checks_total", outcome="temperror") >= 1
    finally:
        gw.stop()
    got = [signed_by(m.content) for m in downstream.messages]
    assert got == [["old"], ["old"], ["new"], ["new"]]
    dns.reload({**zones, DOMAIN: zones[DOMAIN] + "\n" + record(new)})
    assert dkimpy_results(downstream.messages[2].content, dns.port) == [True]


def test_with_no_verdict_at_start_up_mail_is_deferred_not_signed_unchecked(
        tmp_path, downstream, cert_files, password_hash, client_tls):
    generate_selector(tmp_path / "keys", DOMAIN, "only", "ed25519-sha256")
    gw = GatewayUnderTest(
        tmp_path, inbound_url=downstream.url, outbound_url=downstream.url,
        policies=customer_policies(password_hash), cert=cert_files,
        # The harness's resolver asks a port where nothing listens: DNS never answers.
        extra={"dkim": {"check_published": True}}).start()
    try:
        with pytest.raises(smtplib.SMTPDataError) as exc:
            submit(gw, client_tls)
        assert (exc.value.smtp_code, exc.value.smtp_error[:5]) == (451, b"4.7.0")
    finally:
        gw.stop()
    assert downstream.messages == []


def test_keys_check_and_list_say_which_key_signs(tmp_path, authdns_factory):
    keys = tmp_path / "keys"
    switch = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)
    old = generate_selector(keys, DOMAIN, "old", "ed25519-sha256", not_after=switch)
    generate_selector(keys, DOMAIN, "new", "ed25519-sha256", not_before=switch)
    dns = authdns_factory({DOMAIN: record(old)})
    ns = ["--nameserver", "127.0.0.1", "--port", str(dns.port), "--timeout", "2"]

    def run(*argv):
        out, err = io.StringIO(), io.StringIO()
        with redirect_stdout(out), redirect_stderr(err):
            code = main(["keys", "--keys-dir", str(keys), *argv])
        return code, out.getvalue()

    code, out = run("check", DOMAIN, *ns)
    assert code == 1
    new_line = next(line for line in out.splitlines() if "new._domainkey" in line)
    assert new_line.startswith("FAIL") and "does not sign with it until" in new_line
    assert f"signs: {DOMAIN} now with old" in out
    code, out = run("list", "--dns", *ns)
    rows = {line.split()[1]: line.split() for line in out.splitlines()[1:]}
    assert rows["new"][-2:] == ["missing", "no"]
    assert rows["old"][-2:] == ["published", "yes"]
    assert time.time() > switch.timestamp()  # new's window is open: held back, not pending


def test_the_watch_sees_a_late_record_and_a_reloaded_selector_by_itself(
        tmp_path, authdns_factory, downstream, cert_files, password_hash, client_tls):
    """No test-driven refresh: the background task's own rounds (check_interval 1 s)."""
    keys = tmp_path / "keys"
    only = generate_selector(keys, DOMAIN, "only", "ed25519-sha256")
    gw = GatewayUnderTest(
        tmp_path, inbound_url=downstream.url, outbound_url=downstream.url,
        policies=customer_policies(password_hash), cert=cert_files,
        extra={"dkim": {"check_published": True, "check_interval": 1}, "dns": {"timeout": 1}})
    dns = authdns_factory({DOMAIN: "@ IN A 192.0.2.1"})  # published late: nothing yet
    point_at(gw, dns.port)
    gw.start()
    try:
        table = lambda: gw.runtime.key_verdicts.table  # noqa: E731
        with pytest.raises(smtplib.SMTPDataError) as exc:
            submit(gw, client_tls)  # no key seen in DNS, none before it: deferred
        assert exc.value.smtp_code == 451
        dns.reload({DOMAIN: record(only)})
        assert eventually(lambda: (v := table().get((DOMAIN, "only"))) is not None and v.published)
        submit(gw, client_tls)
        # A selector added by a reload is looked up by the next round.
        later = generate_selector(keys, DOMAIN, "later", "ed25519-sha256")
        assert gw.reload()
        assert eventually(lambda: (DOMAIN, "later") in table())
        assert not table()[(DOMAIN, "later")].published
        dns.reload({DOMAIN: record(only) + "\n" + record(later)})
        assert eventually(lambda: table()[(DOMAIN, "later")].published)
    finally:
        gw.stop()
    assert [signed_by(m.content) for m in downstream.messages] == [["only"]]


def test_a_reload_turns_the_check_on_and_it_looks_at_once(
        tmp_path, authdns_factory, downstream, cert_files, password_hash, client_tls):
    generate_selector(tmp_path / "keys", DOMAIN, "only", "ed25519-sha256")
    gw = GatewayUnderTest(
        tmp_path, inbound_url=downstream.url, outbound_url=downstream.url,
        policies=customer_policies(password_hash), cert=cert_files,
        extra={"dkim": {"check_published": False, "check_interval": 3600}})
    dns = authdns_factory({DOMAIN: "@ IN A 192.0.2.1"})  # "only" is not published
    point_at(gw, dns.port)
    gw.start()
    try:
        submit(gw, client_tls)  # off: signs by its window alone
        config = yaml.safe_load(gw.config_path.read_text())
        config["dkim"]["check_published"] = True
        gw.config_path.write_text(yaml.safe_dump(config))
        assert gw.reload()
        # Woken by the reload, not after check_interval (an hour).
        assert eventually(lambda: (DOMAIN, "only") in gw.runtime.key_verdicts.table, 10)
        with pytest.raises(smtplib.SMTPDataError) as exc:
            submit(gw, client_tls)
        assert exc.value.smtp_code == 451
    finally:
        gw.stop()
    assert [signed_by(m.content) for m in downstream.messages] == [["only"]]


def test_a_resolver_that_never_answers_delays_start_up_by_five_seconds_at_most(
        tmp_path, silent_dns, downstream, cert_files, password_hash, client_tls, caplog):
    generate_selector(tmp_path / "keys", DOMAIN, "only", "ed25519-sha256")
    gw = GatewayUnderTest(
        tmp_path, inbound_url=downstream.url, outbound_url=downstream.url,
        policies=customer_policies(password_hash), cert=cert_files,
        extra={"dkim": {"check_published": True},
               "dns": {"nameservers": [silent_dns.host], "port": silent_dns.port, "timeout": 30}})
    started = time.monotonic()
    gw.start()
    try:
        took = time.monotonic() - started
        assert 4 < took < 9, took  # FIRST_ROUND_WAIT, not the 30 s look-up timeout
        assert "go on after start-up" in caplog.text
        with pytest.raises(smtplib.SMTPDataError) as exc:
            submit(gw, client_tls)  # no verdict yet: not signed unchecked
        assert exc.value.smtp_code == 451
    finally:
        gw.stop()
    assert downstream.messages == []
