"""The learner's rules, event by event: probes both ways make links, no guess is final, declared VM
ports never become inter-switch, and nothing a switch sends is ever a host."""

from __future__ import annotations

import struct

import pytest

from apps import pipeline
from topology import learner as learner_module
from topology import lldp
from topology.learner import (
    EDGE_CHECK_STALL,
    HELD_FRAME_MAX_AGE,
    LAG_ALLOWANCE_MAX,
    LAG_MEMORY,
    LLDP_MAX_AGE,
    PROBE_AGAIN_DELAY,
    UNHEARD_MAX,
    Learner,
    Outcome,
    PacketOut,
    Punt,
)
from topology.model import EDGE_CONFIRM_TIME, LINK_TIMEOUT, Link, Port, PortRef

KEY = b"k" * 32
VM_A, VM_B = "02:00:00:00:00:0a", "02:00:00:00:00:0b"


def port_mac(dpid: int, port: int) -> str:
    return f"aa:00:00:00:{dpid:02x}:{port:02x}"


def arp_frame(src_mac: str, sender_ip: str, target_ip: str = "10.0.0.254") -> bytes:
    mac = bytes.fromhex(src_mac.replace(":", ""))
    arp = struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1) + mac + bytes(map(int, sender_ip.split("."))) + bytes(6)
    arp += bytes(map(int, target_ip.split(".")))
    return b"\xff" * 6 + mac + struct.pack("!H", pipeline.ETH_TYPE_ARP) + arp


def rs_frame(src_mac: str) -> bytes:
    """An IPv6 router solicitation as the kernel sends it from a switch-side interface."""
    return bytes.fromhex("333300000002") + bytes.fromhex(src_mac.replace(":", "")) + b"\x86\xdd" + bytes(48)


class Driver:
    """The shell, reduced to what the rules need: it carries out outcomes (recompiles are counted,
    deferred steps run at once) and keeps every frame the learner asked to send."""

    def __init__(self, learner: Learner) -> None:
        self.learner = learner
        self.sent: list[PacketOut] = []
        self.compiles = 0

    def run(self, outcome: Outcome, now: float) -> Outcome:
        self.sent += outcome.send
        if outcome.changed:
            self.compiles += 1
        self.sent += outcome.send_after
        for step in outcome.after:
            self.run(step(now), now)
        return outcome

    def probes(self) -> list[PacketOut]:
        found = [p for p in self.sent if p.frame[12:14] == b"\x88\xcc"]
        self.sent = [p for p in self.sent if p not in found]
        return found


def fabric(switches=(1, 2), ports: int = 3, now: float = 0.0) -> tuple[Learner, Driver]:
    """Connected, synced switches with ports 1..ports up and their LOCAL ports."""
    learner = Learner(key=KEY)
    driver = Driver(learner)
    for dpid in switches:
        driver.run(learner.switch_connected(dpid, now), now)
        port_list = [Port(p, f"s{dpid}-eth{p}", port_mac(dpid, p)) for p in range(1, ports + 1)]
        port_list.append(Port(pipeline.OFPP_LOCAL, f"s{dpid}", port_mac(dpid, 0xFE)))
        driver.run(learner.ports_described(dpid, port_list, now), now)
        driver.run(learner.switch_synced(dpid, now), now)
    return learner, driver


def probe(src: PortRef, at_ms: int) -> bytes:
    return lldp.build_probe(KEY, src.dpid, src.port, port_mac(src.dpid, src.port), at_ms)


def deliver(learner: Learner, driver: Driver, src: PortRef, dst: PortRef, now: float, sent_at: float | None = None) -> Outcome:
    sent_at = now if sent_at is None else sent_at
    return driver.run(learner.packet_in(dst.dpid, dst.port, probe(src, int(sent_at * 1000)), Punt.COPY, now), now)


def confirm(learner: Learner, driver: Driver, now: float) -> float:
    """Run the edge checks through one proving time; return the time after."""
    t = now
    while t <= now + EDGE_CONFIRM_TIME + 0.05:
        driver.run(learner.check_edges(t), t)
        t += 0.05
    return t


A1, B1 = PortRef(1, 1), PortRef(2, 1)


# -- links -----------------------------------------------------------------------------------------
def test_a_probe_seen_one_way_is_answered_at_once_and_the_link_needs_both_ways():
    learner, driver = fabric()
    driver.probes()
    deliver(learner, driver, A1, B1, 1.0)
    assert not learner.topo.links, "one way is not a link"
    answers = driver.probes()
    assert [(p.dpid, p.out_port) for p in answers] == [(2, 1)], "answered from the port the probe arrived on"
    assert lldp.parse_probe(KEY, answers[0].frame) == (2, 1)
    deliver(learner, driver, B1, A1, 1.01)
    assert set(learner.topo.links) == {Link.between(A1, B1)}
    assert learner.port_history(1, 1).kind == learner.port_history(2, 1).kind == "inter-switch"


def test_answers_are_rate_limited_per_port():
    learner, driver = fabric()
    driver.probes()
    for i in range(10):
        deliver(learner, driver, A1, B1, 1.0 + i * 0.01)
    assert len(driver.probes()) == 1


def test_stale_forged_and_future_probes_are_refused_and_counted():
    learner, driver = fabric()
    deliver(learner, driver, B1, A1, 5.0)  # the answer direction, fresh
    deliver(learner, driver, A1, B1, 5.0 + LLDP_MAX_AGE + 0.1, sent_at=5.0)  # a replay, too old
    assert not learner.topo.links and learner.lldp_rejected == 1
    forged = lldp.build_probe(b"x" * 32, 1, 1, port_mac(1, 1), 5000)
    driver.run(learner.packet_in(2, 1, forged, Punt.COPY, 5.0), 5.0)
    assert not learner.topo.links and learner.lldp_rejected == 2


def test_a_controller_running_late_accepts_probes_as_late_and_ages_no_link_while_it_stalls():
    """Under its own load (a cold start's flow-mods, big tables read back) the controller's loop
    wakes late, and probes wait in its queues as long: refused as stale, no link formed and learned
    links timed out (a cold start of a hundred emulated hypervisors flapped 110 links). The lag the
    loop measures widens a probe's freshness for a while, and a stall refreshes every link."""
    learner, driver = fabric()
    deliver(learner, driver, B1, A1, 5.0)
    deliver(learner, driver, A1, B1, 5.0 + LLDP_MAX_AGE + 1.5, sent_at=5.0)
    assert not learner.topo.links, "without lag, a probe this old is a replay"
    learner.note_lag(2.0, 6.0)  # the loop woke 2 s late
    deliver(learner, driver, B1, A1, 7.5, sent_at=7.5)
    deliver(learner, driver, A1, B1, 7.5 + LLDP_MAX_AGE + 1.5, sent_at=7.5)
    assert learner.topo.links, "the same age is accepted while the controller runs late"
    # Long after the lag, the allowance is gone again.
    later = 7.5 + LAG_MEMORY + 5
    assert learner.probe_max_age(later) == LLDP_MAX_AGE
    # A stall longer than STALL: nobody heard the probes meanwhile, so no link ages for it.
    (link,) = learner.topo.links
    seen = learner.topo.links[link]
    learner.note_lag(LINK_TIMEOUT + 1, seen + LINK_TIMEOUT + 2)
    learner.tick(seen + LINK_TIMEOUT + 2.5)
    assert link in learner.topo.links, "a link must not time out for the controller's own stall"
    # The late probes widened link time-outs too (as long as they are remembered): after that, and
    # with the controller listening again, a silent link still ages.
    learner.tick(seen + 2 * LINK_TIMEOUT + 4 + LAG_ALLOWANCE_MAX)
    assert link not in learner.topo.links, "with the controller listening again, a silent link still ages"


def test_a_refreshed_link_is_not_aged_back_by_the_next_probe():
    """A stall gives every link a fresh window, as nobody could hear its probes. The first probe
    after it, one way, must not set the link back to when the other way was last heard: every link
    of a hundred-switch cold start timed out at the same instant, a few seconds after the fabric
    was learned."""
    learner, driver = fabric()
    deliver(learner, driver, A1, B1, 1.0)
    deliver(learner, driver, B1, A1, 1.0)
    (link,) = learner.topo.links
    learner.note_lag(2.0, 4.0)  # a stall: the link's window starts again at 4.0
    assert learner.topo.links[link] == 4.0
    deliver(learner, driver, A1, B1, 4.2)  # one way; B1 -> A1 was last heard at 1.0
    assert learner.topo.links[link] == 4.0
    driver.run(learner.tick(4.0 + LINK_TIMEOUT - 0.1), 4.0 + LINK_TIMEOUT - 0.1)
    assert link in learner.topo.links, "timed out for a probe the stall kept from arriving"


def test_a_late_tick_is_a_stall_and_ages_no_link():
    """After a long stall (a big reconcile) the tick loop may wake before the edge loop that would
    note the stall: every link of a 1,000-hypervisor cold start then timed out at once. A tick that
    comes late notes the stall itself."""
    learner, driver = fabric()
    deliver(learner, driver, A1, B1, 1.0)
    deliver(learner, driver, B1, A1, 1.0)
    (link,) = learner.topo.links
    driver.run(learner.tick(1.5, period=1.0), 1.5)
    late = 1.5 + 1.0 + LINK_TIMEOUT + 2  # due at 2.5, woke this late: nobody heard a probe meanwhile
    driver.run(learner.tick(late, period=1.0), late)
    assert link in learner.topo.links, "timed out for the controller's own stall"
    # Ticks on time again, and the link silent: it ages.
    t = late
    while t < late + LINK_TIMEOUT + 1:
        t += 1.0
        driver.run(learner.tick(t, period=1.0), t)
    assert link not in learner.topo.links


def test_a_switch_that_just_synced_probes_again_in_case_its_datapath_dropped_the_answer():
    """Open vSwitch confirms a new switch's first flows before its datapath forgets the "drop"
    it cached while it had none: the answer to its first probe can be lost, and a late
    hypervisor's uplink was then found only a probe period later (its VMs unreachable)."""
    learner, driver = fabric(switches=(1,), ports=2, now=10.0)
    confirm(learner, driver, 10.0)
    driver.run(learner.check_edges(11.0), 11.0)  # switch 1's own second round
    driver.run(learner.switch_connected(2, 12.0), 12.0)
    port_list = [Port(p, f"s2-eth{p}", port_mac(2, p)) for p in (1, 2)]
    driver.run(learner.ports_described(2, port_list, 12.0), 12.0)
    driver.run(learner.switch_synced(2, 12.0), 12.0)
    driver.probes()
    deliver(learner, driver, B1, A1, 12.01)  # switch 2's probe reaches switch 1, which answers...
    assert [(p.dpid, p.out_port) for p in driver.probes()] == [(1, 1)]  # ...and the answer is lost
    driver.run(learner.check_edges(12.1), 12.1)
    assert not driver.probes(), "not before PROBE_AGAIN_DELAY"
    driver.run(learner.check_edges(12.0 + PROBE_AGAIN_DELAY), 12.0 + PROBE_AGAIN_DELAY)
    again = driver.probes()
    assert (2, 1) in [(p.dpid, p.out_port) for p in again], "switch 2 probes its ports once more"
    deliver(learner, driver, B1, A1, 12.0 + PROBE_AGAIN_DELAY + 0.01)
    answer = [p for p in driver.probes() if (p.dpid, p.out_port) == (1, 1)]
    assert answer, "switch 1 answers again (its answer gap has passed)"
    deliver(learner, driver, A1, B1, 12.0 + PROBE_AGAIN_DELAY + 0.02)
    assert Link.between(A1, B1) in learner.topo.links
    driver.run(learner.check_edges(13.0), 13.0)
    assert not [p for p in driver.probes() if p.dpid == 2], "once only"


def test_late_probes_widen_freshness_and_link_timeouts_but_not_from_an_edge_port():
    """A cold start of a thousand switches delays every probe by seconds (queued behind flow-mods and
    packet-ins): then a probe 2 s old is news, and a link waits longer before it times out. The
    delay is read from the probes themselves."""
    learner, driver = fabric(ports=3, now=10.0)
    t = confirm(learner, driver, 10.0)  # every port faces hosts: the probes found nobody
    assert learner.probe_delay(t) == 0.0
    # A VM replays an old probe into its (edge) port: refused, and it widens nothing.
    deliver(learner, driver, A1, PortRef(2, 2), t, sent_at=t - 3.0)
    assert learner.probe_delay(t) == 0.0 and learner.probe_max_age(t) == LLDP_MAX_AGE
    # A new port comes up on switch 2; a probe reaches it 2 s late (the controller's queues).
    driver.run(learner.port_changed(2, Port(4, "s2-eth4", port_mac(2, 4)), t), t)
    deliver(learner, driver, A1, PortRef(2, 4), t + 0.01, sent_at=t - 2.0)
    assert learner.probe_delay(t + 0.01) == pytest.approx(2.01)
    assert learner.probe_max_age(t + 0.01) == pytest.approx(LLDP_MAX_AGE + 2.01)
    # The next probe that late is accepted, and the link waits as much longer before it times out.
    deliver(learner, driver, A1, PortRef(2, 4), t + 0.02, sent_at=t - 1.98)
    deliver(learner, driver, PortRef(2, 4), A1, t + 0.03)
    (link,) = learner.topo.links
    seen = learner.topo.links[link]
    driver.run(learner.tick(seen + LINK_TIMEOUT + 1.0), seen + LINK_TIMEOUT + 1.0)
    assert link in learner.topo.links
    t2 = t + LAG_MEMORY + 1  # forgotten after LAG_MEMORY
    assert learner.probe_delay(t2) == 0.0 and learner.probe_max_age(t2) == LLDP_MAX_AGE


def test_no_port_faces_hosts_while_a_connected_switch_has_not_probed_yet():
    """A hypervisor probes its uplink before the leaf behind it is ready (still connecting, its
    flows not in place): the uplink must not be taken for a VM port 0.1 s later."""
    learner, driver = fabric(switches=(1,), ports=2)
    driver.run(learner.switch_connected(2, 0.0), 0.0)  # connected, not synced: it has not probed
    port_list = [Port(p, f"s2-eth{p}", port_mac(2, p)) for p in (1, 2)]
    driver.run(learner.ports_described(2, port_list, 0.0), 0.0)
    t = confirm(learner, driver, 0.0)
    assert learner.port_history(1, 1).kind == "pending", "switch 2 may be behind it"
    driver.run(learner.switch_synced(2, t), t)
    deliver(learner, driver, B1, A1, t + 0.01)
    deliver(learner, driver, A1, B1, t + 0.02)
    confirm(learner, driver, t + 0.02)
    assert learner.port_history(1, 1).kind == "inter-switch"
    assert learner.port_history(1, 2).kind == "edge"


def test_a_switch_that_never_probes_is_waited_for_only_so_long():
    learner, driver = fabric(switches=(1,), ports=1)
    driver.run(learner.switch_connected(2, 0.0), 0.0)  # never syncs
    confirm(learner, driver, 0.0)
    assert learner.port_history(1, 1).kind == "pending"
    confirm(learner, driver, UNHEARD_MAX + 0.1)
    assert learner.port_history(1, 1).kind == "edge"


def test_a_link_probed_only_one_way_expires_even_while_that_way_keeps_coming():
    learner, driver = fabric()
    deliver(learner, driver, A1, B1, 1.0)
    deliver(learner, driver, B1, A1, 1.0)
    assert learner.topo.links
    t = 1.0
    while t < 1.0 + LINK_TIMEOUT + 2:
        t += 1.0
        deliver(learner, driver, A1, B1, t)  # B -> A stopped: a one-way cable is no link
        driver.run(learner.tick(t), t)
    assert not learner.topo.links
    assert learner.port_history(1, 1).kind == "lost-link"


# -- no guess is final -------------------------------------------------------------------------------
def test_a_port_confirmed_edge_with_hosts_becomes_inter_switch_and_its_hosts_are_forgotten():
    learner, driver = fabric()
    t = confirm(learner, driver, 0.0)
    assert learner.port_history(2, 1).kind == "edge"
    # Before switch 1 was known to be there, frames flooded by it were learned on switch 2's port.
    driver.run(learner.packet_in(2, 1, arp_frame(VM_A, "10.0.0.1"), Punt.MISS, t), t)
    driver.run(learner.packet_in(2, 1, arp_frame(VM_B, "10.0.0.2"), Punt.MISS, t), t)
    assert set(learner.topo.hosts) == {VM_A, VM_B}
    deliver(learner, driver, A1, B1, t)
    deliver(learner, driver, B1, A1, t)
    assert Link.between(A1, B1) in learner.topo.links
    assert not learner.topo.hosts and learner.hosts_forgotten == 2
    assert learner.kind_changes[("edge", "inter-switch")] == 2
    history = learner.port_history(2, 1)
    assert history.kind == "inter-switch" and history.changes == 2  # pending -> edge -> inter-switch
    # ... and the VM is learned again where it really is.
    driver.run(learner.packet_in(1, 3, arp_frame(VM_A, "10.0.0.1"), Punt.MISS, t), t)
    assert (learner.topo.hosts[VM_A].dpid, learner.topo.hosts[VM_A].port) == (1, 3)


def test_a_kind_can_change_any_number_of_times():
    learner, driver = fabric()
    t = confirm(learner, driver, 0.0)
    for _ in range(3):
        deliver(learner, driver, A1, B1, t)
        deliver(learner, driver, B1, A1, t)
        assert learner.port_history(1, 1).kind == "inter-switch"
        driver.run(learner.port_changed(1, Port(1, "s1-eth1", port_mac(1, 1), up=False), t), t)
        assert learner.port_history(1, 1).kind == "down"
        driver.run(learner.port_changed(1, Port(1, "s1-eth1", port_mac(1, 1), up=True), t), t)
        assert learner.port_history(1, 1).kind == "pending"
        t += 1.0
    assert learner.port_history(1, 1).changes == 1 + 3 * 3


# -- one-way probes and busy controllers hold a port back -----------------------------------------------
def test_a_port_whose_probe_was_heard_elsewhere_is_never_confirmed_as_an_edge_port():
    learner, driver = fabric()
    deliver(learner, driver, A1, B1, 0.0)  # switch 2 heard 1:1; the answer has not arrived yet
    confirm(learner, driver, 0.0)
    assert learner.port_history(1, 1).kind == "pending"
    assert learner.port_history(2, 1).kind == "pending"
    assert learner.port_history(1, 2).kind == "edge"


def test_time_the_controller_spent_busy_does_not_count_as_proving():
    learner, driver = fabric()
    driver.run(learner.check_edges(0.0), 0.0)
    # A long compile: the next check runs 0.5 s later, with the answering probe still unread.
    driver.run(learner.check_edges(EDGE_CHECK_STALL + 0.3), EDGE_CHECK_STALL + 0.3)
    assert learner.port_history(1, 1).kind == "pending"


# -- declared VM ports --------------------------------------------------------------------------------
def test_a_declared_vm_port_is_never_probed_never_linked_and_needs_no_proving():
    learner, driver = fabric()
    driver.run(learner.set_declared_vm_interfaces({"s1-eth1", "s2-eth1"}, 0.0), 0.0)
    driver.run(learner.check_edges(0.0), 0.0)
    assert learner.port_history(1, 1).kind == "edge", "declared: edge at once"
    driver.probes()
    driver.run(learner.tick(1.0), 1.0)
    assert (1, 1) not in {(p.dpid, p.out_port) for p in driver.probes()}
    # Two VMs relaying probes they got before the declaration, or from elsewhere:
    deliver(learner, driver, A1, B1, 1.0)
    deliver(learner, driver, B1, A1, 1.0)
    assert not learner.topo.links and learner.probes_refused == 2


def test_declaring_a_port_drops_the_link_on_it():
    learner, driver = fabric()
    deliver(learner, driver, A1, B1, 0.0)
    deliver(learner, driver, B1, A1, 0.0)
    out = driver.run(learner.set_declared_vm_interfaces({"s2-eth1"}, 0.1), 0.1)
    assert out.changed and not learner.topo.links


def test_a_port_where_one_inventory_vm_spoke_is_a_vm_port():
    learner, driver = fabric()
    learner.set_inventory_macs({VM_A: "web1", VM_B: "web2"})
    t = confirm(learner, driver, 0.0)
    driver.run(learner.packet_in(1, 1, arp_frame(VM_A, "10.0.0.1"), Punt.MISS, t), t)
    driver.run(learner.packet_in(2, 1, arp_frame(VM_B, "10.0.0.2"), Punt.MISS, t), t)
    deliver(learner, driver, A1, B1, t)
    deliver(learner, driver, B1, A1, t)
    assert not learner.topo.links and learner.probes_refused >= 2
    assert set(learner.topo.hosts) == {VM_A, VM_B}


def test_a_port_that_carried_several_vms_is_no_proof_of_a_vm_port():
    """Frames flooded from the fabric before the switch behind it connected: the link wins."""
    learner, driver = fabric()
    learner.set_inventory_macs({VM_A: "web1", VM_B: "web2"})
    t = confirm(learner, driver, 0.0)
    driver.run(learner.packet_in(2, 1, arp_frame(VM_A, "10.0.0.1"), Punt.MISS, t), t)
    driver.run(learner.packet_in(2, 1, arp_frame(VM_B, "10.0.0.2"), Punt.MISS, t), t)
    deliver(learner, driver, A1, B1, t)
    deliver(learner, driver, B1, A1, t)
    assert Link.between(A1, B1) in learner.topo.links and not learner.topo.hosts


# -- never a host from a switch -----------------------------------------------------------------------
def test_chatter_from_a_switch_that_connects_later_is_forgotten_when_its_ports_are_known():
    learner, driver = fabric(switches=(1,))
    t = confirm(learner, driver, 0.0)
    late_uplink = "aa:00:00:00:07:01"
    driver.run(learner.packet_in(1, 1, arp_frame(late_uplink, "10.9.9.9"), Punt.MISS, t), t)
    assert late_uplink in learner.topo.hosts
    driver.run(learner.switch_connected(7, t), t)
    driver.run(learner.ports_described(7, [Port(1, "s7-eth1", late_uplink)], t), t)
    assert late_uplink not in learner.topo.hosts


def test_frames_from_known_switch_macs_multicast_sources_and_the_local_port_never_make_hosts():
    learner, driver = fabric()
    t = confirm(learner, driver, 0.0)
    for in_port, frame in [
        (2, rs_frame(port_mac(2, 1))),  # switch 2's uplink chatter arriving at switch 1
        (2, arp_frame(port_mac(2, 0xFE), "10.0.0.100")),  # switch 2's own stack (its LOCAL MAC)
        (pipeline.OFPP_LOCAL, arp_frame("02:99:00:00:00:01", "10.0.0.101")),  # switch 1's stack
        (2, arp_frame("03:00:00:00:00:01", "10.0.0.102")),  # a multicast source
    ]:
        driver.run(learner.packet_in(1, in_port, frame, Punt.MISS, t), t)
    assert not learner.topo.hosts


# -- held frames ------------------------------------------------------------------------------------
def test_frames_on_a_pending_port_are_held_and_replayed_once_it_is_an_edge_port():
    learner, driver = fabric()
    driver.run(learner.packet_in(1, 3, arp_frame(VM_A, "10.0.0.1"), Punt.MISS, 0.0), 0.0)
    assert not learner.topo.hosts
    confirm(learner, driver, 0.0)
    assert learner.topo.hosts[VM_A].port == 3
    reinjected = [p for p in driver.sent if p.out_port == pipeline.OFPP_TABLE]
    assert [(p.dpid, p.in_port) for p in reinjected] == [(1, 3)]


def test_a_host_held_on_a_pending_port_is_learned_with_the_confirmation_not_a_compile_later():
    """The confirmation of a port starts a compile. The hosts its held frames teach belong in it:
    handled only once that compile's flows were in place, they were learned, and compiled, a
    compile later (most of 20,000 VMs at a cold start). Re-injecting the frame still waits."""
    learner, driver = fabric()
    driver.run(learner.packet_in(1, 3, arp_frame(VM_A, "10.0.0.1"), Punt.MISS, 0.0), 0.0)
    t, confirming = 0.0, None
    while confirming is None and t <= EDGE_CONFIRM_TIME + 0.1:
        out = learner.check_edges(t)
        if out.changed:
            confirming = out
        t += 0.05
    assert confirming is not None and VM_A in learner.topo.hosts and confirming.learned
    assert [(p.dpid, p.in_port, p.out_port) for p in confirming.send_after] == [(1, 3, pipeline.OFPP_TABLE)]
    assert not any(p.out_port == pipeline.OFPP_TABLE for p in confirming.send), "not before the flows are in place"
    assert not any(step(t).send_after for step in confirming.after), "and handled once"


def test_a_known_hosts_missed_frame_waits_for_its_flows_and_does_not_bounce():
    """A known host's frame can miss while its flows are still on their way (a cold start's
    backlog). Re-injected at once it would miss again, come back and bounce between switch and
    controller until they land: it waits for the switch to confirm them (send_after), and a miss
    soon after that re-injection is not re-injected again."""
    learner, driver = fabric()
    t = confirm(learner, driver, 0.0)
    frame = arp_frame(VM_A, "10.0.0.1")
    assert learner.packet_in(1, 3, frame, Punt.MISS, t).changed  # learned
    again = learner.packet_in(1, 3, frame, Punt.MISS, t + 0.01)
    assert not again.changed and not again.send
    assert [(p.dpid, p.in_port, p.out_port) for p in again.send_after] == [(1, 3, pipeline.OFPP_TABLE)]
    bounced = learner.packet_in(1, 3, frame, Punt.MISS, t + 0.02)
    assert not bounced.send and not bounced.send_after
    later = learner.packet_in(1, 3, frame, Punt.MISS, t + 0.02 + learner_module.REINJECT_GAP)
    assert len(later.send_after) == 1


def test_held_frames_on_a_port_that_becomes_inter_switch_are_dropped_and_old_ones_expire():
    learner, driver = fabric()
    driver.run(learner.packet_in(2, 1, arp_frame(VM_A, "10.0.0.1"), Punt.MISS, 0.0), 0.0)
    driver.run(learner.packet_in(1, 3, arp_frame(VM_B, "10.0.0.2"), Punt.MISS, 0.0), 0.0)
    deliver(learner, driver, A1, B1, 0.0)
    deliver(learner, driver, B1, A1, 0.0)
    confirm(learner, driver, HELD_FRAME_MAX_AGE + 1)
    assert not learner.topo.hosts


def test_a_restarted_learner_keeps_known_links_alive_with_probes_both_ways():
    learner, driver = fabric()
    deliver(learner, driver, A1, B1, 0.0)
    deliver(learner, driver, B1, A1, 0.0)
    again = Learner(learner.topo, key=KEY, now=10.0)
    again.topo.refresh_links(10.0)
    driver2 = Driver(again)
    for t in (11.0, 12.0, 13.0, 14.0, 15.0):
        deliver(again, driver2, A1, B1, t)
        deliver(again, driver2, B1, A1, t)
        driver2.run(again.tick(t), t)
    assert Link.between(A1, B1) in again.topo.links


def test_a_switch_back_after_longer_than_the_link_timeout_keeps_its_links_until_it_can_probe():
    """While a switch is away its links cannot age; when it comes back, the next tick (before its first
    probe can cross) must not drop them: that flap would recompile the fabric and lose frames."""
    learner, driver = fabric()
    deliver(learner, driver, A1, B1, 0.0)
    deliver(learner, driver, B1, A1, 0.0)
    link = Link.between(A1, B1)
    driver.run(learner.switch_disconnected(2, 1.0), 1.0)
    away = 1.0 + 2 * LINK_TIMEOUT
    driver.run(learner.tick(away), away)
    assert link in learner.topo.links
    driver.run(learner.switch_connected(2, away), away)
    for t in (away + 0.1, away + 1.0, away + LINK_TIMEOUT - 0.1):
        driver.run(learner.tick(t), t)
        assert link in learner.topo.links, f"the link was dropped {t - away:.1f} s after its switch came back"
    # Without probes it does age out, a full window after the switch came back.
    t = away + LINK_TIMEOUT + 0.5
    driver.run(learner.tick(t), t)
    assert link not in learner.topo.links


def test_a_busy_switch_is_not_probed_and_its_links_do_not_age_nor_any_while_the_controller_is_behind():
    """Under its own flow-mods a switch's probes would arrive stale; a controller behind on its
    frames may hold the probes that keep a link alive: neither must time a link out."""
    learner, driver = fabric()
    learner.switch_synced(1, 0.0)
    learner.switch_synced(2, 0.0)
    deliver(learner, driver, A1, B1, 0.0)
    deliver(learner, driver, B1, A1, 0.0)
    link = Link.between(A1, B1)
    sent = learner.tick(1.0, busy={2}).send
    assert {p.dpid for p in sent} == {1}, "no probe for the busy switch"
    t = 1.0
    while t < 3 * LINK_TIMEOUT:
        t += 1.0
        driver.run(learner.tick(t, busy={2}), t)
        assert link in learner.topo.links, f"timed out {t:.0f} s in while its switch was busy"
    t += LINK_TIMEOUT / 2
    driver.run(learner.tick(t, behind=True), t)
    t += LINK_TIMEOUT
    driver.run(learner.tick(t, behind=True), t)
    assert link in learner.topo.links, "aged while the controller was behind"
    t += 0.1
    driver.run(learner.tick(t), t)
    assert link not in learner.topo.links, "once caught up, a link with no probes ages as before"


@pytest.mark.parametrize("kind", ["down", "pending", "edge", "inter-switch", "lost-link"])
def test_every_kind_is_reachable(kind):
    learner, driver = fabric()
    t = 0.0
    if kind == "down":
        driver.run(learner.port_changed(1, Port(1, "s1-eth1", port_mac(1, 1), up=False), t), t)
    elif kind == "edge":
        confirm(learner, driver, t)
    elif kind in ("inter-switch", "lost-link"):
        deliver(learner, driver, A1, B1, t)
        deliver(learner, driver, B1, A1, t)
        if kind == "lost-link":
            driver.run(learner.tick(t + LINK_TIMEOUT + 1), t + LINK_TIMEOUT + 1)
    assert learner.port_history(1, 1).kind == kind


def test_an_unanswered_arp_request_for_a_known_host_makes_its_switch_answer_that_address():
    """The request was flooded to its owner and copied to the controller: the switch of the VM
    that asked answers the address itself from then on (Topology.asked), for known holders only,
    the newest ASKED_PER_SWITCH (topology.model) addresses per switch."""
    learner, driver = fabric()
    t = confirm(learner, driver, 0.0)
    driver.run(learner.packet_in(2, 1, arp_frame(VM_B, "10.0.0.2"), Punt.MISS, t), t)
    compiles = driver.compiles
    asking = arp_frame(VM_A, "10.0.0.1", target_ip="10.0.0.2")
    assert driver.run(learner.packet_in(1, 2, asking, Punt.UNANSWERED_ARP, t), t).changed
    assert learner.topo.asked == {1: ("10.0.0.2",)} and driver.compiles == compiles + 1
    assert not learner.packet_in(1, 2, asking, Punt.UNANSWERED_ARP, t).changed, "asked twice: noted once"
    nobody = arp_frame(VM_A, "10.0.0.1", target_ip="10.9.9.9")
    assert not learner.packet_in(1, 2, nobody, Punt.UNANSWERED_ARP, t).changed, "no host holds it: nothing to answer"
    reply = bytearray(asking)
    reply[21] = 2  # an ARP reply is never a question
    assert not learner.packet_in(1, 3, bytes(reply), Punt.UNANSWERED_ARP, t).changed
    assert learner.topo.asked == {1: ("10.0.0.2",)}
    for i in range(3):
        learner.topo.host_seen(f"02:00:00:00:01:{i:02x}", 2, 2, f"10.0.1.{i}")
        assert learner.topo.note_asked(1, f"10.0.1.{i}", limit=2)
    assert learner.topo.asked[1] == ("10.0.1.1", "10.0.1.2"), "the newest, oldest forgotten first"
    learner.topo.remove_switch(1)
    assert 1 not in learner.topo.asked


def test_a_request_asked_again_and_copied_back_is_not_kept_for_ever():
    """Asking an unanswered request again re-injects it, and its copy comes back to the controller:
    that copy must not renew it, or a cold start that keeps confirming ports re-injects the same
    requests (each copied back) for as long as it lasts."""
    from topology.learner import UNANSWERED_ARP_KEEP

    learner, driver = fabric()
    t = confirm(learner, driver, 0.0)
    asking = arp_frame(VM_A, "10.0.0.1", target_ip="10.0.0.254")
    learner.packet_in(1, 2, asking, Punt.UNANSWERED_ARP, t)
    again = learner.ask_again(t + 0.1).send
    assert [(p.dpid, p.in_port, p.out_port) for p in again] == [(1, 2, pipeline.OFPP_TABLE)]
    learner.packet_in(1, 2, asking, Punt.UNANSWERED_ARP, t + 0.2)  # its copy, back from the switch
    assert learner.ask_again(t + UNANSWERED_ARP_KEEP * 0.9).send, "still kept within its time"
    assert not learner.ask_again(t + UNANSWERED_ARP_KEEP + 0.05).send, "kept from when it was first seen"
    learner.packet_in(1, 2, asking, Punt.UNANSWERED_ARP, t + UNANSWERED_ARP_KEEP + 0.1)  # the VM asks again later
    assert learner.ask_again(t + UNANSWERED_ARP_KEEP + 0.2).send, "a new request is kept anew"


def test_settled_edge_ports_take_turns_being_probed_and_a_switch_plugged_in_behind_one_is_found_at_once():
    from topology.learner import EDGE_PROBE_EVERY, EDGE_SETTLED

    learner, driver = fabric(switches=(1,), ports=3)
    t = confirm(learner, driver, 0.0)
    assert set(learner.topo.switches[1].edge_confirmed) == {1, 2, 3}

    def probed(now: float) -> list[int]:
        return sorted(p.out_port for p in learner.tick(now).send if p.frame[12:14] == b"\x88\xcc")

    assert probed(t + 1) == [1, 2, 3], "newly confirmed edge ports are probed every tick"
    later = t + EDGE_SETTLED + 1
    rounds = [probed(later + i) for i in range(EDGE_PROBE_EVERY)]
    assert sorted(p for r in rounds for p in r) == [1, 2, 3], "each settled edge port once in EDGE_PROBE_EVERY ticks"
    # A switch plugged in behind port 2: its new ports probe every tick, its probe is answered at once.
    now = later + EDGE_PROBE_EVERY
    driver.run(learner.switch_connected(2, now), now)
    driver.run(learner.ports_described(2, [Port(1, "s2-eth1", port_mac(2, 1))], now), now)
    driver.run(learner.switch_synced(2, now), now)
    deliver(learner, driver, PortRef(2, 1), PortRef(1, 2), now + 0.01)
    answers = driver.probes()
    assert (1, 2) in [(p.dpid, p.out_port) for p in answers], "answered from the settled edge port at once"
    deliver(learner, driver, PortRef(1, 2), PortRef(2, 1), now + 0.02)
    assert Link.between(PortRef(1, 2), PortRef(2, 1)) in learner.topo.links


def test_requests_replayed_to_newly_confirmed_ports_cost_at_most_one_packet_out_each_at_scale():
    """Ports confirmed as edge ports get the recent unanswered requests straight, as a flood would
    have reached them. Every request out of every port of a cold start (256 requests, 20,000 ports)
    was five million packet-outs built at once: beyond REPLAY_STRAIGHT_MAX each request is asked
    again once, through its switch's flows, whose flood now reaches the confirmed ports."""
    from topology.learner import REPLAY_STRAIGHT_MAX

    learner, driver = fabric(switches=(1, 2), ports=40)
    t = confirm(learner, driver, 0.0)
    ports = [PortRef(d, p) for d in (1, 2) for p in range(1, 41)]
    few = [arp_frame(VM_A, "10.0.0.1", target_ip=f"10.0.9.{n}") for n in range(2)]
    for frame in few:
        learner.packet_in(1, 2, frame, Punt.UNANSWERED_ARP, t)
    straight = learner.ask_confirmed_ports(ports, t + 0.1).send
    assert len(straight) == len(few) * (len(ports) - 1), "a few requests go straight out of every other port"
    assert {(p.dpid, p.out_port) for p in straight} == {(r.dpid, r.port) for r in ports if r != PortRef(1, 2)}

    many = [arp_frame(VM_A, "10.0.0.1", target_ip=f"10.0.{n // 250}.{n % 250}") for n in range(256)]
    for frame in many:
        learner.packet_in(1, 2, frame, Punt.UNANSWERED_ARP, t + 0.2)
    assert len(many) * len(ports) > REPLAY_STRAIGHT_MAX
    asked = learner.ask_confirmed_ports(ports, t + 0.3).send
    assert len(asked) == learner_module.UNANSWERED_ARP_MAX, "the requests kept (the newest), each once"
    assert {(p.dpid, p.in_port, p.out_port) for p in asked} == {(1, 2, pipeline.OFPP_TABLE)}


def test_a_request_is_not_asked_again_from_a_port_its_sender_has_left():
    """Asked again, a request is re-injected where it was sent. A VM that migrated since would miss
    there and be learned back on the port it left, its traffic sent there until it spoke again."""
    learner, driver = fabric()
    t = confirm(learner, driver, 0.0)
    driver.run(learner.packet_in(1, 2, arp_frame(VM_A, "10.0.0.1"), Punt.MISS, t), t)
    asking = arp_frame(VM_A, "10.0.0.1", target_ip="10.0.0.254")
    learner.packet_in(1, 2, asking, Punt.UNANSWERED_ARP, t)
    assert [(p.dpid, p.in_port) for p in learner.ask_again(t + 0.1).send] == [(1, 2)]
    driver.run(learner.packet_in(1, 3, arp_frame(VM_A, "10.0.0.1"), Punt.MISS, t + 0.2), t + 0.2)  # it moved
    assert (learner.topo.hosts[VM_A].dpid, learner.topo.hosts[VM_A].port) == (1, 3)
    assert learner.ask_again(t + 0.3).send == []


def test_ports_of_a_switch_that_change_alike_are_logged_in_one_line(caplog):
    """A cold start of 20,000 VMs logged 20,000 'pending -> edge' lines, 5% of the controller's time."""
    import logging

    learner, driver = fabric(switches=(1,), ports=3)
    with caplog.at_level(logging.INFO, logger="goldilocks.learner"):
        confirm(learner, driver, 0.0)
    lines = [r.getMessage() for r in caplog.records if "pending -> edge" in r.getMessage()]
    assert lines == ["switch 0000000000000001 ports 1 (s1-eth1), 2 (s1-eth2), 3 (s1-eth3): pending -> edge"]
    assert learner.kind_changes[("pending", "edge")] == 3, "each port still counts"
    assert learner.port_history(1, 2).changes == 1
