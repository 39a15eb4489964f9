"""What a user would see wrong in /v1/topology, against the fabric as Mininet cabled it: shared by
the scenario's check, the benchmarks and the integration tests. Expectations are read from the
Mininet net, never from the controller."""

from __future__ import annotations


def built_fabric(dc) -> dict:
    """The fabric as Mininet cabled it, read from the net, never from the controller:
    `links`, a set of frozensets {(dpid, port), (dpid, port)} (dpid as 16 hex digits, as
    /v1/topology gives it), and `hosts`, VM MAC -> (dpid, port, [ip]) of the switch port its
    cable is plugged into."""
    layout, net = dc.layout, dc.net
    switches = set(layout.switches)
    links = set()
    for link in net.links:
        ends = [link.intf1, link.intf2]
        if all(intf.node.name in switches for intf in ends):
            links.add(frozenset((f"{layout.switches[i.node.name]:016x}", i.node.ports[i]) for i in ends))
    hosts = {}
    for name, (_, ip, mac) in host_layout(dc).items():
        intf = net.get(name).defaultIntf()
        peer = intf.link.intf2 if intf.link.intf1 is intf else intf.link.intf1
        hosts[mac] = (f"{layout.switches[peer.node.name]:016x}", peer.node.ports[peer], [ip])
    return {"links": links, "hosts": hosts}


def host_layout(dc) -> dict[str, tuple[str, str, str]]:
    """Every host the scenario plugged in, name -> (switch, ip, mac): the VMs and the hypervisors'
    tunnel endpoints (which the controller knows from their agents)."""
    endpoints = {ep.name: (hv, ep.ip, ep.mac) for hv, ep in getattr(dc, "endpoints", {}).items()}
    return {**dc.layout.vms, **endpoints}


def switch_port_macs(dc) -> dict[str, str]:
    """MAC -> interface name of every switch port in the root namespace, the bridges' own
    (LOCAL) interfaces included: to name the owner of a phantom host."""
    owners = {}
    for name in dc.layout.switches:
        for intf in [name, *(i.name for i in dc.net.get(name).intfList() if i.name != "lo")]:
            try:
                with open(f"/sys/class/net/{intf}/address") as f:
                    owners[f.read().strip()] = intf
            except OSError:
                continue
    return owners


def fabric_diff(
    dc, topo: dict, all_hosts: bool = True, built: dict | None = None, disconnected: frozenset[str] = frozenset()
) -> list[str]:
    """What a user would see wrong in /v1/topology, one readable line each; empty when exact.
    Compared: switches connected (and holding their flows), links (missing, extra), VMs (on the wrong port, with the wrong
    IPs, missing) and phantom hosts (any MAC that is not a VM's), and ports still proving
    themselves. With all_hosts=False, VMs not learned yet and VMs without their IP yet are fine
    (before any traffic), but a VM on the wrong port or a phantom host is not; roles are
    compared only with all_hosts (a hypervisor is known as one once its VMs are). The switches
    named in `disconnected` must be known but not connected, with their links and hosts kept."""
    built = built or built_fabric(dc)
    names = {f"{dpid:016x}": name for name, dpid in dc.layout.switches.items()}
    port_names = {(s["dpid"], p["port_no"]): p["name"] for s in topo["switches"] for p in s["ports"]}
    vm_of = {mac: name for name, (_, _, mac) in host_layout(dc).items()}

    def where(dpid: str, port: int) -> str:
        return f"{port_names.get((dpid, port)) or f'{names.get(dpid, dpid)}:{port}'} ({dpid}:{port})"

    def link_text(link) -> str:
        a, b = sorted(link)
        return f"{where(*a)} <-> {where(*b)}"

    problems = []
    learned_switches = {s["dpid"]: s for s in topo["switches"]}
    for dpid, name in sorted(names.items(), key=lambda kv: kv[1]):
        sw = learned_switches.get(dpid)
        if name in disconnected:
            if sw is None or sw["connected"]:
                problems.append(f"switch {name} ({dpid}) {'unknown' if sw is None else 'still connected'}")
            continue
        if sw is None or not sw["connected"]:
            problems.append(f"switch {name} ({dpid}) {'unknown' if sw is None else 'not connected'}")
            continue
        if sw["converge_seconds"] is None:
            problems.append(f"switch {name} ({dpid}) connected, but its flows are not in place yet (not converged)")
        if all_hosts and sw["role"] != dc.layout.roles[name]:
            problems.append(f"switch {name} ({dpid}) has role {sw['role']}, built as {dc.layout.roles[name]}")
        if pending := [p["name"] for p in sw["ports"] if p["up"] and p["kind"] == "pending"]:
            problems.append(f"switch {name}: ports still pending: {', '.join(pending)}")
    learned_links = [frozenset({(lk[e]["dpid"], lk[e]["port"]) for e in ("src", "dst")}) for lk in topo["links"]]
    problems += [f"link listed twice: {link_text(lk)}" for lk in set(learned_links) if learned_links.count(lk) > 1]
    problems += [f"missing link: {link_text(lk)}" for lk in sorted(built["links"] - set(learned_links), key=sorted)]
    problems += [f"extra link: {link_text(lk)}" for lk in sorted(set(learned_links) - built["links"], key=sorted)]
    learned_hosts = {h["mac"]: (h["dpid"], h["port"], h["ips"]) for h in topo["hosts"]}
    for mac, (dpid, port, ips) in sorted(built["hosts"].items()):
        got = learned_hosts.get(mac)
        if got is None:
            if all_hosts:
                problems.append(f"{vm_of[mac]} ({mac}) not learned; plugged into {where(dpid, port)}")
        elif got[:2] != (dpid, port):
            problems.append(f"{vm_of[mac]} ({mac}) learned at {where(*got[:2])}, plugged into {where(dpid, port)}")
        elif got[2] != ips and (all_hosts or got[2]):
            problems.append(f"{vm_of[mac]} ({mac}) has ips {got[2]}, expected {ips}")
    phantoms = sorted(mac for mac in learned_hosts if mac not in vm_of)
    if phantoms:
        owners = switch_port_macs(dc)
        for mac in phantoms:
            dpid, port, ips = learned_hosts[mac]
            owner = f" (the MAC of switch interface {owners[mac]})" if mac in owners else ""
            problems.append(f"phantom host {mac}{owner} ips {ips} at {where(dpid, port)}")
    return problems
