"""The OpenAPI 3.1 document of the admin API, served at /api/openapi.json.

Written by hand next to api.py; tests/test_admin_api.py validates it with
openapi-spec-validator and checks that it names every route the server has.
"""

from __future__ import annotations

from typing import Any

_OBJ = {"type": "object"}
_ERROR = {"description": "refused or failed", "content": {"application/json": {"schema": {
    "$ref": "#/components/schemas/Error"}}}}


def _ok(description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"description": description,
            "content": {"application/json": {"schema": schema or _OBJ}}}


def _op(summary: str, ok: dict[str, Any], *, errors: tuple[str, ...] = ("401", "429"),
        params: list[dict[str, Any]] | None = None, body: bool = False,
        change: bool = False) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "responses": {"200": ok}}
    for code in errors + (("403",) if change else ()):
        op["responses"][code] = _ERROR
    if params:
        op["parameters"] = params
    if body:
        op["requestBody"] = {"required": False, "content": {"application/json": {"schema": {
            "$ref": "#/components/schemas/Reason"}}}}
    if change:
        op["description"] = "Needs an operator token; recorded in the audit journal."
    return op


def _path(name: str, description: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "description": description,
            "schema": {"type": "string"}}


def _query(name: str, description: str, type_: str = "string") -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "description": description,
            "schema": {"type": type_}}


_LOGIN = _path("login", "the account's login")
_HELD = _path("id", "a held message's id, as `held list` prints it")


def document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {"title": "Portcullis admin API", "version": "1",
                 "description": "Accounts, held mail, decision trails, a feed for ticketing "
                                "systems. Every change is recorded in the audit journal."},
        "security": [{"token": []}],
        "paths": {
            "/api/openapi.json": {"get": {"summary": "this document", "security": [],
                                          "responses": {"200": _ok("the OpenAPI document")}}},
            "/api/health": {"get": _op("downstreams and store answer",
                                       _ok("healthy"), errors=("401", "429", "503"))},
            "/api/accounts": {"get": _op(
                "every account (or only the suspended ones) with its suspension",
                _ok("accounts", {"type": "object", "properties": {"accounts": {
                    "type": "array", "items": {"$ref": "#/components/schemas/AccountLine"}}}}),
                params=[_query("suspended", "1: only suspended accounts")],
                errors=("401", "429", "503"))},
            "/api/accounts/{login}": {"get": _op(
                "status, usage against every limit, recent events",
                _ok("the account", {"$ref": "#/components/schemas/Account"}),
                params=[_LOGIN], errors=("400", "401", "429", "503"))},
            "/api/accounts/{login}/suspend": {"post": _op(
                "stop the account sending, on every gateway sharing the store",
                _ok("done, or it already was (changed: false)"), params=[_LOGIN], body=True,
                errors=("400", "401", "429", "503"), change=True)},
            "/api/accounts/{login}/unsuspend": {"post": _op(
                "let a suspended account send again", _ok("done, or it was not suspended"),
                params=[_LOGIN, _query("release_held",
                                       "1: and release every message of it held for review")],
                body=True, errors=("400", "401", "429", "503"), change=True)},
            "/api/held": {"get": _op(
                "held messages, oldest first", _ok("held messages"),
                params=[_query("login", "held for this login"),
                        _query("customer", "held for this customer"),
                        _query("reason", "content, quota, suspended or inbound"),
                        _query("older_than", "held at least this many seconds ago", "number")],
                errors=("400", "401", "429"))},
            "/api/held/expire": {"post": _op(
                "apply hold.max_age / hold.at_max_age now", _ok("what was done to each"),
                change=True)},
            "/api/held/{id}": {"get": _op(
                "envelope, verdict, evidence, headers and a text preview (never HTML)",
                _ok("the held message"), params=[_HELD], errors=("401", "404", "429"))},
            "/api/held/{id}/release": {"post": _op(
                "send it on through the downstream of its direction, as it would have gone",
                _ok("delivered"), params=[_HELD], errors=("401", "404", "409", "429", "502"),
                change=True)},
            "/api/held/{id}/delete": {"post": _op(
                "drop it for good", _ok("deleted"), params=[_HELD],
                errors=("401", "404", "409", "429"), change=True)},
            "/api/decisions/{id}": {"get": _op(
                "the decision trail of a transaction or connection id (as `portcullis explain`)",
                _ok("the journal entries"), params=[_path("id", "K3M2Q7ZP4XAB.1 or K3M2Q7ZP4XAB")],
                errors=("400", "401", "404", "429", "503"))},
            "/api/feed": {"get": _op(
                "suspensions, unsuspensions and holds after a cursor, oldest first",
                _ok("items and the next cursor", {"type": "object", "properties": {
                    "items": {"type": "array", "items": _OBJ}, "next": {"type": "string"}}}),
                params=[_query("since", "the `next` of the previous answer; empty: from the start"),
                        _query("limit", "at most this many items (1-1000)", "integer")],
                errors=("400", "401", "429", "503"))},
            "/api/audit": {"get": _op(
                "the audit journal, newest first", _ok("entries"),
                params=[_query("limit", "at most this many entries", "integer")],
                errors=("400", "401", "429"))},
            "/api/reload": {"post": _op(
                "re-read the gateway file and the policy directory (as SIGHUP)",
                _ok("reloaded"), errors=("401", "409", "429"), change=True)},
        },
        "components": {
            "securitySchemes": {"token": {
                "type": "http", "scheme": "bearer",
                "description": "NAME.SECRET, made by `portcullis admin-token`; the gateway "
                               "file holds only its scrypt hash"}},
            "schemas": {
                "Error": {"type": "object", "required": ["error"],
                          "properties": {"error": {"type": "string"}}},
                "Reason": {"type": "object", "properties": {"reason": {"type": "string",
                                                                        "maxLength": 200}}},
                "Suspension": {"type": ["object", "null"], "properties": {
                    "login": {"type": "string"}, "since": {"type": "number"},
                    "reason": {"type": "string"}, "evidence": _OBJ}},
                "AccountLine": {"type": "object", "properties": {
                    "login": {"type": "string"}, "customer": {"type": "string"},
                    "suspension": {"$ref": "#/components/schemas/Suspension"}}},
                "Account": {"type": "object", "properties": {
                    "login": {"type": "string"}, "customer": {"type": "string"},
                    "shadow": {"type": "boolean"}, "connections": {"type": "integer"},
                    "suspension": {"$ref": "#/components/schemas/Suspension"},
                    "usage": {"type": "array", "items": {"type": "object", "properties": {
                        "name": {"type": "string"}, "used": {"type": "integer"},
                        "limit": {"type": ["integer", "null"]}}}},
                    "events": {"type": "array", "items": _OBJ}}},
            },
        },
    }
