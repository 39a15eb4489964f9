"""The learned topology converges to the true cabling: for random fabrics (loops and parallel
cables included) and random orders and delays of switch connects, port-ups, probes and chatter,
once every switch is connected and has exchanged probes, the model is the cabling, every VM is
where it is, and the flows built from it deliver every frame exactly once without a loop.

Each case is one seed of tests/fabric_sim.py; a failure names the seed and prints the fabric and
the plan. FABRIC_SIM_SEEDS=<n> runs n random seeds instead of the default (a longer soak)."""

from __future__ import annotations

import itertools
import os
from collections import Counter

import pytest

from apps.desired import desired_tables
from tests.fabric_sim import (
    UNKNOWN_IP,
    Fabric,
    Plan,
    Simulation,
    arp_request,
    ipv6_chatter,
    leaf_spine_fabric,
    ping,
    run,
    scenario,
)
from topology.model import KIND_EDGE, KIND_INTER_SWITCH, Link, PortRef

RANDOM_SEEDS = range(int(os.environ.get("FABRIC_SIM_SEEDS", "48")))
LEAF_SPINE_SEEDS = range(1000, 1000 + int(os.environ.get("FABRIC_SIM_LEAF_SPINE_SEEDS", "8")))


# -- the property --------------------------------------------------------------------------------
def convergence_problems(sim: Simulation) -> list[str]:
    """Everything that differs from the truth once the run is over, in words."""
    fabric, learner = sim.fabric, sim.learner
    topo = learner.topo
    problems: list[str] = []
    name = {dpid: spec.name for dpid, spec in fabric.switches.items()}

    def at(ref: PortRef) -> str:
        return f"{name.get(ref.dpid, hex(ref.dpid))}:{ref.port}"

    # The shell caught up: every switch is connected, synced and holds the tables of the model.
    if not sim.all_synced():
        problems.append(f"not every switch synced: {sorted(name[d] for d in fabric.switches if d not in sim.synced)}")
    fresh = desired_tables(topo, sim.policy, sim.identities)
    for dpid in sorted(fabric.switches):
        installed = {e for entries in sim.net.tables.get(dpid, {}).values() for e in entries}
        if installed != set(fresh.get(dpid, {}).values()):
            problems.append(f"{name[dpid]} does not hold the tables of the final model")

    # 1. Links are the cables, one link per cable.
    truth = fabric.true_links()
    learned = set(topo.links)

    def link_text(link: Link) -> str:
        return f"{at(link.a)}-{at(link.b)}"

    for link in sorted(truth - learned, key=link_text):
        problems.append(f"cable {link_text(link)} not learned")
    for link in sorted(learned - truth, key=link_text):
        problems.append(f"link {link_text(link)} learned, but there is no such cable")

    # 2. Hosts are VMs, where they are; every VM that spoke last is known; no switch is a host.
    vms = {vm.mac: vm for vm in fabric.vms}
    switch_macs = {fabric.port_mac(PortRef(d, p)) for d, spec in fabric.switches.items() for p in spec.ports}
    switch_macs |= {fabric.local_mac(d) for d in fabric.switches}
    for mac, host in sorted(topo.hosts.items()):
        where = PortRef(host.dpid, host.port)
        vm = vms.get(mac)
        if vm is None:
            what = "a switch port's MAC" if mac in switch_macs else "no VM's MAC"
            problems.append(f"phantom host {mac} ({what}) at {at(where)}")
        elif where != vm.at:
            problems.append(f"{vm.name} learned at {at(where)}, but it is at {at(vm.at)}")
        elif not host.ips <= {vm.ip}:
            problems.append(f"{vm.name} learned with addresses {sorted(host.ips)}, but it has {vm.ip}")
    for vm in sim.spoke_after_convergence:
        if vm.mac not in topo.hosts:
            problems.append(f"{vm.name} spoke after convergence and is not learned")

    # 3. Port kinds: cabled ports are inter-switch, VM and spare ports edge.
    expected = {end: KIND_INTER_SWITCH for cable in fabric.cables for end in cable}
    expected |= {vm.at: KIND_EDGE for vm in fabric.vms}
    expected |= dict.fromkeys(fabric.spare, KIND_EDGE)
    for ref, kind in sorted(expected.items(), key=lambda item: (item[0].dpid, item[0].port)):
        reported = learner.port_history(ref.dpid, ref.port).kind
        modelled = topo.port_kind(ref.dpid, ref.port)
        if reported != kind or modelled != kind:
            problems.append(f"port {at(ref)} is {reported} (model: {modelled}), expected {kind}")

    # 4 and 5. Through the final tables: broadcast reaches every other VM once, unicast arrives once.
    net = sim.final_network()
    edge_ports = {vm.at for vm in fabric.vms} | set(fabric.spare)
    for vm in fabric.vms:
        trace = net.trace(vm.at.dpid, vm.at.port, arp_request(vm.mac, vm.ip, UNKNOWN_IP))
        if trace.loops:
            problems.append(f"broadcast from {vm.name} loops: {trace.loops[0].path}")
        reached = Counter(PortRef(*d.at) for d in trace.deliveries)
        wanted = Counter(edge_ports - {vm.at})
        if reached != wanted:
            missed = sorted(at(r) for r in wanted - reached)
            extra = sorted(at(r) for r in reached - wanted)
            problems.append(f"broadcast from {vm.name}: missed {missed}, extra or duplicate {extra}")
    for src, dst in itertools.permutations(fabric.vms, 2):
        trace = net.trace(src.at.dpid, src.at.port, ping(src.mac, src.ip, dst.mac, dst.ip))
        got = [PortRef(*d.at) for d in trace.deliveries]
        if trace.loops or got != [dst.at]:
            problems.append(f"ping {src.name} -> {dst.name} delivered to {[at(r) for r in got]}, loops {len(trace.loops)}")
    return problems


def assert_converged(sim: Simulation, label: str) -> None:
    problems = convergence_problems(sim)
    assert not problems, f"{label}: the learned topology did not converge:\n  " + "\n  ".join(problems) + (
        f"\n{sim.describe()}"
    )


@pytest.mark.parametrize("seed", RANDOM_SEEDS)
def test_a_random_fabric_converges_to_its_cabling(seed):
    fabric, plan = scenario(seed)
    assert_converged(run(fabric, plan, seed), f"random fabric, seed {seed}")


@pytest.mark.parametrize("seed", LEAF_SPINE_SEEDS)
def test_a_leaf_spine_with_a_cross_cable_converges_to_its_cabling(seed):
    fabric, plan = scenario(seed, "leaf-spine")
    assert_converged(run(fabric, plan, seed), f"leaf-spine, seed {seed}")


# -- targeted scenarios ----------------------------------------------------------------------------
def all_at(fabric: Fabric, when: float) -> dict[int, float]:
    return dict.fromkeys(fabric.switches, when)


def by_name(fabric: Fabric, name: str) -> int:
    return next(dpid for dpid, spec in fabric.switches.items() if spec.name == name)


def uplink(fabric: Fabric, hypervisor: int) -> tuple[PortRef, PortRef]:
    """(the hypervisor's end, the fabric's end) of its first cable."""
    a, b = next(c for c in fabric.cables if hypervisor in (c[0].dpid, c[1].dpid))
    return (a, b) if a.dpid == hypervisor else (b, a)


def test_a_hypervisor_connecting_seconds_after_its_leaf_is_learned_although_its_uplink_chattered():
    """The bug this learner replaces: the leaf confirmed its port to a silent hypervisor as an edge
    port, learned the hypervisor's uplink MAC there, and then refused the hypervisor's probes."""
    fabric = leaf_spine_fabric()
    hv = by_name(fabric, "hv11")
    hv_end, leaf_end = uplink(fabric, hv)
    plan = Plan(connect={**all_at(fabric, 0.2), hv: 5.2})
    sim = Simulation(fabric, plan, seed=1)
    for when in (1.0, 2.5, 4.0, 5.0):  # besides the random chatter: kernel chatter out of the uplink
        sim.at(when, sim.enter, leaf_end.dpid, leaf_end.port, ipv6_chatter(fabric.port_mac(hv_end)))
    sim.run_until(5.1)
    assert sim.learner.port_history(leaf_end.dpid, leaf_end.port).kind == KIND_EDGE, "the wrong guess this test is about"
    assert fabric.port_mac(hv_end) in sim.learner.topo.hosts, "the wrong guess this test is about"
    sim.converge()
    assert_converged(sim, "hypervisor 5 s after its leaf")


def test_a_leaf_that_connects_last_is_learned_with_its_hypervisors():
    fabric = leaf_spine_fabric()
    leaf = by_name(fabric, "leaf2")
    plan = Plan(connect={**all_at(fabric, 0.5), leaf: 6.0})
    sim = Simulation(fabric, plan, seed=2)
    sim.converge()
    assert_converged(sim, "leaf2 connects last")


@pytest.mark.parametrize("switch", ["spine1", "leaf1", "hv21"])
@pytest.mark.parametrize("outage", [1.0, 5.0])  # shorter and longer than a link's timeout
def test_a_switch_that_disconnects_and_reconnects_is_learned_again(switch, outage):
    fabric = leaf_spine_fabric()
    dpid = by_name(fabric, switch)
    plan = Plan(connect=all_at(fabric, 0.3), outages=[(dpid, 3.0, 3.0 + outage)])
    sim = Simulation(fabric, plan, seed=3)
    sim.converge()
    assert_converged(sim, f"{switch} away for {outage} s")


def relay_fabric() -> tuple[Fabric, tuple[str, str]]:
    """The leaf-spine with two VMs under different leaves that re-send each other's probes."""
    fabric = leaf_spine_fabric()
    return fabric, ("hv11-vm1", "hv31-vm2")


@pytest.mark.parametrize("declare_at", [0.0, 4.0])
def test_vms_relaying_probes_make_no_link_when_their_ports_are_declared(declare_at):
    fabric, relay = relay_fabric()
    plan = Plan(connect=all_at(fabric, 0.5), declare_at=declare_at, relay=relay)
    sim = Simulation(fabric, plan, seed=4)
    sim.converge()
    assert_converged(sim, f"relaying VMs, ports declared at {declare_at} s")


def test_vms_relaying_probes_make_no_link_when_they_are_inventory_vms_that_have_spoken():
    fabric, relay = relay_fabric()
    plan = Plan(connect=all_at(fabric, 0.5), inventory=True, relay=relay, relay_from=6.0)
    sim = Simulation(fabric, plan, seed=5)
    sim.run_until(plan.relay_from)
    vms = {vm.name: vm for vm in fabric.vms}
    assert all(vms[name].mac in sim.learner.topo.hosts for name in relay), "both VMs spoke before relaying"
    sim.run_until(plan.relay_from + 3)
    assert sim.learner.probes_refused, "the relayed probes reached the controller and were refused"
    sim.converge()
    assert_converged(sim, "relaying inventory VMs")


# -- the simulator itself ----------------------------------------------------------------------------
def test_frames_survive_encoding_as_the_learner_reads_them():
    from tests.fabric_sim import decode, encode
    from topology.learner import sender_ip

    frames = [
        arp_request("02:00:00:00:00:01", "10.0.0.1", "10.0.0.2"),
        ping("02:00:00:00:00:01", "10.0.0.1", "02:00:00:00:00:02", "10.0.0.2", 7),
        ipv6_chatter("5a:00:01:00:00:01"),
        ipv6_chatter("5a:00:01:00:00:01", solicitation=False),
    ]
    for frame in frames:
        raw = encode(frame)
        assert decode(raw) == frame and len(raw) >= 60
    assert sender_ip(encode(frames[0])) == ("02:00:00:00:00:01", "10.0.0.1")
    assert sender_ip(encode(frames[1])) == ("02:00:00:00:00:01", "10.0.0.1")
    assert sender_ip(encode(frames[2])) == ("5a:00:01:00:00:01", None)


def test_a_switch_that_never_connected_drops_everything():
    fabric = leaf_spine_fabric(spines=1, leaves=1, hypervisors_per_leaf=1, vms=1)
    sim = Simulation(fabric, Plan(connect={by_name(fabric, "leaf1"): 0.0, by_name(fabric, "spine1"): 0.0}), seed=6)
    sim.run_until(3.0)
    vm = fabric.vms[0]
    trace = sim.net.trace(vm.at.dpid, vm.at.port, arp_request(vm.mac, vm.ip, UNKNOWN_IP))
    assert not trace.deliveries and not trace.punts
