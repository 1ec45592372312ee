"""The admin API over HTTPS against a real gateway: every endpoint, each role, each
refusal; the OpenAPI document validated with openapi-spec-validator; held mail
released to a real recording MTA; decision trails of real SMTP refusals."""

from __future__ import annotations

import argparse
import io
import json
import smtplib
import time

import pytest
from openapi_spec_validator import validate

from gateway.accounts_commands import add_accounts_parser
from gateway.admin.openapi import document
from tests.support.admin import AdminClient, hold_one, start_gateway, tokens
from tests.support.reply_ids import ID

OPERATOR, VIEWER = tokens()["operator"][0], tokens()["read-only"][0]


@pytest.fixture
def gw(tmp_path, downstream, cert_files, password_hash):
    gateway = start_gateway(tmp_path, downstream, cert_files, password_hash)
    try:
        yield gateway
    finally:
        gateway.stop()


@pytest.fixture
def api(gw, client_tls):
    return AdminClient(gw.gateway.admin.bound_port, client_tls, OPERATOR)


# --- the document ------------------------------------------------------------------

def test_openapi_document_is_valid_and_names_every_route(gw, api):
    answer = api.get("/api/openapi.json", token="")  # no secret needed to read it
    assert answer.status == 200
    served = answer.json
    validate(served)  # raises on an invalid OpenAPI 3.1 document
    routes = {(r.method.lower(), r.resource.canonical)
              for r in gw.gateway.admin.app().router.routes() if r.resource is not None
              and r.resource.canonical.startswith("/api/") and r.method != "HEAD"}
    documented = {(m, p) for p, ops in served["paths"].items() for m in ops}
    assert routes == documented
    assert served == document()


# --- refusals ---------------------------------------------------------------------------

def test_no_token_and_a_wrong_token_are_refused_and_logged(api, caplog):
    assert api.get("/api/health", token="").status == 401
    wrong = api.get("/api/health", token="desk." + "A" * 43)
    assert wrong.status == 401 and "invalid_token" in wrong.headers["WWW-Authenticate"]
    assert api.get("/api/health", token="nobody.secret").status == 401
    assert api.get("/api/health", token=VIEWER).status == 200
    refusals = [r.getMessage() for r in caplog.records if "admin: refused" in r.getMessage()]
    assert len(refusals) == 3 and "127.0.0.1" in refusals[0]


def test_a_read_only_token_reads_but_changing_is_refused_and_audited(api):
    assert api.get("/api/accounts", token=VIEWER).status == 200
    refused = api.post("/api/accounts/bob@acme.example/suspend", {"reason": "x"}, token=VIEWER)
    assert refused.status == 403 and refused.json == {"error": "this token is read-only"}
    assert api.get("/api/accounts/bob@acme.example").json["suspension"] is None
    entry = api.get("/api/audit").json["entries"][0]
    assert (entry["who"], entry["role"], entry["action"], entry["outcome"], entry["from"]) == (
        "viewer", "read-only", "suspend", "refused", "127.0.0.1")


def test_a_token_in_the_url_is_refused(api):
    answer = api.get(f"/api/health?token={OPERATOR}", token="")
    assert answer.status == 400 and "never in a URL" in answer.json["error"]


def test_too_many_refusals_from_one_address_get_429_even_with_a_good_token(api):
    for _ in range(10):
        assert api.get("/api/health", token="desk.wrong").status == 401
    blocked = api.get("/api/health")
    assert blocked.status == 429 and int(blocked.headers["Retry-After"]) >= 1


def test_security_headers_on_every_answer(api):
    for answer in (api.get("/api/health"), api.get("/api/health", token="")):
        csp = answer.headers["Content-Security-Policy"]
        assert "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
        assert answer.headers["Referrer-Policy"] == "no-referrer"
        assert answer.headers["X-Frame-Options"] == "DENY"
        assert answer.headers["Strict-Transport-Security"].startswith("max-age=")


# --- accounts ------------------------------------------------------------------------

def test_suspend_and_unsuspend_with_a_reason_seen_by_the_cli_too(gw, api):
    done = api.post("/api/accounts/Alice@Acme.Example/suspend", {"reason": "spam run\r\nX-Evil: 1"})
    assert done.status == 200 and done.json == {"login": "alice@acme.example", "suspended": True,
                                                "changed": True}
    assert api.post("/api/accounts/alice@acme.example/suspend").json["changed"] is False
    account = api.get("/api/accounts/alice@acme.example").json
    assert account["suspension"]["reason"] == "spam run X-Evil: 1"  # one line, always
    assert account["suspension"]["evidence"] == {"by": "desk"}
    assert account["customer"] == "acme"
    names = {u["name"]: u for u in account["usage"]}
    assert names["messages_per_hour"]["limit"] is not None and names["messages_per_hour"]["used"] == 0
    assert [e["kind"] for e in account["events"]] == ["suspended"]
    assert [a["login"] for a in api.get("/api/accounts?suspended=1").json["accounts"]] == [
        "alice@acme.example"]
    # The CLI reads the same store through the same actions.
    parser = argparse.ArgumentParser()
    add_accounts_parser(parser.add_subparsers())
    out = io.StringIO()
    args = parser.parse_args(["accounts", "-c", str(gw.config_path), "status", "alice@acme.example"])
    assert args.func(args, out) == 0
    assert "SUSPENDED" in out.getvalue() and "spam run X-Evil: 1" in out.getvalue()
    assert api.post("/api/accounts/alice@acme.example/unsuspend", {"reason": "cleaned"}).json[
        "changed"] is True
    assert api.get("/api/accounts/alice@acme.example").json["suspension"] is None
    audit = [(a["action"], a["target"], a["outcome"]) for a in api.get("/api/audit").json["entries"]]
    assert audit[:3] == [("unsuspend", "alice@acme.example", "done"),
                         ("suspend", "alice@acme.example", "unchanged"),
                         ("suspend", "alice@acme.example", "done")]


@pytest.mark.parametrize("login", ["a%20b", "bad%0D%0AX-Injected:%201", "x%2F..%2F..%2Fetc"])
def test_a_login_that_cannot_be_one_is_refused(api, login):
    assert api.post(f"/api/accounts/{login}/suspend").status in (400, 404)
    assert api.get(f"/api/accounts/{login}").status in (400, 404)


def test_a_reason_that_is_not_text_is_refused(api):
    assert api.post("/api/accounts/bob@acme.example/suspend", {"reason": 5}).status == 400


# --- held mail -----------------------------------------------------------------------

def test_held_list_filters_show_release_to_the_downstream(gw, api, downstream):
    old = hold_one(gw, now=time.time() - 7200)
    other = hold_one(gw, login="carol@globex.example", reason="quota")
    assert [h["id"] for h in api.get("/api/held").json["held"]] == [old.id, other.id]
    assert [h["id"] for h in api.get("/api/held?customer=globex").json["held"]] == [other.id]
    assert [h["id"] for h in api.get("/api/held?reason=content").json["held"]] == [old.id]
    assert [h["id"] for h in api.get("/api/held?login=alice@acme.example").json["held"]] == [old.id]
    assert [h["id"] for h in api.get("/api/held?older_than=3600").json["held"]] == [old.id]
    assert api.get("/api/held?older_than=-1").status == 400
    shown = api.get(f"/api/held/{old.id}").json
    assert shown["evidence"] == {"score": 16.5, "symbols": ["GTUBE"]}
    assert {"name": "Subject", "value": "<script>alert(1)</script> quarterly figures"} in shown["headers"]
    # HTML as text: no tag, no script, no remote image.
    assert "Hello friend" in shown["preview"]
    assert "<" not in shown["preview"] and "steal" not in shown["preview"]
    released = api.post(f"/api/held/{old.id}/release")
    assert released.status == 200 and released.json["delivered"] == ["friend@elsewhere.example"]
    got = downstream.messages[-1]
    assert got.rcpt_tos == ["friend@elsewhere.example"] and b"quarterly figures" in got.content
    assert api.get(f"/api/held/{old.id}").status == 404
    assert api.post(f"/api/held/{old.id}/release").status == 404


def test_held_delete_and_expire_and_the_read_only_role(gw, api):
    one, two = hold_one(gw), hold_one(gw, now=time.time() - 30 * 86400)
    assert api.post(f"/api/held/{one.id}/delete", token=VIEWER).status == 403
    assert api.post(f"/api/held/{one.id}/release", token=VIEWER).status == 403
    assert api.get(f"/api/held/{one.id}", token=VIEWER).status == 200
    assert api.post(f"/api/held/{one.id}/delete").json == {"id": one.id, "deleted": True}
    expired = api.post("/api/held/expire").json["decisions"]
    assert [(d["id"], d["action"]) for d in expired] == [(two.id, "released")]
    assert api.get("/api/held").json["held"] == []


@pytest.mark.parametrize("bad", ["..%2F..%2Fetc%2Fpasswd", "20260101000000-abc", "%2E%2E",
                                 "20260101000000-0123456789%2F..%2Fx"])
def test_held_ids_never_reach_the_file_system_unchecked(gw, api, bad):
    hold_one(gw)
    assert api.get(f"/api/held/{bad}").status == 404
    assert api.post(f"/api/held/{bad}/delete").status == 404
    assert len(api.get("/api/held").json["held"]) == 1


# --- decisions, feed, reload, health ------------------------------------------------

def test_a_decision_trail_of_a_real_refusal(gw, api):
    with smtplib.SMTP("127.0.0.1", gw.ports["inbound"], timeout=20) as c:
        c.ehlo("client.example")
        c.mail("news@sender.example")
        code, text = c.rcpt("victim@elsewhere.example")
    assert code == 550
    txid = ID.search(text).group(1).decode()
    deadline = time.monotonic() + 10
    while (answer := api.get(f"/api/decisions/{txid}")).status == 404 and time.monotonic() < deadline:
        time.sleep(0.1)  # the journal is written just after the reply
    assert answer.status == 200 and answer.json["id"] == txid
    steps = answer.json["entries"][0]["record"]["steps"]
    assert steps[0]["rule"] == "relay" and steps[0]["outcome"] == "refused"
    assert api.get(f"/api/decisions/{txid}", token=VIEWER).status == 200
    assert api.get("/api/decisions/not-an-id").status == 400
    assert api.get("/api/decisions/AAAAAAAAAAAA.9").status == 404


def test_feed_of_suspensions_and_holds_since_a_cursor(gw, api):
    first = api.get("/api/feed").json
    assert first["items"] == []
    api.post("/api/accounts/bob@acme.example/suspend", {"reason": "phished"})
    held = hold_one(gw)
    page = api.get(f"/api/feed?since={first['next']}").json
    assert [(i["kind"], i["subject"]) for i in page["items"]] == [
        ("suspended", "bob@acme.example"), ("held", held.id)] or [
        (i["kind"], i["subject"]) for i in page["items"]] == [("held", held.id), ("suspended",
                                                                                 "bob@acme.example")]
    assert api.get(f"/api/feed?since={page['next']}").json["items"] == []
    api.post("/api/accounts/bob@acme.example/unsuspend")
    later = api.get(f"/api/feed?since={page['next']}").json["items"]
    assert [(i["kind"], i["subject"], i["details"]["by"]) for i in later] == [
        ("unsuspended", "bob@acme.example", "desk")]
    assert api.get("/api/feed?limit=x").status == 400


def test_reload_and_health(gw, api):
    assert api.post("/api/reload", token=VIEWER).status == 403
    answer = api.post("/api/reload")
    assert answer.status == 200 and answer.json == {"outcome": "reloaded"}
    health = api.get("/api/health", token=VIEWER)
    assert health.status == 200 and health.json["ok"] is True
    assert health.json["suspended_accounts"] == 0
    assert json.dumps(api.get("/api/audit").json).count('"reload"') == 2  # refused, then done


def test_admin_token_prints_a_token_once_and_a_hash_the_config_takes(tmp_path):
    import subprocess
    import sys

    from gateway.admin.tokens import hash_matches
    from gateway.config.admin import AdminToken

    done = subprocess.run([sys.executable, "-m", "gateway.cli", "admin-token", "desk", "--role",
                           "operator"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    token = done.stdout.split("give it to desk): ")[1].split()[0]
    hashed = done.stdout.split("hash: '")[1].split("'")[0]
    assert token.startswith("desk.") and token.split(".", 1)[1] not in hashed
    AdminToken(name="desk", role="operator", hash=hashed)  # the config accepts it
    assert hash_matches(token.split(".", 1)[1], hashed)
    assert not hash_matches("wrong", hashed)
    bad = subprocess.run([sys.executable, "-m", "gateway.cli", "admin-token", "Bad Name"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "Traceback" not in bad.stderr


def test_unsuspend_with_release_held_is_the_desks_one_step(gw, api, downstream):
    assert api.post("/api/accounts/alice@acme.example/suspend").json["changed"] is True
    first, second = hold_one(gw, reason="suspended"), hold_one(gw, reason="suspended")
    hold_one(gw, login="bob@acme.example")  # someone else's: stays
    done = api.post("/api/accounts/alice@acme.example/unsuspend?release_held=1")
    assert done.status == 200 and done.json["changed"] is True
    assert sorted(r["id"] for r in done.json["released"]) == sorted([first.id, second.id])
    assert all(r["removed"] for r in done.json["released"])
    assert [h["login"] for h in api.get("/api/held").json["held"]] == ["bob@acme.example"]
    assert len(downstream.messages) == 2
    events = [e["kind"] for e in api.get("/api/accounts/alice@acme.example").json["events"]]
    assert events.count("held released") == 2 and "unsuspended" in events
