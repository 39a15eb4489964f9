"""ARP answered by the hypervisor switch itself: one flow per known IPv4 address, as OVN does."""

from __future__ import annotations

from collections.abc import Callable

from apps import pipeline
from apps.flows import FlowEntry, Move, Output, SetField
from topology.model import Host


def responder_flow(host: Host, ip: str) -> FlowEntry:
    """Turn an ARP request for `ip` into the reply `host` would send, and return it out of
    the port it came in on. No controller round trip, so it works while the controller is down."""
    return FlowEntry.make(
        pipeline.FORWARD,
        pipeline.PRIO_ARP_RESPONDER,
        {"eth_type": pipeline.ETH_TYPE_ARP, "arp_op": 1, "arp_tpa": ip},
        (
            Move("eth_src", "eth_dst", 48),
            SetField("eth_src", host.mac),
            SetField("arp_op", 2),
            Move("arp_sha", "arp_tha", 48),
            SetField("arp_sha", host.mac),
            Move("arp_spa", "arp_tpa", 32),
            SetField("arp_spa", ip),
            Output(pipeline.OFPP_IN_PORT),
        ),
    )


def responder_flows(hosts: list[Host]) -> list[FlowEntry]:
    return [responder_flow(h, ip) for h in hosts for ip in sorted(h.ips)]


def fabric_bypass_flows(inter_switch_ports: set[int], flood: Callable[[int], list[Output]]) -> list[FlowEntry]:
    """ARP requests that arrive from the fabric were flooded on purpose by another switch
    (a gratuitous ARP, or an address nobody knows): pass them on along the tree. Answering
    them here would bounce forged replies around the fabric."""
    return [
        FlowEntry.make(
            pipeline.FORWARD,
            pipeline.PRIO_ARP_FROM_FABRIC,
            {"in_port": port, "eth_type": pipeline.ETH_TYPE_ARP, "arp_op": 1},
            flood(port),
        )
        for port in sorted(inter_switch_ports)
    ]


def owner_bypass_flows(local_hosts: list[Host], flood: Callable[[int], list[Output]]) -> list[FlowEntry]:
    """A host asking for its own address (gratuitous ARP, duplicate-address probe) is not
    answered by the switch: its request is flooded, so that the other hosts' caches update
    (virtual-IP failover relies on this) and it never hears that its address is taken."""
    return [
        FlowEntry.make(
            pipeline.FORWARD,
            pipeline.PRIO_ARP_OWNER,
            {"in_port": host.port, "eth_type": pipeline.ETH_TYPE_ARP, "arp_op": 1, "arp_tpa": ip},
            flood(host.port),
        )
        for host in local_hosts
        for ip in sorted(host.ips)
    ]
