"""Mirroring a quarantined VM's traffic to an analyzer VM (quarantine `mirror_to`), for forensics.

Every frame the VM sends and every frame sent to it is copied once, where it enters the network:
the VM's frames on its own port, frames to it on the edge port of whoever sent them. Copies are made
whatever quarantine then does with the frame (dropped or, in remediation, allowed), so the analyzer
sees what the VM tried as well as what got through.

A copy keeps its headers (the analyzer sees the original MACs and addresses; capture in promiscuous
mode). If the analyzer is on the same hypervisor it goes straight to its port. Otherwise it crosses
the fabric like RSPAN: tagged with the analyzer's VLAN from a reserved range (MIRROR_VLANS), switched
hop by hop along the shortest path on that tag alone, and untagged at the analyzer's port. Tagged
frames in the reserved range that do not arrive on an inter-switch port (a VM trying to inject into
a mirror, say) are dropped, as are copies with no path to their analyzer.

Copies cross the fabric in clear and are not rate-limited beyond what the VM sends: mirror only what
the analyzer's link can take."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from apps import pipeline
from apps.flows import Conntrack, FlowEntry, Output, PopVlan, PushVlan, SetField

APP = pipeline.APP_QUARANTINE
OFPVID_PRESENT = 0x1000
MIRROR_VLAN_BASE = 0xFC0  # VLANs 4032-4095 carry mirror copies; one per analyzer
MAX_ANALYZERS = 64
MIRROR_VLANS = (OFPVID_PRESENT | MIRROR_VLAN_BASE, OFPVID_PRESENT | MIRROR_VLAN_BASE)  # (value, mask) of the range


@dataclass(frozen=True)
class Analyzer:
    """An analyzer VM where the network has seen it, and the VLAN its copies travel on."""

    name: str
    dpid: int
    port: int
    vid: int


def allocate_vlans(names: Iterable[str]) -> dict[str, int]:
    """Analyzer name -> VID, in name order from the reserved range (at most MAX_ANALYZERS)."""
    return {name: MIRROR_VLAN_BASE + i for i, name in enumerate(sorted(set(names))[:MAX_ANALYZERS])}


def copy_actions(dpid: int, analyzer: Analyzer, next_hop: Mapping[int, Mapping[int, int]]) -> tuple | None:
    """The actions that send a copy toward the analyzer from this switch, leaving the frame as it
    was for the actions that follow; None when there is no path."""
    if dpid == analyzer.dpid:
        return (Output(analyzer.port),)
    port = next_hop.get(analyzer.dpid, {}).get(dpid)
    if port is None:
        return None
    return (PushVlan(), SetField("vlan_vid", OFPVID_PRESENT | analyzer.vid), Output(port), PopVlan())


def transit_flows(
    dpid: int, inter_switch_ports: Iterable[int], analyzers: Iterable[Analyzer], next_hop: Mapping[int, Mapping[int, int]]
) -> list[FlowEntry]:
    """Every switch: copies in the reserved VLANs from an inter-switch port go one hop on toward their
    analyzer (untagged into its port on its hypervisor); anything else in the range is dropped."""
    flows = [FlowEntry.make(pipeline.INGRESS, pipeline.PRIO_MIRROR_TRANSIT - 5, {"vlan_vid": MIRROR_VLANS}, app=APP)]
    ports = sorted(inter_switch_ports)
    for analyzer in analyzers:
        if dpid == analyzer.dpid:
            actions = (PopVlan(), Output(analyzer.port))
        else:
            port = next_hop.get(analyzer.dpid, {}).get(dpid)
            if port is None:
                continue
            actions = (Output(port),)
        for in_port in ports:
            match = {"in_port": in_port, "vlan_vid": OFPVID_PRESENT | analyzer.vid}
            flows.append(FlowEntry.make(pipeline.INGRESS, pipeline.PRIO_MIRROR_TRANSIT, match, actions, app=APP))
    return flows


@dataclass(frozen=True)
class Mirrored:
    """A mirrored VM as one switch sees it: its MACs, the ports it is on here, and the copy actions."""

    macs: frozenset[str]
    own_ports: frozenset[int]
    copy: tuple


def copy_flows(entries: Iterable[FlowEntry], mirrored: Iterable[Mirrored], edge_ports: Iterable[int]) -> list[FlowEntry]:
    """For the quarantine entries that decide the fate of a mirrored VM's frames (those from its MACs,
    and those to them), the same entries limited to where such frames enter this switch from outside,
    one priority higher, with the copy first: the VM's own ports for its frames, the other edge ports
    for frames to it. A frame from one mirrored VM to another gets both copies. Entries that send a
    frame through conntrack and back decide nothing yet and are left alone (their verdict is
    copied). The copy replaces the controller's: where it is made, the controller already knows the
    VM is there."""
    mirrored = list(mirrored)
    edges = set(edge_ports)
    flows = []
    for entry in dict.fromkeys(entries):
        if any(isinstance(a, Conntrack) and a.table is not None for a in entry.actions):
            continue
        match = entry.match_dict
        copies: dict[int, tuple] = {}
        for vm in mirrored:
            if match.get("eth_src") in vm.macs:
                ports = vm.own_ports
            elif match.get("eth_dst") in vm.macs:
                ports = edges - vm.own_ports
            else:
                continue
            if "in_port" in match:
                ports = {match["in_port"]} & ports
            for port in ports:
                copies[port] = copies.get(port, ()) + vm.copy
        if not copies:
            continue
        kept = tuple(a for a in entry.actions if not (isinstance(a, Output) and a.port == pipeline.OFPP_CONTROLLER))
        for port, copy in sorted(copies.items()):
            match_here = {**match, "in_port": port}
            flows.append(
                FlowEntry.make(entry.table, entry.priority + 1, match_here, copy + kept, entry.goto, APP, entry.metadata)
            )
    return flows
