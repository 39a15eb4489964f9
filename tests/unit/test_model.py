"""The topology model's learning rules: hosts, links, edge ports and switch roles."""

from __future__ import annotations

from dataclasses import replace

import pytest

from apps import pipeline
from topology.model import (
    EDGE_CONFIRM_TIME,
    LINK_TIMEOUT,
    ROLE_FABRIC,
    ROLE_HYPERVISOR,
    Link,
    Port,
    PortRef,
    Topology,
    parse_role,
)

MAC_A = "02:00:00:00:00:0a"
MAC_B = "02:00:00:00:00:0b"


def two_switches(ports: int = 3) -> Topology:
    """Switches 1 and 2, each with ports 1..ports up and its LOCAL port, both connected."""
    topo = Topology()
    for dpid in (1, 2):
        topo.switch_connected(dpid)
        topo.set_ports(dpid, [*(Port(p, f"s{dpid}-eth{p}", f"aa:00:00:00:{dpid:02x}:{p:02x}") for p in range(1, ports + 1)),
                              Port(pipeline.OFPP_LOCAL, f"s{dpid}")])  # fmt: skip
    return topo


def confirmed(topo: Topology, now: float = 0.0) -> Topology:
    topo.confirm_edge_ports(now)
    topo.confirm_edge_ports(now + EDGE_CONFIRM_TIME)
    return topo


# ---------------------------------------------------------------------------
# Hosts
# ---------------------------------------------------------------------------
def test_a_host_is_learned_with_its_ip_and_relearning_it_changes_nothing():
    topo = two_switches()
    assert topo.host_seen(MAC_A.upper(), 1, 2, "10.0.0.1")
    assert topo.hosts[MAC_A].ips == {"10.0.0.1"} and (topo.hosts[MAC_A].dpid, topo.hosts[MAC_A].port) == (1, 2)
    assert not topo.host_seen(MAC_A, 1, 2, "10.0.0.1")
    assert not topo.host_seen(MAC_A, 1, 2)


def test_a_host_collects_its_ips_but_not_the_unspecified_address():
    topo = two_switches()
    topo.host_seen(MAC_A, 1, 2, "0.0.0.0")  # a DHCP client before it has an address
    assert topo.hosts[MAC_A].ips == frozenset()
    topo.host_seen(MAC_A, 1, 2, "10.0.0.1")
    topo.host_seen(MAC_A, 1, 2, "10.0.0.2")
    assert topo.hosts[MAC_A].ips == {"10.0.0.1", "10.0.0.2"}


def test_an_ip_claimed_by_a_new_mac_moves_to_it():
    topo = two_switches()
    topo.host_seen(MAC_A, 1, 2, "10.0.0.1")
    topo.host_seen(MAC_A, 1, 2, "10.0.0.9")
    assert topo.host_seen(MAC_B, 2, 2, "10.0.0.1")
    assert topo.hosts[MAC_B].ips == {"10.0.0.1"}
    assert topo.hosts[MAC_A].ips == {"10.0.0.9"}, "the old owner keeps its other addresses"
    assert sum("10.0.0.1" in h.ips for h in topo.hosts.values()) == 1


def test_a_host_that_moves_is_found_at_its_new_location_with_its_ips():
    topo = two_switches()
    topo.host_seen(MAC_A, 1, 2, "10.0.0.1")
    assert topo.host_seen(MAC_A, 2, 3)
    host = topo.hosts[MAC_A]
    assert (host.dpid, host.port, host.ips) == (2, 3, {"10.0.0.1"})
    assert len(topo.hosts) == 1


def test_a_host_learned_on_a_port_later_found_to_be_inter_switch_is_purged():
    topo = confirmed(two_switches())
    topo.host_seen(MAC_A, 1, 1, "10.0.0.1")  # really a frame relayed by switch 2
    topo.host_seen(MAC_B, 1, 2, "10.0.0.2")  # a real host
    assert topo.link_seen(PortRef(2, 1), PortRef(1, 1), 5.0)
    assert MAC_A not in topo.hosts
    assert MAC_B in topo.hosts
    assert not topo.is_edge_port(1, 1) and topo.is_edge_port(1, 2)


def test_hosts_on_the_far_end_of_a_new_link_are_purged_too():
    topo = confirmed(two_switches())
    topo.host_seen(MAC_A, 2, 1)
    topo.link_seen(PortRef(1, 1), PortRef(2, 1), 5.0)
    assert MAC_A not in topo.hosts


def test_remove_host_is_case_insensitive():
    topo = two_switches()
    topo.host_seen(MAC_A, 1, 2)
    assert topo.remove_host(MAC_A.upper())
    assert not topo.remove_host(MAC_A)


def test_switch_port_macs_are_known_so_they_are_never_learned_as_hosts():
    topo = two_switches()
    assert "aa:00:00:00:01:02" in topo.switch_macs()
    assert MAC_A not in topo.switch_macs()
    # The answer is kept between packet-ins, but follows port changes.
    topo.set_port(1, Port(9, "s1-eth9", "aa:00:00:00:01:09"))
    assert "aa:00:00:00:01:09" in topo.switch_macs()
    topo.delete_port(1, 9)
    assert "aa:00:00:00:01:09" not in topo.switch_macs()


# ---------------------------------------------------------------------------
# Links
# ---------------------------------------------------------------------------
def test_a_link_is_stored_once_whatever_direction_lldp_travelled():
    topo = two_switches()
    assert topo.link_seen(PortRef(2, 1), PortRef(1, 1), 1.0)
    assert not topo.link_seen(PortRef(1, 1), PortRef(2, 1), 2.0)
    assert list(topo.links) == [Link(PortRef(1, 1), PortRef(2, 1))]
    assert topo.links[Link.between(PortRef(2, 1), PortRef(1, 1))] == 2.0
    assert topo.inter_switch_ports(1) == {1} and topo.inter_switch_ports(2) == {1}


def test_lldp_looping_back_to_its_own_port_is_not_a_link():
    topo = two_switches()
    assert not topo.link_seen(PortRef(1, 1), PortRef(1, 1), 0.0)
    assert topo.links == {}


def test_a_recabled_port_replaces_its_old_link():
    topo = two_switches()
    topo.link_seen(PortRef(1, 1), PortRef(2, 1), 0.0)
    topo.link_seen(PortRef(1, 1), PortRef(2, 2), 1.0)
    assert list(topo.links) == [Link(PortRef(1, 1), PortRef(2, 2))]


def test_links_expire_only_when_both_switches_are_connected():
    topo = two_switches()
    topo.link_seen(PortRef(1, 1), PortRef(2, 1), 0.0)
    late = LINK_TIMEOUT + 1.0
    topo.switch_disconnected(2)
    assert not topo.expire_links(late), "switch 2 still forwards; we just cannot probe through it"
    assert topo.links
    topo.switch_connected(2)
    assert topo.expire_links(late)
    assert topo.links == {}


def test_a_link_seen_within_the_timeout_survives():
    topo = two_switches()
    topo.link_seen(PortRef(1, 1), PortRef(2, 1), 0.0)
    assert not topo.expire_links(LINK_TIMEOUT - 0.1)
    topo.link_seen(PortRef(2, 1), PortRef(1, 1), 3.0)
    assert not topo.expire_links(3.0 + LINK_TIMEOUT - 0.1)


def test_refresh_links_gives_loaded_links_a_fresh_window():
    topo = two_switches()
    topo.link_seen(PortRef(1, 1), PortRef(2, 1), 0.0)
    topo.refresh_links(100.0)
    assert not topo.expire_links(100.0 + LINK_TIMEOUT - 0.1)


def test_a_link_on_a_port_that_goes_down_or_disappears_is_dropped():
    topo = two_switches()
    topo.link_seen(PortRef(1, 1), PortRef(2, 1), 0.0)
    topo.set_port(2, replace(topo.switches[2].ports[1], up=False))
    assert topo.links == {}
    topo.link_seen(PortRef(1, 2), PortRef(2, 2), 0.0)
    assert topo.delete_port(1, 2)
    assert topo.links == {}
    topo.link_seen(PortRef(1, 3), PortRef(2, 3), 0.0)
    assert topo.set_ports(1, [Port(1), Port(2)])
    assert topo.links == {}


def test_disconnecting_keeps_links_and_removing_a_switch_forgets_everything_on_it():
    topo = two_switches()
    topo.link_seen(PortRef(1, 1), PortRef(2, 1), 0.0)
    topo.host_seen(MAC_A, 2, 2)
    assert topo.switch_disconnected(2) and not topo.switch_disconnected(2)
    assert topo.links and MAC_A in topo.hosts
    assert topo.remove_switch(2) and not topo.remove_switch(2)
    assert topo.links == {} and topo.hosts == {} and set(topo.switches) == {1}


def test_set_ports_names_the_switch_after_its_local_port_and_reports_changes():
    topo = Topology()
    ports = [Port(1, "eth1"), Port(pipeline.OFPP_LOCAL, "br-int")]
    assert topo.set_ports(7, ports)
    assert topo.switches[7].name == "br-int"
    assert not topo.set_ports(7, ports)
    assert topo.switches[7].live_ports() == [1], "the LOCAL port is not a live port"


# ---------------------------------------------------------------------------
# Edge ports: proven to face hosts before anything is flooded to them
# ---------------------------------------------------------------------------
def test_a_new_port_becomes_an_edge_port_only_after_the_hold_time():
    topo = two_switches()
    assert topo.edge_ports(1) == []
    assert not topo.confirm_edge_ports(10.0)
    assert not topo.confirm_edge_ports(10.0 + EDGE_CONFIRM_TIME / 2)
    assert topo.edge_ports(1) == []
    assert topo.confirm_edge_ports(10.0 + EDGE_CONFIRM_TIME)
    assert topo.edge_ports(1) == [1, 2, 3]


def test_a_port_with_lldp_from_another_switch_never_becomes_an_edge_port():
    topo = two_switches()
    topo.confirm_edge_ports(0.0)
    topo.link_seen(PortRef(1, 1), PortRef(2, 1), 0.1)
    topo.confirm_edge_ports(EDGE_CONFIRM_TIME)
    assert topo.edge_ports(1) == [2, 3] and topo.edge_ports(2) == [2, 3]


def test_a_confirmed_edge_port_that_turns_out_to_be_inter_switch_is_unconfirmed():
    topo = confirmed(two_switches())
    topo.link_seen(PortRef(1, 1), PortRef(2, 1), 5.0)
    assert 1 not in topo.switches[1].edge_confirmed
    topo.links.clear()  # the link times out: the port must prove itself again
    assert not topo.is_edge_port(1, 1)


def test_a_port_that_goes_down_must_prove_itself_again():
    topo = confirmed(two_switches())
    port = topo.switches[1].ports[2]
    topo.set_port(1, replace(port, up=False))
    topo.set_port(1, port)
    assert not topo.is_edge_port(1, 2)
    confirmed(topo, now=20.0)
    assert topo.is_edge_port(1, 2)


def test_ports_of_a_disconnected_switch_are_not_confirmed():
    topo = two_switches()
    topo.switch_disconnected(2)
    confirmed(topo)
    assert topo.edge_ports(1) == [1, 2, 3] and topo.edge_ports(2) == []


def test_a_removed_port_loses_its_edge_confirmation():
    topo = confirmed(two_switches())
    assert topo.set_ports(1, [Port(1), Port(3)])
    assert topo.edge_ports(1) == [1, 3]
    assert topo.delete_port(1, 3)
    assert topo.edge_ports(1) == [1]


# ---------------------------------------------------------------------------
# Roles
# ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("dp_desc", "role"),
    [
        ("hypervisor", ROLE_HYPERVISOR),
        ("fabric", ROLE_FABRIC),
        ("role=hypervisor", ROLE_HYPERVISOR),
        ("ROLE=Fabric", ROLE_FABRIC),
        ("rack 3; role=hypervisor", ROLE_HYPERVISOR),
        ("leaf1,fabric", ROLE_FABRIC),
        ("Open vSwitch hypervisor bridge", ROLE_HYPERVISOR),
        ("None", None),
        ("", None),
        ("role=spine", None),
        ("hypervisors", None),
        ("role=", None),
    ],
)
def test_parse_role_reads_an_explicit_role_from_dp_desc(dp_desc, role):
    assert parse_role(dp_desc) == role


def test_role_follows_hosts_unless_overridden():
    topo = two_switches()
    assert topo.role(1) == ROLE_FABRIC
    topo.host_seen(MAC_A, 1, 2)
    assert topo.role(1) == ROLE_HYPERVISOR
    assert topo.set_role_override(1, "role=fabric")
    assert not topo.set_role_override(1, "fabric")
    assert topo.role(1) == ROLE_FABRIC
    assert topo.set_role_override(2, "hypervisor")
    assert topo.role(2) == ROLE_HYPERVISOR
    assert topo.set_role_override(2, "")
    assert topo.role(2) == ROLE_FABRIC
    assert topo.role(99) == ROLE_FABRIC


# ---------------------------------------------------------------------------
# A port that carried a link is never mistaken for a host port
# ---------------------------------------------------------------------------
def test_a_port_whose_link_timed_out_is_held_not_confirmed_as_edge():
    topo = two_switches()
    topo.link_seen(PortRef(1, 1), PortRef(2, 1), now=0.0)
    assert topo.expire_links(now=LINK_TIMEOUT + 1)
    confirmed(topo, now=100.0)
    assert 1 not in topo.edge_ports(1) and 1 not in topo.edge_ports(2)
    assert not topo.is_pending_port(1, 1), "frames from a lost link's port are neither held nor learned"
    assert topo.edge_ports(1) == [2, 3], "other ports still confirm normally"


def test_the_lost_link_comes_back_by_lldp():
    topo = two_switches()
    topo.link_seen(PortRef(1, 1), PortRef(2, 1), now=0.0)
    topo.expire_links(now=LINK_TIMEOUT + 1)
    assert topo.link_seen(PortRef(1, 1), PortRef(2, 1), now=10.0)
    assert topo.inter_switch_ports(1) == {1}


def test_a_held_port_can_become_an_edge_port_after_going_down_and_up():
    """Recabling a port (down, up) lets it prove itself again, this time as a host port."""
    topo = two_switches()
    topo.link_seen(PortRef(1, 1), PortRef(2, 1), now=0.0)
    topo.expire_links(now=LINK_TIMEOUT + 1)
    topo.set_port(1, Port(1, "s1-eth1", "aa:00:00:00:01:01", up=False))
    topo.set_port(1, Port(1, "s1-eth1", "aa:00:00:00:01:01", up=True))
    confirmed(topo, now=200.0)
    assert 1 in topo.edge_ports(1)


def test_the_link_and_host_indexes_follow_direct_edits_of_links_and_hosts():
    """Store loads and tests edit `links` and `hosts` directly: the indexes built from them
    (inter-switch ports, hosts per port) must never answer from before the edit."""
    topo = two_switches()
    topo.link_seen(PortRef(1, 1), PortRef(2, 1), 0.0)
    topo.host_seen(MAC_A, 1, 2, "10.0.0.1")
    assert topo.inter_switch_ports(1) == {1} and topo.hosts_on(1, 2) == {MAC_A}
    topo.links.clear()
    topo.links[Link.between(PortRef(1, 3), PortRef(2, 3))] = 0.0
    topo.hosts[MAC_A] = replace(topo.hosts[MAC_A], port=3)
    assert topo.inter_switch_ports(1) == {3}
    assert topo.hosts_on(1, 2) == set() and topo.hosts_on(1, 3) == {MAC_A}
    topo.hosts.pop(MAC_A)
    assert topo.hosts_on(1, 3) == set()


def test_switch_port_macs_follow_every_change_of_the_ports():
    """Kept up to date as ports change (a scan of every switch's ports for each switch connecting
    cost a thousand-switch cold start seconds)."""
    topo = two_switches()
    assert "aa:00:00:00:01:02" in topo.switch_macs()
    topo.set_port(1, Port(2, "s1-eth2", "AA:00:00:00:01:22"))
    assert "aa:00:00:00:01:02" not in topo.switch_macs() and "aa:00:00:00:01:22" in topo.switch_macs()
    topo.delete_port(1, 2)
    assert "aa:00:00:00:01:22" not in topo.switch_macs()
    topo.set_ports(2, [Port(1, "s2-eth1", "aa:00:00:00:01:01")])  # the same MAC on two switches
    topo.remove_switch(1)
    assert "aa:00:00:00:01:01" in topo.switch_macs(), "still a port's MAC on switch 2"
    assert set(topo.switch_macs()) == {"aa:00:00:00:01:01"}


def test_a_switch_connecting_forgets_hosts_that_were_its_own_ports():
    topo = two_switches()
    topo.host_seen("aa:00:00:00:03:01", 1, 1, "10.0.0.9")  # seen before switch 3 was known
    topo.host_seen(MAC_A, 1, 2, "10.0.0.1")
    topo.switch_connected(3)
    topo.set_ports(3, [Port(1, "s3-eth1", "aa:00:00:00:03:01")])
    assert topo.forget_switch_mac_hosts(3) == ["aa:00:00:00:03:01"]
    assert set(topo.hosts) == {MAC_A}
