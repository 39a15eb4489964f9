"""Faucet's configuration (faucet.yaml) for a layout: the same switches, dpids and ports that Mininet builds.

Pure: it reads a Layout (or a plain description of switches and ports) and returns the document as
data; nothing here imports Mininet or Faucet. Two shapes:

- flat: one VLAN, every port of every switch an untagged member of it. Each switch is then an
  independent learning switch, which is right on a loop-free fabric (a tree floods without storms)
  and wrong on a looped one (nothing breaks the loops: broadcasts circle forever).
- stacked: the inter-switch ports are Faucet stack ports, a spine is the stack's root (the other
  spines next in priority), and Faucet floods along its own tree toward that root, so a fabric
  with loops works. Hosts' ports stay untagged members of the VLAN.
"""

from __future__ import annotations

from collections.abc import Mapping

VLAN_NAME = "bench"
VLAN_VID = 100
HARDWARE = "Open vSwitch"


def layout_ports(layout) -> dict[str, dict[int, str]]:
    """For each switch of the layout, OpenFlow port number -> what is cabled there (a switch or a VM
    name), numbered as Mininet numbers them: a switch's ports count from 1 in the order its links are
    added, which DataCentre does as the inter-switch links first (in `switch_links` order), then
    each VM's link to its hypervisor (in `vms` order)."""
    ports: dict[str, dict[int, str]] = {name: {} for name in layout.switches}

    def cable(switch: str, peer: str) -> None:
        ports[switch][len(ports[switch]) + 1] = peer

    for a, b in layout.switch_links:
        cable(a, b)
        cable(b, a)
    for vm, (hypervisor, _, _) in layout.vms.items():
        cable(hypervisor, vm)
    return ports


def _peer_port(ports: dict[str, dict[int, str]], switch: str, peer: str, nth: int) -> int:
    """The port of `peer` that its `nth` cable to `switch` ends on (parallel links pair in order)."""
    return [p for p, other in sorted(ports[peer].items()) if other == switch][nth]


def for_layout(layout, stacked: bool = False) -> dict:
    """The faucet.yaml document for a Mininet layout; `stacked` for a fabric with loops (see the module)."""
    ports = layout_ports(layout)
    spines = [name for name in layout.switches if name.startswith("sp") and layout.roles[name] == "fabric"]
    root_order = spines or [name for name in layout.switches if layout.roles[name] == "fabric"] or list(layout.switches)
    dps = {}
    for name, dpid in layout.switches.items():
        interfaces: dict[int, dict] = {}
        seen: dict[str, int] = {}
        for port, peer in sorted(ports[name].items()):
            if stacked and peer in layout.switches:
                nth = seen.get(peer, 0)
                seen[peer] = nth + 1
                interfaces[port] = {
                    "description": f"to {peer}",
                    "stack": {"dp": peer, "port": _peer_port(ports, name, peer, nth)},
                }
            else:
                interfaces[port] = {"description": f"to {peer}", "native_vlan": VLAN_NAME}
        dp: dict = {"dp_id": dpid, "hardware": HARDWARE, "interfaces": interfaces}
        if stacked and name in root_order[:2]:
            dp["stack"] = {"priority": root_order.index(name) + 1}  # 1 is the root; the next takes over
        dps[name] = dp
    return {"vlans": {VLAN_NAME: {"vid": VLAN_VID}}, "dps": dps}


def for_switches(switches: Mapping[str, tuple[int, list[int]]], max_hosts: int | None = None) -> dict:
    """The flat document for switches given as name -> (dpid, host port numbers): every port an
    untagged member of the one VLAN. For emulated switches that have no cables. `max_hosts` raises
    Faucet's cap on the hosts it learns per VLAN on a switch (256 unless set: a host beyond it is
    not learned, and learning on the VLAN is banned for a while)."""
    vlan: dict = {"vid": VLAN_VID}
    if max_hosts is not None:
        vlan["max_hosts"] = max_hosts
    return {
        "vlans": {VLAN_NAME: vlan},
        "dps": {
            name: {
                "dp_id": dpid,
                "hardware": HARDWARE,
                "interfaces": {port: {"native_vlan": VLAN_NAME} for port in ports},
            }
            for name, (dpid, ports) in switches.items()
        },
    }


def dump(document: dict) -> str:
    """The document as YAML (block style, keys in the order built)."""
    import yaml

    return yaml.safe_dump(document, default_flow_style=False, sort_keys=False)
