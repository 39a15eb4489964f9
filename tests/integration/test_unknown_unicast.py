"""Unicast to a host nobody knows yet, on real Open vSwitch: switches hold no route toward their
parent on the flooding tree, so such a frame climbs to the tree's root, which floods it on the tree
and back out of the port it came in on. The destination is made unknown by hand (IPv6 off so it
stays silent, a fresh MAC, the sender given a static ARP entry for it), then pinged."""

from __future__ import annotations

import pytest

from mininet_scenarios.datacenter import Layout, running

FRESH_MAC = "02:77:00:00:00:01"


def _silence_with_a_fresh_mac(dc, vm: str) -> str:
    host = dc.host(vm)
    intf = host.defaultIntf().name
    host.cmd("sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1")
    host.cmd(f"sysctl -qw net.ipv6.conf.{intf}.disable_ipv6=1")
    host.cmd(f"ip link set dev {intf} address {FRESH_MAC}")
    return FRESH_MAC


def _ping_unknown(dc, src: str, dst: str) -> str:
    mac = _silence_with_a_fresh_mac(dc, dst)
    ip = dc.layout.vms[dst][1]
    assert mac not in {h["mac"] for h in dc.topology()["hosts"]}, "the destination must be unknown"
    sender = dc.host(src)
    sender.cmd(f"ip neigh replace {ip} lladdr {mac} dev {sender.defaultIntf().name} nud permanent")
    return sender.cmd(f"ping -c 3 -W 1 {ip}")


@pytest.mark.parametrize(
    ("shape", "src", "dst"),
    [
        # Leaf-spine: the two VMs share a leaf, whose parent is the root spine. Without the root
        # sending the frame back out of its in-port, the leaf's other hypervisor never gets it.
        (dict(spines=2, leaves=2, hypervisors_per_leaf=2, vms_per_hypervisor=1), "vm1", "vm2"),
    ],
    ids=["same-leaf"],
)
def test_a_unicast_to_an_unknown_host_reaches_it_through_the_root(shape, src, dst):
    with running(Layout(**shape)) as dc:
        assert dc.pingall() == 0.0
        out = _ping_unknown(dc, src, dst)
        assert " 0% packet loss" in out or " 33% packet loss" in out, out  # its reply teaches the controller the new MAC
        assert FRESH_MAC in {h["mac"] for h in dc.topology()["hosts"]}


def test_a_line_of_switches_with_vms_on_each_delivers_and_floods_to_the_unknown():
    """Mininet's stock linear shape: every switch has a VM and up to two neighbours; the tree's root is
    the second switch, which has a VM of its own (IP it floods to its VM is committed first)."""
    doc = {
        "switches": [{"name": f"s{i}", "role": "hypervisor"} for i in range(1, 5)],
        "links": [["s1", "s2"], ["s2", "s3"], ["s3", "s4"]],
        "vms": [
            {"name": f"h{i}", "hypervisor": f"s{i}", "ip": f"10.0.0.{i}", "mac": f"02:00:00:00:00:{i:02x}"}
            for i in range(1, 5)
        ],
    }
    with running(Layout.from_document(doc, "linear")) as dc:
        assert dc.pingall() == 0.0
        out = _ping_unknown(dc, "h4", "h3")  # climbs s4 -> s3 -> s2 (root), comes back down to s3
        assert " 0% packet loss" in out or " 33% packet loss" in out, out
        out = dc.host("h1").cmd(f"ping -c 3 -W 1 {dc.layout.vms['h2'][1]}")  # the root's own VM, from a stub
        assert " 0% packet loss" in out, out
