"""ARP answered by the hypervisor switch itself: one flow per known IPv4 address, as OVN does."""

from __future__ import annotations

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
