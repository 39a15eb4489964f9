"""Port security for managed VMs: the hypervisor knows which VM is on which port and, from the
inventory, its MACs and IPs, so a frame claiming anything else is dropped at the port and shown
to the controller as evidence.

On the port of a managed VM (one inventory VM learned there, nothing else):
- a frame from a MAC that is not the VM's is MAC spoofing;
- once the VM's IPv4 addresses are known (the inventory lists them), an IPv4 frame from another
  source address is IP spoofing, and an ARP message whose sender address is not the VM's (an
  answer for another VM's address, say) is ARP spoofing. 0.0.0.0 (DHCP, ARP probes) is allowed.

The offending frame is dropped; a copy reaches the controller on the quarantine meter (20/s per
switch), under its own app in the cookie, so it is never taken for a host to learn. The
controller then raises an alert, or quarantines the VM (controller/security.py decides)."""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Iterable, Mapping

from apps import pipeline
from apps.flows import FlowEntry, Output
from topology.model import Host

APP = pipeline.APP_PORT_SECURITY
EVIDENCE = Output(pipeline.OFPP_CONTROLLER, pipeline.PACKET_IN_BYTES)
TO_CONTROLLER = EVIDENCE  # the same output; what tells them apart is the entry's app, in its cookie
KINDS = ("mac-spoofing", "ip-spoofing", "arp-spoofing")
UNSPECIFIED = "0.0.0.0"
VLAN_TPIDS = (0x8100, 0x88A8)  # 802.1Q, and 802.1ad's service tag


def guarded_ports(hosts: Iterable[Host], vm_of_mac: Mapping[str, str]) -> dict[tuple[int, int], str]:
    """(dpid, port) -> VM name for every port where exactly one inventory VM, and nothing else, is learned."""
    on_port: dict[tuple[int, int], set[str | None]] = {}
    for host in hosts:
        on_port.setdefault((host.dpid, host.port), set()).add(vm_of_mac.get(host.mac))
    return {where: next(iter(vms)) for where, vms in on_port.items() if len(vms) == 1 and None not in vms}


def port_security_flows(
    port: int, macs: Iterable[str], ips: Iterable[str], tag: tuple[int, int] | None, learned_ips: Iterable[str] = ()
) -> list[FlowEntry]:
    """The ingress entries that pin a managed VM's port to its own MACs and, with `ips`, its own
    addresses. They layer around the admission entries of forwarding.ingress_flows: other MACs fall
    below them (PRIO_SPOOF_MAC); the VM's own frames from its own addresses are admitted above
    (with its identity `tag`), and from any other address dropped just below those. Its ARP from an
    address the controller has not learned yet is also copied, as forwarding does, so it is learned."""
    flows = [FlowEntry.make(pipeline.INGRESS, pipeline.PRIO_SPOOF_MAC, {"in_port": port}, (EVIDENCE,), app=APP)]
    ips = sorted(set(ips))
    if not ips:
        return flows
    learned = set(learned_ips)
    for mac in sorted(macs):
        own = {"in_port": port, "eth_src": mac}
        ipv4, arp = {**own, "eth_type": pipeline.ETH_TYPE_IPV4}, {**own, "eth_type": pipeline.ETH_TYPE_ARP}
        flows.append(FlowEntry.make(pipeline.INGRESS, pipeline.PRIO_SPOOF_ADDRESS_IP, ipv4, (EVIDENCE,), app=APP))
        flows.append(FlowEntry.make(pipeline.INGRESS, pipeline.PRIO_SPOOF_ADDRESS_ARP, arp, (EVIDENCE,), app=APP))
        for ip in [*ips, UNSPECIFIED]:
            flows.append(_admit(pipeline.PRIO_OWN_ADDRESS_IP, {**ipv4, "ipv4_src": ip}, tag))
            copy = () if ip in learned or ip == UNSPECIFIED else (TO_CONTROLLER,)
            flows.append(_admit(pipeline.PRIO_OWN_ADDRESS_ARP, {**arp, "arp_spa": ip}, tag, copy))
    return flows


def _admit(priority: int, match: dict, tag: tuple[int, int] | None, actions: tuple = ()) -> FlowEntry:
    """An admission entry, like forwarding's: owned by topology, so a copy it makes is learned from."""
    return FlowEntry.make(pipeline.INGRESS, priority, match, actions, goto=pipeline.CLASSIFY, metadata=tag)


def violation(frame: bytes, macs: Iterable[str], ips: Iterable[str]) -> tuple[str, str] | None:
    """(kind, evidence) for a frame a managed VM's port sent that is not its own, or None."""
    if len(frame) < 14:
        return None
    src = ":".join(f"{b:02x}" for b in frame[6:12])
    eth_type = struct.unpack("!H", frame[12:14])[0]
    macs, ips = {m.lower() for m in macs}, set(ips)
    if src not in macs:
        return "mac-spoofing", f"source MAC {src} (the VM has {', '.join(sorted(macs))}), ethertype {eth_type:#06x}"
    # The switch matched the type behind one VLAN tag (Open vSwitch parses one by default): so do we.
    at = 14
    if eth_type in VLAN_TPIDS and len(frame) >= 18:
        eth_type, at = struct.unpack("!H", frame[16:18])[0], 18
    if eth_type == pipeline.ETH_TYPE_IPV4 and len(frame) >= at + 20:
        address = str(ipaddress.IPv4Address(frame[at + 12 : at + 16]))
        destination = str(ipaddress.IPv4Address(frame[at + 16 : at + 20]))
        if ips and address not in ips and address != UNSPECIFIED:
            return "ip-spoofing", f"source IP {address} to {destination} from {src} (the VM has {', '.join(sorted(ips))})"
    if eth_type == pipeline.ETH_TYPE_ARP and len(frame) >= at + 28:
        op = struct.unpack("!H", frame[at + 6 : at + 8])[0]
        sender = str(ipaddress.IPv4Address(frame[at + 14 : at + 18]))
        if ips and sender not in ips and sender != UNSPECIFIED:
            what = "reply" if op == 2 else "request"
            return "arp-spoofing", f"ARP {what} claiming {sender} from {src} (the VM has {', '.join(sorted(ips))})"
    return None
