"""Bearer tokens: who may call what, tokens stored only as digests, the admin token file, the audit
log, and no token value in any response, log line or database page."""

from __future__ import annotations

import hashlib
import logging
import re
import stat

import pytest

from controller import auth
from controller.store import Store
from tests.api_stub import StubController, make_api, rest  # api_stub readies eventlet for Ryu first

WEB = {"macs": ["02:00:00:00:00:01"], "labels": {"tier": "web"}}
BODIES = {
    ("PUT", "/v1/vms/{name}"): WEB,
    ("PATCH", "/v1/vms/{name}/labels"): {"set": {"a": "b"}},
    ("POST", "/v1/policies"): {"name": "r1", "src": "any", "dst": "any", "action": "allow"},
    ("PUT", "/v1/policies/{name}"): {"src": "any", "dst": "any", "action": "allow"},
    ("PUT", "/v1/policies/order"): {"order": []},
    ("PUT", "/v1/policies/default"): {"default_action": "deny"},
    ("POST", "/v1/tokens"): {"name": "another", "role": "admin"},
}


def concrete(path: str) -> str:
    return path.replace("{name}", "x1").replace("{dpid}", "0000000000000001")


def guarded(access: str) -> list[rest.Endpoint]:
    return [e for e in rest.ENDPOINTS if e.access == access]


@pytest.fixture
def api(tmp_path):
    return make_api(tmp_path)


@pytest.fixture
def reader(api):
    """A read-only token's value."""
    answer = api[1].call("POST", "/v1/tokens", {"name": "dashboard", "role": "read-only"})
    assert answer.status == 201
    return answer.json["token"]


def test_health_metrics_and_the_web_views_files_need_no_token(api):
    _, client = api
    for declared in guarded(rest.OPEN):
        path = declared.path.replace("{asset}", "app.js")
        assert client.call(declared.method, path, token="").status == 200, declared.path
    # The web view's page and files hold no data: everything it shows comes from /v1 with a token.
    assert {e.path for e in guarded(rest.OPEN)} == {"/v1/health", "/metrics", "/ui", "/ui/", "/ui/{asset}"}


@pytest.mark.parametrize("declared", guarded(rest.READ) + guarded(rest.ADMIN), ids=lambda e: f"{e.method} {e.path}")
def test_every_other_endpoint_refuses_a_missing_or_wrong_token_with_401(api, declared):
    _, client = api
    body = BODIES.get((declared.method, declared.path))
    missing = client.call(declared.method, concrete(declared.path), body, token="")
    assert missing.status == 401 and missing.headers["www-authenticate"] == 'Bearer realm="goldilocks"'
    for header in (
        "Bearer glk_not-a-real-token",
        "Basic YWRtaW46YWRtaW4=",
        "Bearer",
        f"Bearer {api[0].admin_token} extra",
        "bearer  ",
    ):
        wrong = client.call(declared.method, concrete(declared.path), body, headers={"Authorization": header}, token="")
        assert wrong.status == 401, header
        assert wrong.headers["www-authenticate"] == 'Bearer realm="goldilocks", error="invalid_token"'
        assert api[0].admin_token not in wrong.text


def test_the_scheme_name_is_case_insensitive(api):
    answer = api[1].call("GET", "/v1/vms", headers={"Authorization": f"bearer {api[0].admin_token}"}, token="")
    assert answer.status == 200


@pytest.mark.parametrize("declared", guarded(rest.ADMIN), ids=lambda e: f"{e.method} {e.path}")
def test_a_read_only_token_gets_403_on_every_admin_endpoint_and_changes_nothing(api, reader, declared):
    app, client = api
    client.call("PUT", "/v1/vms/x1", WEB)
    client.call("POST", "/v1/policies", {"name": "x1", "src": "any", "dst": "any", "action": "allow"})
    before = (app.policy, app.store.tokens(), client.call("GET", "/v1/audit").json)
    answer = client.call(declared.method, concrete(declared.path), BODIES.get((declared.method, declared.path)), token=reader)
    assert answer.status == 403 and "admin" in answer.json["error"]
    assert (app.policy, app.store.tokens(), client.call("GET", "/v1/audit").json) == before


@pytest.mark.parametrize("declared", guarded(rest.READ), ids=lambda e: f"{e.method} {e.path}")
def test_a_read_only_token_may_read(api, reader, declared):
    query = "?src=x1&dst=x1" if declared.path == "/v1/explain" else ""
    assert api[1].call(declared.method, concrete(declared.path) + query, token=reader).status not in (401, 403)


def test_a_token_is_shown_once_and_then_only_by_fingerprint(api, tmp_path):
    app, client = api
    issued = client.call("POST", "/v1/tokens", {"name": "ci", "role": "admin"})
    assert issued.status == 201 and issued.headers["location"].endswith("/v1/tokens/ci")
    value = issued.json["token"]
    assert re.fullmatch(r"glk_[A-Za-z0-9_-]{43}", value), "256 random bits, URL-safe"
    assert set(issued.json) == {"name", "role", "created", "fingerprint", "token"}
    digest = hashlib.sha256(value.encode()).hexdigest()
    listing = client.call("GET", "/v1/tokens")
    one = client.call("GET", "/v1/tokens/ci")
    assert one.json == {k: v for k, v in issued.json.items() if k != "token"}
    assert [t["name"] for t in listing.json["tokens"]] == ["admin", "ci"]
    for answer in (listing, one, client.call("GET", "/v1/audit")):
        assert value not in answer.text and digest not in answer.text and value[4:16] not in answer.text
    # The new token works, and its name is the actor of what it changes.
    assert client.call("PUT", "/v1/vms/web1", WEB, token=value).status == 201
    assert client.call("GET", "/v1/audit?limit=1").json["entries"][0]["actor"] == "ci"


def test_tokens_are_stored_as_digests_only(api, tmp_path):
    app, client = api
    value = client.call("POST", "/v1/tokens", {"name": "ci"}).json["token"]
    assert client.call("GET", "/v1/tokens/ci").json["role"] == "read-only", "read-only unless asked"
    app.store.db.execute("PRAGMA wal_checkpoint(FULL)")
    on_disk = b"".join(p.read_bytes() for p in tmp_path.glob("goldilocks.db*"))
    assert value.encode() not in on_disk and app.admin_token.encode() not in on_disk
    assert hashlib.sha256(value.encode()).hexdigest().encode() in on_disk


def test_revoking_a_token_takes_effect_at_once(api, reader):
    _, client = api
    assert client.call("GET", "/v1/vms", token=reader).status == 200
    assert client.call("DELETE", "/v1/tokens/dashboard").status == 204
    assert client.call("GET", "/v1/vms", token=reader).status == 401
    assert client.call("GET", "/v1/tokens/dashboard").status == 404
    assert client.call("DELETE", "/v1/tokens/dashboard").status == 404


def test_the_last_admin_token_cannot_be_revoked(api):
    _, client = api
    refused = client.call("DELETE", "/v1/tokens/admin")
    assert refused.status == 409 and "last admin" in refused.json["error"]
    second = client.call("POST", "/v1/tokens", {"name": "ops", "role": "admin"}).json["token"]
    assert client.call("DELETE", "/v1/tokens/admin", token=second).status == 204
    assert client.call("GET", "/v1/tokens", token=second).json["tokens"][0]["name"] == "ops"


@pytest.mark.parametrize(
    "body, status, field",
    [
        ({"name": "admin"}, 409, "name"),
        ({"name": "x", "role": "root"}, 400, "role"),
        ({"name": "has space"}, 400, "name"),
        ({"role": "admin"}, 400, "name"),
        ({"name": "x", "token": "glk_chosen"}, 400, "token"),
        ("x", 400, "body"),
    ],
)
def test_bad_token_requests_name_the_field(api, body, status, field):
    app, client = api
    before = app.store.tokens()
    answer = client.call("POST", "/v1/tokens", body)
    assert answer.status == status and answer.json["field"] == field
    assert app.store.tokens() == before


def test_the_admin_token_file_is_written_once_owner_only_and_reset_on_request(tmp_path):
    first = StubController(tmp_path)
    token_file = tmp_path / auth.ADMIN_TOKEN_FILE
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert auth.authenticate(first.store, f"Bearer {first.admin_token}").is_admin
    assert StubController(tmp_path).admin_token == first.admin_token, "a restart keeps the token"
    auth.ensure_admin_token(first.store, tmp_path, reset=True)
    new_value = token_file.read_text().strip()
    assert new_value != first.admin_token and stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert auth.authenticate(first.store, f"Bearer {first.admin_token}") is None
    assert auth.authenticate(first.store, f"Bearer {new_value}").name == "admin"
    actions = [e.action for e in first.store.audit_entries(10)]
    assert actions == ["token.reset", "token.create"]


def test_a_missing_admin_token_file_is_reported_not_silently_replaced(tmp_path, caplog):
    first = StubController(tmp_path)
    (tmp_path / auth.ADMIN_TOKEN_FILE).unlink()
    with caplog.at_level(logging.WARNING, logger="goldilocks.auth"):
        assert auth.ensure_admin_token(first.store, tmp_path) is None
    assert "--reset-admin-token" in caplog.text
    assert auth.authenticate(first.store, f"Bearer {first.admin_token}") is not None


def test_no_token_value_reaches_the_log(tmp_path, caplog, monkeypatch):
    with caplog.at_level(logging.DEBUG):
        app, client = make_api(tmp_path)
        issued = client.call("POST", "/v1/tokens", {"name": "ci", "role": "admin"}).json["token"]
        client.call("GET", "/v1/vms", headers={"Authorization": f"Bearer {issued}x"}, token="")
        monkeypatch.setattr(app.store, "add_audit", lambda *a: 1 / 0)
        assert client.call("PUT", "/v1/vms/web1", WEB, token=issued, check=False).status == 500
    assert "admin.token" in caplog.text, "the path is logged"
    assert "ZeroDivisionError" in caplog.text, "the failure is logged"
    for value in (app.admin_token, issued):
        assert value not in caplog.text and value[4:20] not in caplog.text


# -- the audit log ---------------------------------------------------------------------------------
def test_every_change_is_audited_with_actor_action_target_and_summary(api, reader):
    _, client = api
    client.call("PUT", "/v1/vms/web1", WEB)
    client.call("PUT", "/v1/vms/web1", {**WEB, "ips": ["10.0.0.1"]})
    client.call("PATCH", "/v1/vms/web1/labels", {"set": {"tier": "db"}})
    client.call(
        "POST", "/v1/policies", {"name": "r1", "src": "any", "dst": "tier=db", "services": ["tcp/5432"], "action": "deny"}
    )
    client.call("PUT", "/v1/policies/r1", {"src": "any", "dst": "any", "action": "allow"})
    client.call("PUT", "/v1/policies/r2", {"src": "any", "dst": "any", "action": "deny"})
    client.call("PUT", "/v1/policies/order", {"order": ["r2", "r1"]})
    client.call("PUT", "/v1/policies/order", {"order": ["r2", "r1"]})  # no change: no entry
    client.call("PUT", "/v1/policies/default", {"default_action": "deny"})
    client.call("DELETE", "/v1/policies/r1")
    client.call("DELETE", "/v1/vms/web1")
    client.call("DELETE", "/v1/tokens/dashboard")
    entries = client.call("GET", "/v1/audit").json["entries"]
    assert [(e["actor"], e["action"], e["target"]) for e in reversed(entries)] == [
        ("controller", "token.create", "admin"),
        ("admin", "token.create", "dashboard"),
        ("admin", "vm.create", "web1"),
        ("admin", "vm.replace", "web1"),
        ("admin", "vm.labels", "web1"),
        ("admin", "rule.create", "r1"),
        ("admin", "rule.replace", "r1"),
        ("admin", "rule.create", "r2"),
        ("admin", "rule.order", "policies"),
        ("admin", "policy.default", "default_action"),
        ("admin", "rule.delete", "r1"),
        ("admin", "vm.delete", "web1"),
        ("admin", "token.delete", "dashboard"),
    ]
    summaries = {e["action"]: e["summary"] for e in reversed(entries)}  # the latest of each action
    assert summaries["vm.replace"] == "macs 02:00:00:00:00:01; ips 10.0.0.1; labels tier=web"
    assert summaries["rule.create"] == "#1: any -> any [any] deny"
    assert summaries["rule.order"] == "r2 > r1"
    assert summaries["policy.default"] == "allow -> deny"
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", e["time"]) for e in entries)


def test_audit_pages_newest_first(api):
    _, client = api
    for i in range(7):
        client.call("PUT", f"/v1/vms/vm{i}", {"macs": [f"02:00:00:00:01:0{i}"]})
    everything = client.call("GET", "/v1/audit").json
    assert len(everything["entries"]) == 8 and everything["next_before"] is None
    pages, before = [], None
    while True:
        page = client.call("GET", "/v1/audit?limit=3" + (f"&before={before}" if before else "")).json
        pages.append(page["entries"])
        before = page["next_before"]
        if before is None:
            break
    assert [len(p) for p in pages] == [3, 3, 2]
    assert [e for p in pages for e in p] == everything["entries"]
    ids = [e["id"] for e in everything["entries"]]
    assert ids == sorted(ids, reverse=True)
    for query in ("?limit=0", "?limit=1001", "?limit=x", "?before=0", "?after=3"):
        answer = client.call("GET", "/v1/audit" + query)
        assert answer.status == 400 and answer.json["field"] in query


def test_the_audit_log_survives_a_restart(api, tmp_path):
    _, client = api
    client.call("PUT", "/v1/vms/web1", WEB)
    before = client.call("GET", "/v1/audit").json
    _, again = make_api(tmp_path)
    assert again.call("GET", "/v1/audit").json == before
    assert Store(tmp_path).audit_entries(1)[0].action == "vm.create"
