"""The foundation on real Open vSwitch and Mininet: learning, forwarding, reroute and restart.

Tests in this module share one looped leaf-spine and run in file order."""

from __future__ import annotations

import signal
import time

from apps.pipeline import PRIO_UNICAST_UPLINK
from mininet_scenarios.fabric_check import host_layout
from mininet_scenarios.harness import rest_get
from tests.integration.helpers import largest_gap, reply_times, switch_flows, wait_until


def test_pingall_has_no_loss_on_a_looped_leaf_spine(looped_dc):
    assert looped_dc.pingall() == 0.0
    counts = looped_dc.learned_counts()
    assert counts == looped_dc.built_counts()


def test_tcp_crosses_leaves(looped_dc):
    vms = list(looped_dc.layout.vms)
    mbps = looped_dc.iperf3(vms[0], vms[-1], seconds=2)
    assert mbps > 50, f"TCP VM to VM across leaves gave {mbps} Mbit/s"


def test_rest_topology_equals_what_was_built(looped_dc):
    dc = looped_dc
    topo = dc.topology()
    layout = dc.layout
    by_dpid = {s["dpid"]: s for s in topo["switches"]}
    assert set(by_dpid) == {f"{d:016x}" for d in layout.switches.values()}
    for name, dpid in layout.switches.items():
        sw = by_dpid[f"{dpid:016x}"]
        assert sw["name"] == name
        assert sw["role"] == layout.roles[name], f"{name} classified as {sw['role']}"
        assert sw["connected"] is True

    built_links = set()
    for a, b in layout.switch_links:
        for link in dc.net.linksBetween(dc.net.get(a), dc.net.get(b)):
            ends = []
            for intf in (link.intf1, link.intf2):
                ends.append((f"{layout.switches[intf.node.name]:016x}", intf.node.ports[intf]))
            built_links.add(frozenset(ends))
    learned_links = [frozenset({(lk[end]["dpid"], lk[end]["port"]) for end in ("src", "dst")}) for lk in topo["links"]]
    assert len(learned_links) == len(set(learned_links)), "a physical link is listed twice"
    assert set(learned_links) == built_links

    built_hosts = {}
    for name, (hv, ip, mac) in host_layout(dc).items():  # the VMs and the hypervisors' tunnel endpoints
        host = dc.host(name)
        intf = host.defaultIntf()
        peer = intf.link.intf2 if intf.link.intf1 is intf else intf.link.intf1
        built_hosts[mac] = ([ip], f"{layout.switches[hv]:016x}", peer.node.ports[peer])
    learned_hosts = {h["mac"]: (h["ips"], h["dpid"], h["port"]) for h in topo["hosts"]}
    assert learned_hosts == built_hosts


def _uplink_toward(dc, leaf: str, vm: str) -> str:
    """The spine the leaf uses to reach a VM, from the controller's flows for the leaf: its route to
    the VM, or, when it holds none (the VM is reached through its parent on the flooding tree), the
    port its other unicast goes to."""
    dpid = f"{dc.layout.switches[leaf]:016x}"
    mac = dc.layout.vms[vm][2]
    flows = rest_get(dc.rest_url, f"/v1/switches/{dpid}/flows")["flows"]

    def out_port(flow) -> int:
        return int(flow["actions"][0].split("port=")[1].split(",")[0])

    routes = [out_port(f) for f in flows if f["table"] == 3 and f["match"].get("eth_dst") == mac]
    defaults = {out_port(f) for f in flows if f["table"] == 3 and f["priority"] == PRIO_UNICAST_UPLINK}
    assert routes or len(defaults) == 1, (routes, defaults)
    port = routes[0] if routes else defaults.pop()
    leaf_node = dc.net.get(leaf)
    intf = next(i for i, p in leaf_node.ports.items() if p == port)
    peer = intf.link.intf2 if intf.link.intf1 is intf else intf.link.intf1
    return peer.node.name


def test_cutting_a_spine_link_reroutes_within_seconds(looped_dc):
    dc = looped_dc
    vms = list(dc.layout.vms)
    src, dst = vms[0], vms[-1]
    src_leaf = "lf1"
    spine = _uplink_toward(dc, src_leaf, dst)
    pinger = dc.host(src).popen(["ping", "-D", "-n", "-i", "0.05", "-c", "120", dc.layout.vms[dst][1]])
    try:
        time.sleep(1.0)
        cut_at = time.time()
        dc.net.configLinkStatus(src_leaf, spine, "down")
        out, _ = pinger.communicate(timeout=30)
    finally:
        if pinger.poll() is None:
            pinger.kill()
        dc.net.configLinkStatus(src_leaf, spine, "up")
    out = out.decode() if isinstance(out, bytes) else out
    replies = reply_times(out)
    after_cut = [t for t in replies if t > cut_at]
    assert after_cut, "no reply after the link was cut: traffic was not rerouted"
    recovery = after_cut[0] - cut_at
    assert recovery < 3.0, f"traffic took {recovery:.2f}s to come back after the cut"
    assert _uplink_toward(dc, src_leaf, dst) != spine, "the controller still routes over the cut link"
    # The link comes back: the controller relearns it and everything still pings.
    expected_links = dc.built_counts()["links"]
    assert wait_until(lambda: dc.learned_counts()["links"] == expected_links, 10), "the restored link was not relearned"
    assert dc.pingall() == 0.0


def test_sigkill_and_restart_keeps_traffic_and_flows(looped_dc):
    dc = looped_dc
    ctl = dc.controller_proc
    vms = list(dc.layout.vms)
    src, dst = vms[1], vms[-2]
    bridges = list(dc.layout.switches)
    before = {b: {f["cookie"] for f in switch_flows(b)} for b in bridges}
    pinger = dc.host(src).popen(["ping", "-D", "-n", "-i", "0.05", "-c", "160", dc.layout.vms[dst][1]])
    try:
        time.sleep(1.5)
        ping_started = time.time() - 1.5
        killed_at = time.time()
        ctl.kill(signal.SIGKILL)
        time.sleep(0.3)
        ctl.start()
        synced = wait_until(
            lambda: rest_get(ctl.rest_url, "/v1/health")["switches_synced"] == len(bridges), 20
        )
        assert synced, f"switches did not resync after restart: {rest_get(ctl.rest_url, '/v1/health')}"
        out, _ = pinger.communicate(timeout=30)
        ping_ended = time.time()
    finally:
        if pinger.poll() is None:
            pinger.kill()
    out = out.decode() if isinstance(out, bytes) else out
    replies = reply_times(out)
    assert len(replies) >= 150, f"only {len(replies)} of 160 pings answered across the restart"
    gap = largest_gap(replies, replies[0], replies[-1])
    assert gap <= 0.2, f"a {gap:.3f}s gap in a 50 ms ping across SIGKILL and restart"
    assert ping_started < killed_at < ping_ended

    # Converged, not rebuilt: the same flows, older than the restart, and exactly what is desired.
    elapsed = time.time() - killed_at
    for bridge in bridges:
        flows = switch_flows(bridge)
        cookies = {f["cookie"] for f in flows}
        assert cookies == before[bridge], f"{bridge}: flows changed across the restart"
        young = [f["line"] for f in flows if f["duration"] < elapsed]
        assert not young, f"{bridge}: flows were reinstalled after the restart: {young[:3]}"
        dpid = f"{dc.layout.switches[bridge]:016x}"
        desired = {int(f["cookie"], 16) for f in rest_get(ctl.rest_url, f"/v1/switches/{dpid}/flows")["flows"]}
        assert desired == cookies, f"{bridge}: switch table differs from the desired table"
