"""The commands against a fake API: which request each one sends, what it prints for people and
for machines, and its exit code."""

from __future__ import annotations

import functools
import json
import urllib.parse
from datetime import UTC, datetime, timedelta

import pytest
import yaml
from click.testing import CliRunner

from controller.cli import commands
from controller.cli.client import Client, Reply

TUNNELS = {
    "tunnels": [
        {
            "a": "hv1",
            "b": "hv2",
            "state": "up",
            "vni": 1,
            "needed": True,
            "latest_handshake": 1796033382.04,
            "handshake_age": 12.0,
            "rx_bytes": 20480,
            "tx_bytes": 18112,
            "drops": 0,
            "psk_fingerprint": "sha256:320c05e5fd203024",
            "psk_age": 1804.2,
            "ends": {},
        },
        {
            "a": "hv1",
            "b": "hv3",
            "state": "down",
            "vni": 2,
            "needed": False,
            "latest_handshake": None,
            "handshake_age": None,
            "rx_bytes": 0,
            "tx_bytes": 0,
            "drops": 3,
            "psk_fingerprint": "sha256:aaaaaaaaaaaaaaaa",
            "psk_age": 90000.0,
            "ends": {},
        },
    ],
    "encrypt_drops": 5,
    "psk_rotation_seconds": 3600.0,
    "psk_rotations": 3,
    "identity_rotations": 0,
}


class FakeApi:
    """Routes (method, path) to (status, document); records each request's method, path, query and body."""

    def __init__(self, routes: dict) -> None:
        self.routes = routes
        self.requests: list[tuple[str, str, dict, object]] = []

    def send(self, method, url, headers, body, timeout):
        parts = urllib.parse.urlsplit(url)
        query = dict(urllib.parse.parse_qsl(parts.query))
        self.requests.append((method, parts.path, query, json.loads(body) if body else None))
        status, doc = self.routes[(method, parts.path)]
        if callable(doc):
            doc = doc(query)
        return Reply(status, {}, b"" if doc is None else json.dumps(doc).encode())


@pytest.fixture
def api(monkeypatch):
    fake = FakeApi({})
    monkeypatch.setattr(commands, "Client", functools.partial(Client, transport=fake))
    return fake


def goldilocks(*args: str):
    runner = CliRunner()
    return runner.invoke(
        commands.cli, ["--url", "http://ctl:8080", *args], env={"GOLDILOCKS_TOKEN": "glk_test"}, catch_exceptions=False
    )


def test_vms_label_sends_one_patch_of_sets_and_removals(api):
    vm = {"name": "web1", "macs": ["02:00:00:00:00:01"], "ips": [], "labels": {"tier": "web"}, "location": None, "source": "api"}
    api.routes[("PATCH", "/v1/vms/web1/labels")] = (200, vm)
    result = goldilocks("vms", "label", "web1", "tier=web", "canary-", "-o", "json")
    assert result.exit_code == 0 and json.loads(result.output) == vm
    assert api.requests == [("PATCH", "/v1/vms/web1/labels", {}, {"set": {"tier": "web"}, "remove": ["canary"]})]


def test_vms_set_is_a_put_of_the_whole_vm(api):
    vm = {
        "name": "a b",
        "macs": ["02:00:00:00:00:01"],
        "ips": ["10.0.0.1"],
        "labels": {"x": ""},
        "location": None,
        "source": "api",
    }
    api.routes[("PUT", "/v1/vms/a%20b")] = (201, vm)  # the name is one quoted path segment
    result = goldilocks("vms", "set", "a b", "--mac", "02:00:00:00:00:01", "--ip", "10.0.0.1", "-l", "x=", "-o", "yaml")
    assert result.exit_code == 0 and yaml.safe_load(result.output) == vm
    assert api.requests[0][3] == {"macs": ["02:00:00:00:00:01"], "ips": ["10.0.0.1"], "labels": {"x": ""}}


def test_policy_add_maps_options_to_the_apis_fields(api):
    rule = {
        "name": "web-to-db",
        "src": "tier=web",
        "dst": "tier=db",
        "services": ["tcp/5432", "icmp"],
        "action": "encrypt",
        "position": 0,
    }
    api.routes[("POST", "/v1/policies")] = (201, rule)
    result = goldilocks(
        "policy",
        "add",
        "web-to-db",
        "--from",
        "tier=web",
        "--to",
        "tier=db",
        "--service",
        "tcp/5432",
        "--service",
        "icmp",
        "--action",
        "encrypt",
        "--position",
        "0",
    )
    assert result.exit_code == 0
    assert result.output.splitlines() == [
        "POS  NAME       FROM      TO       SERVICES       ACTION",
        "0    web-to-db  tier=web  tier=db  tcp/5432,icmp  encrypt",
    ]
    body = {"name": "web-to-db", "src": "tier=web", "dst": "tier=db", "action": "encrypt", "services": ["tcp/5432", "icmp"]}
    assert api.requests == [("POST", "/v1/policies", {"position": "0"}, body)]


def test_explain_sends_proto_and_dport(api):
    api.routes[("GET", "/v1/explain")] = (400, {"error": "dst: no VM named 'x'", "field": "dst"})
    result = CliRunner().invoke(
        commands.cli,
        ["--url", "http://ctl", "explain", "a", "x", "--proto", "tcp", "--port", "443"],
        env={"GOLDILOCKS_TOKEN": "t"},
    )
    assert result.exit_code == 1
    assert result.output == "Error: dst: no VM named 'x' (HTTP 400, field: dst)\n"
    assert api.requests[0][2] == {"src": "a", "dst": "x", "proto": "tcp", "dport": "443"}


def test_agents_token_sends_the_ttl_in_seconds(api):
    api.routes[("POST", "/v1/agents/tokens")] = (
        201,
        {
            "token": "gle_x",
            "fingerprint": "sha256:1",
            "expires": "2026-12-01T10:00:00.000Z",
            "ca_certificate": "PEM",
            "ca_fingerprint": "sha256:2",
            "agent_port": 6654,
        },
    )
    assert goldilocks("agents", "token", "--ttl", "1h30m").exit_code == 0
    assert api.requests[0][3] == {"ttl_seconds": 5400.0}
    goldilocks("agents", "token")
    assert api.requests[1][3] == {}


def test_tunnels_table_shows_state_handshake_age_and_key_age(api):
    api.routes[("GET", "/v1/tunnels")] = (200, TUNNELS)
    lines = goldilocks("tunnels").output.splitlines()
    assert lines[0].split() == ["PAIR", "STATE", "VNI", "HANDSHAKE", "RX", "TX", "DROPS", "PSK", "PSK", "AGE", "NEEDED"]
    assert lines[1].split() == [
        "hv1|hv2",
        "up",
        "1",
        "12s",
        "ago",
        "20.0KiB",
        "17.7KiB",
        "0",
        "sha256:320c05e5fd203024",
        "30m",
        "yes",
    ]
    assert lines[2].split() == ["hv1|hv3", "down", "2", "-", "0B", "0B", "3", "sha256:aaaaaaaaaaaaaaaa", "1d1h", "no"]
    assert lines[3] == "encrypt drops: 5; pre-shared keys rotate every 1h (3 so far); identity rotations: 0"
    assert json.loads(goldilocks("tunnels", "-o", "json").output) == TUNNELS


def audit_pages(total: int, page_size: int, start: datetime):
    """A fake /v1/audit of `total` entries one minute apart (id 1 oldest), paged like the API."""

    def page(query):
        limit = min(int(query.get("limit", 100)), page_size)
        before = int(query.get("before", total + 1))
        ids = list(range(before - 1, 0, -1))[:limit]
        entries = [
            {
                "id": i,
                "time": (start + timedelta(minutes=i)).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
                "actor": "admin",
                "action": "vm.labels",
                "target": "web1",
                "summary": f"step {i}",
            }
            for i in ids
        ]
        return {"entries": entries, "next_before": ids[-1] if len(ids) == limit and ids[-1] > 1 else None}

    return page


def test_audit_since_reads_page_after_page_until_it_reaches_the_time(api, monkeypatch):
    start = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)
    api.routes[("GET", "/v1/audit")] = (200, audit_pages(250, 40, start))  # the API gives at most 40 a page here
    since = (start + timedelta(minutes=101)).isoformat()
    doc = json.loads(goldilocks("audit", "--since", since, "-o", "json").output)
    assert [e["id"] for e in doc["entries"]] == list(range(250, 100, -1)) and doc["next_before"] is None
    assert [r[2].get("before") for r in api.requests] == [None, "211", "171", "131"]

    api.requests.clear()
    doc = json.loads(goldilocks("audit", "--limit", "45", "-o", "json").output)
    assert [e["id"] for e in doc["entries"]] == list(range(250, 205, -1)) and doc["next_before"] == 206
    assert [(r[2].get("limit"), r[2].get("before")) for r in api.requests] == [("45", None), ("5", "211")]

    api.requests.clear()
    doc = json.loads(goldilocks("audit", "--since", "1d", "-o", "json").output)  # older than the whole log: everything
    assert len(doc["entries"]) == 250 and doc["entries"][-1]["id"] == 1


def test_deleting_prints_a_line_for_people_and_nothing_for_machines(api):
    api.routes[("DELETE", "/v1/vms/web1")] = (204, None)
    assert goldilocks("vms", "delete", "web1").output == "VM web1 deleted\n"
    assert goldilocks("vms", "delete", "web1", "-o", "json").output == ""


def test_help_and_completion_need_no_controller_and_no_config(tmp_path):
    env = {"XDG_CONFIG_HOME": str(tmp_path), "HOME": str(tmp_path)}
    (tmp_path / "goldilocks").mkdir()
    (tmp_path / "goldilocks" / "cli.yaml").write_text("{{ broken")
    runner = CliRunner()
    assert runner.invoke(commands.cli, ["vms", "--help"], env=env).exit_code == 0
    assert "_GOLDILOCKS_COMPLETE" in runner.invoke(commands.cli, ["completion", "bash"], env=env).output
    broken = runner.invoke(commands.cli, ["status"], env=env)
    assert broken.exit_code == 2 and "cli.yaml: not valid YAML" in broken.output


def test_a_token_written_over_a_file_others_can_read_is_never_readable_by_them(tmp_path):
    """--token-out over an existing 0644 file: the token lands in a new 0600 file that replaces it,
    never in the old one; a place that cannot be written is one line naming it, not a traceback."""
    import stat

    target = tmp_path / "token"
    target.write_text("old\n")
    target.chmod(0o644)
    commands._write_secret(str(target), "glk_secret\n")
    assert target.read_text() == "glk_secret\n" and stat.S_IMODE(target.stat().st_mode) == 0o600
    with pytest.raises(commands.CliError) as refused:
        commands._write_secret(str(tmp_path / "missing" / "token"), "glk_secret\n")
    assert "missing" in refused.value.message and "glk_secret" not in refused.value.message
