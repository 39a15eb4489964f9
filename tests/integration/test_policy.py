"""Policy on real Open vSwitch: label-based deny and service rules, label flips, migration, restart.

One leaf-spine (1 spine, 2 leaves, 2 hypervisors each, 2 VMs each) for the whole module;
tests run in file order and each one sets the rules it needs."""

from __future__ import annotations

import json
import signal
import time

import pytest

from mininet_scenarios.datacenter import Layout
from tests.integration.conftest import start_datacentre
from tests.integration.helpers import reply_times, switch_flows, wait_until

LABELS = {
    "vm1": {"tier": "web", "tenant": "blue"},
    "vm2": {"tier": "web", "tenant": "blue"},
    "vm3": {"tier": "db", "tenant": "blue"},
    "vm4": {"tier": "app", "tenant": "blue"},
    "vm5": {"tier": "db", "tenant": "blue", "sensitivity": "pci"},
    "vm6": {"tier": "web", "tenant": "red"},
    "vm7": {"tier": "app", "tenant": "red"},
    # vm8 stays out of the inventory: unmanaged
}


@pytest.fixture(scope="module")
def dc():
    cm, dc = start_datacentre(Layout(spines=1, leaves=2, hypervisors_per_leaf=2, vms_per_hypervisor=2))
    try:
        ctl = dc.controller_proc
        for name, labels in LABELS.items():
            _, ip, mac = dc.layout.vms[name]
            ctl.api("PUT", f"/v1/vms/{name}", {"macs": [mac], "ips": [ip], "labels": labels}, expect=201)
        # Every VM listens on a few TCP ports and announces itself once.
        import sys

        for name in dc.layout.vms:
            host = dc.host(name)
            host.popen([sys.executable, "-m", "mininet_scenarios.tcp_probe", "listen", "5432", "5433", "8080"])
            host.cmd("ping -c1 -W0.3 10.0.255.254")
        assert wait_until(lambda: dc.learned_counts()["hosts"] == dc.built_counts()["hosts"], 15), dc.learned_counts()
        yield dc
    finally:
        cm.__exit__(None, None, None)


def set_policy(dc, rules: list[dict], default: str = "allow") -> None:
    ctl = dc.controller_proc
    for rule in ctl.api("GET", "/v1/policies", expect=200)["policies"]:
        ctl.api("DELETE", f"/v1/policies/{rule['name']}", expect=204)
    for rule in rules:
        ctl.api("POST", "/v1/policies", rule, expect=201)
    ctl.api("PUT", "/v1/policies/default", {"default_action": default}, expect=200)
    time.sleep(0.3)  # compile + flow-mods; far below what a user would notice


def pings(dc, src: str, dst: str, count: int = 2) -> bool:
    out = dc.host(src).cmd(f"ping -c{count} -i0.2 -W1 {dc.layout.vms[dst][1]}")
    return f" {count} received" in out


def tcp_open(dc, src: str, dst: str, port: int) -> bool:
    import sys

    out = dc.host(src).cmd(f"{sys.executable} -m mininet_scenarios.tcp_probe connect {dc.layout.vms[dst][1]} {port} 1")
    return "OPEN" in out


def test_deny_between_two_groups_blocks_ping_and_tcp_and_nothing_else(dc):
    set_policy(dc, [{"name": "no-web-to-db", "src": "tier=web", "dst": "tier=db", "services": ["any"], "action": "deny"}])
    for src, dst in (("vm1", "vm3"), ("vm1", "vm5"), ("vm6", "vm5")):
        assert not pings(dc, src, dst), f"{src} (web) pinged {dst} (db)"
        assert not tcp_open(dc, src, dst, 5432), f"{src} (web) reached {dst} (db) over TCP"
    for src, dst in (("vm4", "vm3"), ("vm1", "vm4"), ("vm3", "vm1"), ("vm7", "vm5"), ("vm1", "vm8")):
        assert pings(dc, src, dst), f"{src} -> {dst} should still work"
        assert tcp_open(dc, src, dst, 5432), f"{src} -> {dst} TCP should still work"


def test_a_service_rule_blocks_its_port_but_not_icmp(dc):
    set_policy(dc, [{"name": "no-pg", "src": "tier=web", "dst": "tier=db", "services": ["tcp/5432"], "action": "deny"}])
    assert pings(dc, "vm1", "vm3")
    assert not tcp_open(dc, "vm1", "vm3", 5432)
    assert tcp_open(dc, "vm1", "vm3", 5433)
    assert tcp_open(dc, "vm4", "vm3", 5432)


def test_zero_trust_allows_only_what_a_rule_allows_and_its_replies(dc):
    set_policy(
        dc,
        [{"name": "web-to-db-pg", "src": "tier=web", "dst": "tier=db", "services": ["tcp/5432", "icmp"], "action": "allow"}],
        default="deny",
    )
    assert tcp_open(dc, "vm1", "vm3", 5432), "allowed, and the SYN-ACK reply must come back"
    assert pings(dc, "vm1", "vm5")
    assert not tcp_open(dc, "vm1", "vm3", 5433)
    assert not pings(dc, "vm3", "vm1"), "db -> web is a new connection no rule allows"
    assert not pings(dc, "vm4", "vm7")


def test_flipping_a_label_flips_behaviour_without_disturbing_an_unrelated_iperf3(dc):
    set_policy(dc, [{"name": "no-web-to-db", "src": "tier=web", "dst": "tier=db", "services": ["any"], "action": "deny"}])
    ctl = dc.controller_proc
    server = dc.host("vm4").popen(["iperf3", "-s", "-1", "-B", dc.layout.vms["vm4"][1]])
    try:
        time.sleep(0.5)
        client = dc.host("vm7").popen(["iperf3", "-c", dc.layout.vms["vm4"][1], "-t", "6", "-i", "0.5", "-J"])
        time.sleep(1.5)
        assert not pings(dc, "vm1", "vm3")
        _, ip, mac = dc.layout.vms["vm1"]
        ctl.api("PUT", "/v1/vms/vm1", {"macs": [mac], "ips": [ip], "labels": {"tier": "app", "tenant": "blue"}}, expect=200)
        assert wait_until(lambda: pings(dc, "vm1", "vm3", 1), 3), "relabelled web -> app: db must be reachable"
        ctl.api("PUT", "/v1/vms/vm1", {"macs": [mac], "ips": [ip], "labels": LABELS["vm1"]}, expect=200)
        assert wait_until(lambda: not pings(dc, "vm1", "vm3", 1), 3), "relabelled back to web: denied again"
        out, _ = client.communicate(timeout=30)
    finally:
        server.kill()
    report = json.loads(out[out.index(b"{") :] if isinstance(out, bytes) else out[out.index("{") :])
    rates = [i["sum"]["bits_per_second"] for i in report["intervals"]]
    median = sorted(rates)[len(rates) // 2]
    assert median > 0 and min(rates) > 0.3 * median, f"the unrelated iperf3 dipped: {[round(r / 1e6) for r in rates]} Mbit/s"


def test_a_migrated_vm_keeps_its_policy_and_the_old_location_is_cleaned(dc):
    set_policy(dc, [{"name": "no-web-to-db", "src": "tier=web", "dst": "tier=db", "services": ["any"], "action": "deny"}])
    old_hv = dc.layout.vms["vm2"][0]
    mac = dc.layout.vms["vm2"][2]
    plugged = dc.move_vm("vm2", "hv4")
    out = dc.host("vm2").cmd(f"ping -D -n -c 60 -i 0.05 -W 1 {dc.layout.vms['vm7'][1]}")
    replies = reply_times(out)
    assert replies, "the migrated VM never reached an allowed peer"
    print(f"migrated VM: first reply {replies[0] - plugged:.3f} s after plugging in")
    assert replies[0] - plugged < 1.0, f"first reply {replies[0] - plugged:.2f}s after plugging in: policy must follow within 1 s"
    assert not pings(dc, "vm2", "vm5"), "web -> db must stay denied at the new location"
    assert not pings(dc, "vm2", "vm3")
    stale = [f["line"] for f in switch_flows(old_hv) if f"dl_src={mac}" in f["line"]]
    assert not stale, f"{old_hv} still admits the migrated VM: {stale}"


def test_restart_keeps_all_policy(dc):
    rules = [
        {"name": "no-web-to-db", "src": "tier=web", "dst": "tier=db", "services": ["tcp/5432"], "action": "deny"},
        {"name": "pci", "src": "!sensitivity", "dst": "sensitivity=pci", "services": ["any"], "action": "deny"},
    ]
    set_policy(dc, rules, default="allow")
    ctl = dc.controller_proc
    before = ctl.api("GET", "/v1/policies", expect=200)
    bridges = list(dc.layout.switches)
    flows_before = {b: {f["cookie"] for f in switch_flows(b)} for b in bridges}
    ctl.kill(signal.SIGKILL)
    ctl.start()
    assert wait_until(lambda: ctl.api("GET", "/v1/health")["switches_synced"] == len(bridges), 20)
    # Checked before any traffic: a VM asking for an address nobody answered yet adds a responder.
    for bridge in bridges:
        assert {f["cookie"] for f in switch_flows(bridge)} == flows_before[bridge], f"{bridge}: flows changed across restart"
    assert ctl.api("GET", "/v1/policies", expect=200) == before
    assert ctl.api("GET", "/v1/vms/vm1", expect=200)["labels"] == LABELS["vm1"]
    assert not tcp_open(dc, "vm1", "vm3", 5432)
    assert not pings(dc, "vm4", "vm5"), "app (no sensitivity label) -> pci is denied"
    assert pings(dc, "vm4", "vm3")
