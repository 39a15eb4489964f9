"""The `goldilocks` CLI as an operator runs it: each command a real subprocess against a real
controller process (with an emulated switch and an agent that said hello), checking what the
user sees: tables, JSON and YAML equal to the API's answers, exit codes 0/1/2, errors naming the
field, where the URL and token come from, and that a token is printed only when it is created."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml

from apps.forwarding import MISS_COOKIE
from bench.ofswitch import OFPP_LOCAL, EmulatedSwitch, Fabric
from crypto import protocol
from mininet_scenarios.harness import REPO, ControllerProcess, free_port
from tests.integration.helpers import wait_until
from tests.integration.test_agent_channel import connect, enroll, exchange, token

HV1, HV2 = HYPERVISORS = (0x21, 0x22)
VM_MACS = {HV1: "02:00:00:aa:21:01", HV2: "02:00:00:aa:22:01"}
CLEAN_ENV = {k: v for k, v in os.environ.items() if not k.startswith("GOLDILOCKS_") and k not in ("COLUMNS", "LINES")}


@pytest.fixture(scope="module")
def ctl():
    controller = ControllerProcess(extra_args=["--no-ovsdb-inventory"]).start()
    try:
        yield controller
    finally:
        controller.stop()


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    """HOME and XDG_CONFIG_HOME of every run: no config file unless a test writes one."""
    return tmp_path_factory.mktemp("home")


@contextlib.contextmanager
def two_hypervisors(of_port: int):
    """Two emulated hypervisor switches (bridges br-hv1 and br-hv2, dpids HV1 and HV2) cabled by
    their port 2, each with a VM on port 1, connected to the controller while the block runs."""
    fabric = Fabric(MISS_COOKIE, reconnect=False)
    for n, dpid in enumerate(HYPERVISORS, 1):
        ports = {1: (f"hv{n}-vm", bytes([2, 0, 0, 0, dpid, 1])), 2: (f"hv{n}-up", bytes([2, 0, 0, 0, dpid, 2])),
                 OFPP_LOCAL: (f"br-hv{n}", bytes([2, 0, 0, 0, dpid, 0xFE]))}  # fmt: skip
        fabric.add(EmulatedSwitch(dpid, ports))
    fabric.cable((HV1, 2), (HV2, 2))
    loop = asyncio.new_event_loop()
    tasks = [loop.create_task(fabric.run_switch(s, "127.0.0.1", of_port)) for s in fabric.switches.values()]

    def run_switches() -> None:  # until the block ends and every switch is cancelled (and has closed)
        loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))

    thread = threading.Thread(target=run_switches, daemon=True)
    thread.start()
    try:
        yield fabric, loop
    finally:
        loop.call_soon_threadsafe(lambda: [task.cancel() for task in tasks])
        thread.join(10)
        loop.close()


def say_hello(ctl, hypervisor: str, bridge: str, stack: contextlib.ExitStack) -> None:
    """Enroll an agent for `hypervisor` and keep its session open (until `stack` closes) after its hello."""
    issued = token(ctl)
    answer, key_pem = enroll(ctl, issued, hypervisor)
    assert answer["type"] == "enrolled", answer
    hello = {"type": "hello", "hypervisor": hypervisor, "software": "test", "wg_public_key": "A" * 43 + "=", "listen_port": 51820,
             "bridge": bridge, "underlay": {"ip": "192.0.2.1", "mac": "02:00:00:00:00:aa", "port": "eth1"}}  # fmt: skip
    session = stack.enter_context(connect(ctl, issued["ca_certificate"], answer["certificate"], key_pem))
    welcome = exchange(session, protocol.encode(hello))
    assert welcome and welcome[0]["type"] == "welcome", welcome


@pytest.fixture(scope="module")
def fabric(ctl):
    """Two hypervisor switches whose VMs the controller learned, and their agents hv1 and hv2,
    enrolled and connected (they said hello and stay silent), for the whole module."""
    with two_hypervisors(ctl.of_port) as (switches, loop), contextlib.ExitStack() as sessions:

        def learned() -> bool:
            if {h["mac"] for h in ctl.api("GET", "/v1/topology")["hosts"]} == set(VM_MACS.values()):
                return True
            for dpid, mac in VM_MACS.items():  # each VM asks for its gateway until the controller knows it
                mac_bytes = bytes.fromhex(mac.replace(":", ""))
                loop.call_soon_threadsafe(switches.play_arp, dpid, 1, mac_bytes, bytes([10, 0, 0, dpid]), bytes([10, 0, 0, 254]))
            return False

        assert wait_until(learned, 20, interval=0.3), ctl.log_tail()
        say_hello(ctl, "hv1", "br-hv1", sessions)
        say_hello(ctl, "hv2", "br-hv2", sessions)
        yield ctl


def run(ctl, *args: str, home: Path, env: dict | None = None, url: bool = True, token_file: str | Path | None = "admin"):
    """`python -m controller.cli ARGS` as a user would run it; by default with --url and the admin token file."""
    flags: list[str] = []
    if url:
        flags += ["--url", ctl.rest_url]
    if token_file == "admin":
        token_file = Path(ctl.state_dir, "admin.token")
    if token_file is not None:
        flags += ["--token-file", str(token_file)]
    full_env = {**CLEAN_ENV, "PYTHONPATH": str(REPO), "HOME": str(home), "XDG_CONFIG_HOME": str(home / "config"), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "controller.cli", *flags, *args], capture_output=True, text=True, env=full_env, timeout=60
    )


def ok(result) -> str:
    assert result.returncode == 0, f"exit {result.returncode}: {result.stderr}"
    assert result.stderr == "", result.stderr
    return result.stdout


def failed(result, code: int = 1) -> str:
    assert result.returncode == code, f"exit {result.returncode}, wanted {code}: {result.stdout} {result.stderr}"
    assert result.stdout == "", "an error must not print anything on stdout"
    return result.stderr


def rows(table: str) -> list[list[str]]:
    """A plain table (not a terminal: no colours, one row per line) split into cells."""
    return [line.split() for line in table.splitlines() if line.strip()]


# -- status, topology, agents, tunnels ---------------------------------------------------------------
def test_status_is_one_summary_of_switches_agents_tunnels_and_quarantine(fabric, home):
    ctl = fabric
    ctl.api("PUT", "/v1/vms/st1", {"macs": ["02:00:00:00:01:01"]}, expect=201)
    ctl.api("POST", "/v1/quarantine", {"vm": "st1", "reason": "IDS: beaconing"}, expect=201)
    try:
        table = ok(run(ctl, "status", home=home))
        assert f"{ctl.rest_url}: ok" in table
        assert "switches:    2 connected, 2 synced (2 hypervisor)" in table
        assert "fabric:      1 links, 2 hosts" in table
        assert "agents:      2 enrolled, 2 connected" in table
        assert "tunnels:     0 up, 0 pending, 0 down; encrypt drops 0" in table
        assert "quarantine:  1 VM" in table
        assert ["st1", "isolate", "IDS:", "beaconing", "admin"] == rows(table)[-1][:5]

        doc = json.loads(ok(run(ctl, "status", "-o", "json", home=home)))
        assert doc["quarantine"] == ctl.api("GET", "/v1/quarantine")["quarantine"]
        assert [(a["hypervisor"], a["connected"]) for a in doc["agents"]] == [("hv1", True), ("hv2", True)]
        assert doc["tunnels"] == ctl.api("GET", "/v1/tunnels")
        assert doc["policies"] == ctl.api("GET", "/v1/policies")
        assert [s["dpid"] for s in doc["switches"]] == [f"{dpid:016x}" for dpid in HYPERVISORS]
        assert set(doc["health"]) == set(ctl.api("GET", "/v1/health"))
    finally:
        ctl.api("DELETE", "/v1/quarantine/st1", expect=204)
        ctl.api("DELETE", "/v1/vms/st1", expect=204)


def test_topology_shows_switches_links_and_hosts_by_name(fabric, home):
    table = rows(ok(run(fabric, "topology", home=home)))
    assert ["0000000000000021", "br-hv1", "hypervisor", "yes", "2", "1"] == next(r for r in table if r[0].endswith("21"))[:6]
    assert ["br-hv1:2", "br-hv2:2"] in table  # the link, its ends named by bridge
    assert [VM_MACS[HV2], "10.0.0.34", "br-hv2:1"] in table  # a host, where it was learned
    doc = json.loads(ok(run(fabric, "topology", "-o", "json", home=home)))
    api = fabric.api("GET", "/v1/topology")
    assert [s["dpid"] for s in doc["switches"]] == [s["dpid"] for s in api["switches"]]
    assert doc["links"] == api["links"] and doc["hosts"] == api["hosts"]


def test_flows_shows_the_desired_table_of_a_switch_by_dpid_or_bridge_name(fabric, home):
    api = fabric.api("GET", f"/v1/switches/{HV1:016x}/flows")
    assert json.loads(ok(run(fabric, "flows", "br-hv1", "-o", "json", home=home))) == api
    assert json.loads(ok(run(fabric, "flows", f"{HV1:016x}", "-o", "json", home=home))) == api
    table = rows(ok(run(fabric, "flows", "21", home=home)))
    assert table[0] == ["Desired", "flows", "of", f"{HV1:016x}"] and table[1] == ["TABLE", "PRIO", "COOKIE", "MATCH", "ACTIONS"]
    assert sorted(r[2] for r in table[2 : 2 + len(api["flows"])]) == sorted(f["cookie"] for f in api["flows"])
    assert "no switch named 'br-nope' (known: br-hv1, br-hv2)" in failed(run(fabric, "flows", "br-nope", home=home))
    assert "no switch with dpid 00000000000000ff" in failed(run(fabric, "flows", "00000000000000ff", home=home))


def test_an_encrypt_rule_makes_a_tunnel_that_tunnels_status_and_explain_show(fabric, home):
    ctl = fabric
    ctl.api("PUT", "/v1/vms/enc-a", {"macs": [VM_MACS[HV1]], "labels": {"app": "a"}}, expect=201)
    ctl.api("PUT", "/v1/vms/enc-b", {"macs": [VM_MACS[HV2]], "labels": {"app": "b"}}, expect=201)
    try:
        assert ["enc-a", "br-hv1:1", VM_MACS[HV1]] == next(
            r for r in rows(ok(run(ctl, "vms", "list", home=home))) if r[0] == "enc-a"
        )[:3]
        ok(run(ctl, "policy", "add", "a-to-b", "--from", "app=a", "--to", "app=b", "--action", "encrypt", home=home))
        api = ctl.api("GET", "/v1/tunnels")
        (pair,) = api["tunnels"]
        assert (pair["a"], pair["b"], pair["needed"]) == ("hv1", "hv2", True)
        table = rows(ok(run(ctl, "tunnels", home=home)))
        assert table[0] == ["PAIR", "STATE", "VNI", "HANDSHAKE", "RX", "TX", "DROPS", "PSK", "PSK", "AGE", "NEEDED"]
        assert table[1][:4] == ["hv1|hv2", pair["state"], str(pair["vni"]), "-"] and pair["psk_fingerprint"] in table[1]
        assert table[1][-1] == "yes" and table[2][:3] == ["encrypt", "drops:", "0;"]
        assert (
            json.loads(ok(run(ctl, "tunnels", "-o", "json", home=home)))["tunnels"][0]["psk_fingerprint"]
            == pair["psk_fingerprint"]
        )

        counts = {state: sum(t["state"] == state for t in api["tunnels"]) for state in ("up", "pending", "down")}
        line = f"tunnels:     {counts['up']} up, {counts['pending']} pending, {counts['down']} down"
        assert line in ok(run(ctl, "status", home=home))
        explained = ok(run(ctl, "explain", "enc-a", "enc-b", home=home))
        assert "decided by:  rule a-to-b (position 0)" in explained
        assert (
            f"encryption:  tunnel, {'delivered' if pair['state'] != 'down' else 'DROPPED'}: tunnel hv1|hv2 is {pair['state']}"
            in explained
        )

        assert yaml.safe_load(ok(run(ctl, "keys", "rotate", "-o", "yaml", home=home))) == {"rotated": 1}
        assert ctl.api("GET", "/v1/tunnels")["tunnels"][0]["psk_fingerprint"] != pair["psk_fingerprint"]
    finally:
        ctl.api("DELETE", "/v1/policies/a-to-b", expect=None)
        ctl.api("DELETE", "/v1/vms/enc-a", expect=204)
        ctl.api("DELETE", "/v1/vms/enc-b", expect=204)


def test_agents_list_show_token_rotate_revoke(fabric, home, tmp_path):
    ctl = fabric
    table = ok(run(ctl, "agents", "list", home=home))
    header, hv1 = rows(table)[0], next(r for r in rows(table) if r[0] == "hv1")
    assert header[:3] == ["HYPERVISOR", "INDEX", "CONNECTED"] and hv1[2:5] == ["yes", "br-hv1", "192.0.2.1"]
    shown = json.loads(ok(run(ctl, "agents", "show", "hv1", "-o", "json", home=home)))
    api = ctl.api("GET", "/v1/agents/hv1")
    assert {k: v for k, v in shown.items() if k != "last_report_age"} == {k: v for k, v in api.items() if k != "last_report_age"}
    assert ["bridge:", "br-hv1"] in rows(ok(run(ctl, "agents", "show", "hv1", home=home)))

    # An enrollment token is printed, once, and works; --token-out keeps it off the screen.
    issued = json.loads(ok(run(ctl, "agents", "token", "--ttl", "10m", "-o", "json", home=home)))
    assert issued["token"].startswith("gle_") and "BEGIN CERTIFICATE" in issued["ca_certificate"]
    answer, _ = enroll(ctl, issued, "hv9")
    assert answer["type"] == "enrolled"
    shown = ok(run(ctl, "agents", "token", home=home))
    assert shown.count("gle_") == 1 and "not shown again" in shown
    out = ok(run(ctl, "agents", "token", "--token-out", str(tmp_path / "t"), "--ca-out", str(tmp_path / "ca.pem"), home=home))
    assert "gle_" not in out and f"written to {tmp_path / 't'}" in out
    assert (tmp_path / "t").read_text().startswith("gle_") and stat.S_IMODE((tmp_path / "t").stat().st_mode) == 0o600
    assert "BEGIN CERTIFICATE" in (tmp_path / "ca.pem").read_text()
    assert "ttl" in failed(run(ctl, "agents", "token", "--ttl", "soon", home=home), 2).lower()
    assert "ttl_seconds" in failed(run(ctl, "agents", "token", "--ttl", "8d", home=home))

    rotation = json.loads(ok(run(ctl, "agents", "rotate", "hv1", "-o", "json", home=home)))
    assert rotation["hypervisor"] == "hv1" and rotation["rotation"]
    assert "not connected" in failed(run(ctl, "agents", "rotate", "hv9", home=home))  # 409 from the API

    assert ok(run(ctl, "agents", "revoke", "hv9", home=home)) == "agent hv9 revoked\n"
    assert "no enrolled agent" in failed(run(ctl, "agents", "revoke", "hv9", "-o", "json", home=home))
    listed = json.loads(ok(run(ctl, "agents", "list", "-o", "json", home=home)))["agents"]
    assert [a["hypervisor"] for a in listed] == ["hv1", "hv2"]


# -- VMs, policy, explain, quarantine -----------------------------------------------------------------
def test_vms_set_list_label_show_delete(ctl, home):
    created = json.loads(ok(run(ctl, "vms", "set", "web1", "--mac", "02:00:00:00:00:01", "--ip", "10.0.0.1",
                                "-l", "tier=web", "-l", "tenant=blue", "-o", "json", home=home)))  # fmt: skip
    assert created == ctl.api("GET", "/v1/vms/web1")
    ok(run(ctl, "vms", "set", "db1", "--mac", "02:00:00:00:00:02", "--label", "tier=db", home=home))

    table = rows(ok(run(ctl, "vms", "list", home=home)))
    assert table[0] == ["NAME", "HYPERVISOR", "MACS", "IPS", "LABELS", "QUARANTINED", "SOURCE"]
    assert ["web1", "-", "02:00:00:00:00:01", "10.0.0.1", "tenant=blue,tier=web", "no", "api"] in table
    assert ["db1", "-", "02:00:00:00:00:02", "-", "tier=db", "no", "api"] in table
    assert rows(ok(run(ctl, "vms", "list", "--no-headers", home=home)))[0][0] == "db1"
    assert json.loads(ok(run(ctl, "vms", "list", "-o", "json", home=home))) == ctl.api("GET", "/v1/vms")
    assert yaml.safe_load(ok(run(ctl, "vms", "list", "-o", "yaml", home=home))) == ctl.api("GET", "/v1/vms")

    shown = ok(run(ctl, "vms", "label", "web1", "canary=yes", "tenant-", home=home))
    assert "labels:       canary=yes,tier=web" in shown
    assert ctl.api("GET", "/v1/vms/web1")["labels"] == {"canary": "yes", "tier": "web"}
    assert "quarantined:  no" in ok(run(ctl, "vms", "show", "web1", home=home))

    assert ok(run(ctl, "vms", "delete", "db1", home=home)) == "VM db1 deleted\n"
    assert ok(run(ctl, "vms", "delete", "web1", "-o", "json", home=home)) == ""  # nothing but data for machines
    assert "no vm named 'db1'" in failed(run(ctl, "vms", "show", "db1", home=home)).lower()


def test_a_refused_request_shows_the_api_message_and_field_and_changes_nothing(ctl, home):
    err = failed(run(ctl, "vms", "set", "bad1", "--mac", "ff:ff:ff:ff:ff:ff", home=home))
    assert "field: macs" in err and "HTTP 400" in err and err.count("\n") == 1
    assert run(ctl, "vms", "show", "bad1", home=home).returncode == 1
    err = failed(run(ctl, "policy", "add", "r1", "--from", "tier in ()", "--to", "any", "--action", "allow", home=home))
    assert err.startswith("Error: src: ") and "field: src" in err
    ok(run(ctl, "vms", "set", "dup1", "--mac", "02:00:00:00:00:09", home=home))
    err = failed(run(ctl, "vms", "set", "dup2", "--mac", "02:00:00:00:00:09", home=home))
    assert "HTTP 409" in err and "dup1" in err
    ok(run(ctl, "vms", "delete", "dup1", home=home))


@pytest.mark.parametrize(
    "args",
    [
        ["vms", "sett", "x"],  # no such command
        ["vms", "set", "x"],  # --mac is required
        ["vms", "list", "-o", "xml"],
        ["vms", "label", "x", "justakey"],
        ["vms", "set", "x", "--mac", "02:00:00:00:00:01", "--label", "novalue"],
        ["policy", "add", "r", "--from", "any", "--to", "any", "--action", "maybe"],
        ["explain", "a", "b", "--port", "70000"],
        ["quarantine", "web1"],  # no --reason
        ["audit", "--since", "yesterday-ish"],
    ],
    ids=lambda a: " ".join(a),
)
def test_usage_errors_exit_2_without_calling_the_controller(ctl, home, args):
    err = failed(run(ctl, *args, home=home, url=False, env={"GOLDILOCKS_URL": f"http://127.0.0.1:{free_port()}"}), 2)
    assert "Error:" in err and "cannot reach" not in err


def test_policy_add_order_default_delete(ctl, home):
    ok(run(ctl, "policy", "add", "web-to-db", "--from", "tier=web", "--to", "tier=db", "--service", "tcp/5432",
           "--action", "encrypt", home=home))  # fmt: skip
    added = json.loads(ok(run(ctl, "policy", "add", "ops", "--from", "role=bastion", "--to", "any", "--service", "tcp/22",
                              "--service", "icmp", "--action", "allow", "--position", "0", "-o", "json", home=home)))  # fmt: skip
    assert added == ctl.api("GET", "/v1/policies/ops") and added["position"] == 0
    table = rows(ok(run(ctl, "policy", "list", home=home)))
    assert table[:3] == [
        ["POS", "NAME", "FROM", "TO", "SERVICES", "ACTION"],
        ["0", "ops", "role=bastion", "any", "tcp/22,icmp", "allow"],
        ["1", "web-to-db", "tier=web", "tier=db", "tcp/5432", "encrypt"],
    ]
    assert table[-1] == ["default", "action:", "allow"]
    assert json.loads(ok(run(ctl, "policy", "list", "-o", "json", home=home))) == ctl.api("GET", "/v1/policies")

    assert json.loads(ok(run(ctl, "policy", "order", "web-to-db", "ops", "-o", "json", home=home))) == {
        "order": ["web-to-db", "ops"]
    }
    assert "order" in failed(run(ctl, "policy", "order", "ops", home=home))  # must name every rule
    assert rows(ok(run(ctl, "policy", "order", home=home)))[1:] == [["0", "web-to-db"], ["1", "ops"]]
    assert ok(run(ctl, "policy", "default", "deny", home=home)) == "default action: deny\n"
    assert json.loads(ok(run(ctl, "policy", "default", "-o", "json", home=home))) == {"default_action": "deny"}
    ok(run(ctl, "policy", "default", "allow", home=home))
    assert "field: name" in failed(
        run(ctl, "policy", "add", "ops", "--from", "any", "--to", "any", "--action", "deny", home=home)
    )
    replaced = json.loads(ok(run(ctl, "policy", "set", "ops", "--from", "role=bastion", "--to", "tier=db", "--service", "tcp/22",
                                 "--action", "deny", "--position", "0", "-o", "json", home=home)))  # fmt: skip
    rule = {"name": "ops", "src": "role=bastion", "dst": "tier=db", "services": ["tcp/22"], "action": "deny", "position": 0}
    assert replaced == ctl.api("GET", "/v1/policies/ops") == rule
    ok(run(ctl, "policy", "delete", "ops", home=home))
    assert ctl.api("GET", "/v1/policies/order") == {"order": ["web-to-db"]}


def test_explain_names_the_deciding_rule(ctl, home):
    ctl.api("PUT", "/v1/vms/ex-web", {"macs": ["02:00:00:00:02:01"], "labels": {"tier": "web"}})
    ctl.api("PUT", "/v1/vms/ex-db", {"macs": ["02:00:00:00:02:02"], "labels": {"tier": "db"}})
    ctl.api("POST", "/v1/policies?position=0", {"name": "ex-deny", "src": "tier=web", "dst": "tier=db", "services": ["tcp/5432"],
                                     "action": "deny"}, expect=201)  # fmt: skip
    try:
        table = ok(run(ctl, "explain", "ex-web", "ex-db", "--proto", "tcp", "--port", "5432", home=home))
        assert "decided by:  rule ex-deny" in table and "verdict:     deny" in table
        doc = json.loads(ok(run(ctl, "explain", "ex-web", "ex-db", "--proto", "tcp", "--port", "5432", "-o", "json", home=home)))
        assert doc == ctl.api("GET", "/v1/explain?src=ex-web&dst=ex-db&proto=tcp&dport=5432")
        assert "the default action" in ok(run(ctl, "explain", "ex-web", "ex-db", "--proto", "udp", home=home))
        assert "field: dst" in failed(run(ctl, "explain", "ex-web", "nowhere", home=home))
    finally:
        ctl.api("DELETE", "/v1/policies/ex-deny")


def test_quarantine_list_and_release(ctl, home):
    ctl.api("PUT", "/v1/vms/q1", {"macs": ["02:00:00:00:03:01"]})
    record = json.loads(ok(run(ctl, "quarantine", "q1", "--reason", "IDS: C2 beacon", "-o", "json", home=home)))
    assert record == ctl.api("GET", "/v1/quarantine/q1")
    assert rows(ok(run(ctl, "quarantine", home=home)))[1][:4] == ["q1", "isolate", "IDS:", "C2"]
    assert ["q1", "-", "02:00:00:00:03:01", "-", "-", "yes", "api"] in rows(ok(run(ctl, "vms", "list", home=home)))
    assert "field: vm" in failed(run(ctl, "quarantine", "q1", "--reason", "again", home=home))  # already in quarantine
    assert ok(run(ctl, "release", "q1", home=home)) == "VM q1 released from quarantine\n"
    assert ctl.api("GET", "/v1/quarantine") == {"quarantine": []}
    assert "not in quarantine" in failed(run(ctl, "release", "q1", home=home))
    assert "(no VM in quarantine)" in ok(run(ctl, "quarantine", home=home))


def test_remediation_and_alerts(ctl, home):
    assert json.loads(ok(run(ctl, "remediation", "-o", "json", home=home))) == ctl.api("GET", "/v1/remediation")
    assert json.loads(ok(run(ctl, "alerts", "-o", "json", home=home))) == ctl.api("GET", "/v1/alerts")
    assert "quarantine threshold:" in ok(run(ctl, "alerts", home=home))


# -- audit -------------------------------------------------------------------------------------------------------
def test_audit_since_limit_and_before(ctl, home):
    ctl.api("PUT", "/v1/vms/au1", {"macs": ["02:00:00:00:04:01"]})
    for i in range(6):
        ctl.api("PATCH", "/v1/vms/au1/labels", {"set": {"step": str(i)}})
    newest = ctl.api("GET", "/v1/audit?limit=1000")["entries"]

    table = rows(ok(run(ctl, "audit", "--limit", "3", home=home)))
    assert table[0] == ["ID", "TIME", "AGE", "ACTOR", "ACTION", "TARGET", "SUMMARY"]
    assert [r[0] for r in table[1:4]] == [str(e["id"]) for e in newest[:3]]
    assert table[4] == ["more:", "goldilocks", "audit", "--before", str(newest[2]["id"])]
    page = json.loads(ok(run(ctl, "audit", "--limit", "3", "--before", str(newest[2]["id"]), "-o", "json", home=home)))
    assert page["entries"] == newest[3:6]

    # --since an ISO time: exactly the entries from then on, across the API's pages.
    since = newest[5]["time"]
    doc = json.loads(ok(run(ctl, "audit", "--since", since, "-o", "json", home=home)))
    assert doc == {"entries": [e for e in newest if e["time"] >= since], "next_before": None}
    everything = json.loads(ok(run(ctl, "audit", "--since", "1d", "-o", "json", home=home)))
    # All of it (this controller is minutes old), and nothing but what the API holds.
    assert [e for e in everything["entries"] if e["id"] <= newest[0]["id"]] == newest
    assert json.loads(ok(run(ctl, "audit", "--since", "2099-01-01T00:00Z", "-o", "json", home=home)))["entries"] == []


# -- tokens and roles ----------------------------------------------------------------------------------------------
def test_tokens_create_prints_the_value_once_and_a_read_only_token_cannot_write(ctl, home, tmp_path):
    shown = ok(run(ctl, "tokens", "create", "viewer", home=home))
    value = next(line.split()[1] for line in shown.splitlines() if line.startswith("token:"))
    assert value.startswith("glk_") and shown.count(value) == 1 and "not shown again" in shown
    for args in (["tokens", "list"], ["tokens", "list", "-o", "json"], ["tokens", "show", "viewer", "-o", "yaml"], ["audit"]):
        assert "glk_" not in ok(run(ctl, *args, home=home)), args
    listed = rows(ok(run(ctl, "tokens", "list", home=home)))
    assert ["viewer", "read-only"] == next(r for r in listed if r[0] == "viewer")[:2]
    assert json.loads(ok(run(ctl, "tokens", "list", "-o", "json", home=home))) == ctl.api("GET", "/v1/tokens")

    (tmp_path / "viewer.token").write_text(value + "\n")
    (tmp_path / "viewer.token").chmod(0o600)
    ro = tmp_path / "viewer.token"
    assert json.loads(ok(run(ctl, "vms", "list", "-o", "json", home=home, token_file=ro))) == ctl.api("GET", "/v1/vms")
    err = failed(run(ctl, "vms", "set", "ro1", "--mac", "02:00:00:00:05:01", home=home, token_file=ro))
    assert "permission denied (403)" in err and "read-only" in err and value not in err
    assert "permission denied (403)" in failed(run(ctl, "tokens", "list", home=home, token_file=ro))

    created = json.loads(ok(run(ctl, "tokens", "create", "ops", "--role", "admin", "--token-out", str(tmp_path / "ops"),
                                "-o", "json", home=home)))  # fmt: skip
    assert "token" not in created and created["role"] == "admin"
    assert stat.S_IMODE((tmp_path / "ops").stat().st_mode) == 0o600
    assert "HTTP 409" in failed(run(ctl, "tokens", "create", "ops", home=home))
    assert ok(run(ctl, "tokens", "revoke", "viewer", home=home)) == "token viewer revoked\n"
    err = failed(run(ctl, "vms", "list", home=home, token_file=ro))
    assert "refused the token from --token-file" in err and "401" in err and value not in err


# -- where the URL and the token come from ----------------------------------------------------------------------------
def test_flags_beat_environment_beat_config_file(ctl, home, tmp_path):
    admin = Path(ctl.state_dir, "admin.token")
    ro = tmp_path / "ro.token"
    ro.write_text(ctl.api("POST", "/v1/tokens", {"name": "prec", "role": "read-only"})["token"])
    ro.chmod(0o600)
    dead = f"http://127.0.0.1:{free_port()}"
    config = tmp_path / "cli.yaml"

    def goldilocks(*args, env=None, url=False, token_file=None):
        return run(ctl, *args, home=home, env=env, url=url, token_file=token_file)

    # The config file alone is enough.
    config.write_text(f"url: {ctl.rest_url}\ntoken_file: {admin}\n")
    ok(goldilocks("--config", str(config), "tokens", "list"))
    # The default config file is found under XDG_CONFIG_HOME.
    (home / "config" / "goldilocks").mkdir(parents=True, exist_ok=True)
    (home / "config" / "goldilocks" / "cli.yaml").write_text(config.read_text())
    try:
        ok(goldilocks("tokens", "list"))
        assert "cannot read" in failed(goldilocks("status", url=True, token_file=tmp_path / "missing.token"), 2)
        # The environment beats the config file: its URL is used (and is dead), its token is used (read-only).
        assert dead in failed(goldilocks("status", env={"GOLDILOCKS_URL": dead}))
        assert "403" in failed(goldilocks("tokens", "list", env={"GOLDILOCKS_TOKEN": ro.read_text()}))
        assert "403" in failed(goldilocks("tokens", "list", env={"GOLDILOCKS_TOKEN_FILE": str(ro)}))
        # Flags beat the environment.
        ok(goldilocks("tokens", "list", url=True, env={"GOLDILOCKS_URL": dead}))
        assert "403" in failed(goldilocks("tokens", "list", token_file=ro, env={"GOLDILOCKS_TOKEN_FILE": str(admin)}))
        # A bad config file is a usage error that names it, even with everything else given.
        (home / "config" / "goldilocks" / "cli.yaml").write_text("url: [unclosed\n")
        err = failed(goldilocks("status", url=True, token_file=admin), 2)
        assert str(home / "config" / "goldilocks" / "cli.yaml") in err and "YAML" in err
        config.write_text("url: http://x\npassword: hunter2\n")
        assert "password: unknown key" in failed(goldilocks("--config", str(config), "status"), 2)
        assert "does not exist" in failed(goldilocks("--config", str(tmp_path / "none.yaml"), "status"), 2)
    finally:
        (home / "config" / "goldilocks" / "cli.yaml").unlink()


def test_a_token_file_others_can_read_gets_a_warning(ctl, home, tmp_path):
    shared = tmp_path / "shared.token"
    shared.write_text(Path(ctl.state_dir, "admin.token").read_text())
    shared.chmod(0o644)
    result = run(ctl, "vms", "list", "-o", "json", home=home, token_file=shared)
    assert result.returncode == 0 and json.loads(result.stdout) == ctl.api("GET", "/v1/vms")
    assert "accessible by others (mode 644)" in result.stderr and "glk_" not in result.stderr


def test_an_unreachable_controller_is_one_line_naming_the_url(ctl, home):
    url = f"http://127.0.0.1:{free_port()}"
    err = failed(run(ctl, "--url", url, "vms", "list", home=home, url=False))
    assert err == f"Error: cannot reach the controller at {url}: connection refused (is the controller running there?)\n"
    assert "not a controller URL" in failed(run(ctl, "--url", "ftp://x", "status", home=home, url=False), 2)


def test_too_many_failed_sign_ins_say_when_to_retry(home):
    limited = ControllerProcess(extra_args=["--no-ovsdb-inventory", "--auth-failure-burst", "1", "--auth-failure-rate", "0.01"])
    limited.start()
    try:
        env = {"GOLDILOCKS_TOKEN": "glk_" + "x" * 43}
        assert "401" in failed(run(limited, "vms", "list", home=home, token_file=None, env=env))
        err = failed(run(limited, "vms", "list", home=home, token_file=None, env=env))
        assert "429" in err and "retry in" in err and "x" * 43 not in err
        err = failed(run(limited, "vms", "list", home=home))  # even the right token waits
        assert "429" in err and "retry in" in err
    finally:
        limited.stop()


# -- completion, help, the console script ------------------------------------------------------------------------------
def test_completion_scripts_and_names_from_the_api(fabric, home):
    ctl = fabric
    for shell, marker in (("bash", "complete -o nosort -F"), ("zsh", "#compdef goldilocks"), ("fish", "complete --no-files")):
        assert marker in ok(run(ctl, "completion", shell, home=home, url=False, token_file=None))
    ctl.api("PUT", "/v1/vms/compl-web", {"macs": ["02:00:00:00:06:01"]})
    words = f"goldilocks --url {ctl.rest_url} vms show compl-"
    env = {"_GOLDILOCKS_COMPLETE": "bash_complete", "COMP_WORDS": words, "COMP_CWORD": "5",
           "GOLDILOCKS_TOKEN_FILE": str(Path(ctl.state_dir, "admin.token"))}  # fmt: skip
    result = run(ctl, home=home, url=False, token_file=None, env=env)
    assert "plain,compl-web" in result.stdout.splitlines()
    env["COMP_WORDS"] = f"goldilocks --url {ctl.rest_url} flows br-"
    env["COMP_CWORD"] = "4"
    assert run(ctl, home=home, url=False, token_file=None, env=env).stdout.splitlines() == ["plain,br-hv1", "plain,br-hv2"]
    env["COMP_WORDS"] = "goldilocks vms l"
    env["COMP_CWORD"] = "2"
    assert "plain,list" in run(ctl, home=home, url=False, token_file=None, env=env).stdout.splitlines()


def test_the_console_script_runs_this_code_and_help_is_what_the_docs_show(ctl, home):
    script = Path(sys.executable).parent / "goldilocks"
    env = {**CLEAN_ENV, "PYTHONPATH": str(REPO), "HOME": str(home), "COLUMNS": "200"}  # any wide terminal
    page = (REPO / "docs" / "cli.md").read_text()
    for args in ([], ["vms", "set"], ["audit"], ["policy", "add"]):
        result = subprocess.run([str(script), *args, "--help"], capture_output=True, text=True, env=env, timeout=30)
        assert result.returncode == 0, result.stderr
        assert result.stdout.rstrip() in page, f"docs/cli.md does not show `goldilocks {' '.join(args)} --help`"
    result = subprocess.run([str(script), "--url", ctl.rest_url, "--token-file", str(Path(ctl.state_dir, "admin.token")),
                             "vms", "list", "-o", "json"], capture_output=True, text=True, env=env, timeout=30)  # fmt: skip
    assert result.returncode == 0 and json.loads(result.stdout) == ctl.api("GET", "/v1/vms")
