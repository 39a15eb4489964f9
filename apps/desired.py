"""The desired flow table of every switch, computed from the model by pure functions.

The compile itself is apps/compiler.py (incremental); this module holds the helpers it uses for
quarantined and mirrored VMs, and compile_network, a compile from scratch."""

from __future__ import annotations

from apps import mirror, pipeline, quarantine, remediation, steering
from apps.compiler import Compiled, Compiler, ConflictError, DesiredTables, index_entries
from apps.context import PolicyState
from apps.flows import FlowEntry
from apps.identity import Identities, assign_identities
from topology.model import Topology

__all__ = ["Compiled", "Compiler", "ConflictError", "DesiredTables", "compile_network", "desired_tables", "index_entries"]


def desired_tables(
    topo: Topology,
    policy: PolicyState | None = None,
    identities: Identities | None = None,
    tunnels: steering.TunnelPlan | None = None,
) -> DesiredTables:
    """The desired tables alone (see compile_network)."""
    return compile_network(topo, policy, identities, tunnels).tables


def compile_network(
    topo: Topology,
    policy: PolicyState | None = None,
    identities: Identities | None = None,
    tunnels: steering.TunnelPlan | None = None,
) -> Compiled:
    """Compile the whole model from scratch: number new label sets in `identities` (the caller
    persists them), then compile with a fresh Compiler. `tunnels` says which tunnel ports encrypted
    traffic may use (none: it is dropped). The controller keeps one Compiler instead, so that a
    change costs what it touches."""
    policy = policy if policy is not None else PolicyState()
    identities = identities if identities is not None else Identities()
    assign_identities(topo, policy, identities)
    return Compiler().compile(topo, policy, identities, tunnels)


def _encrypts(policy: PolicyState, own: dict[str, str]) -> remediation.Encrypts | None:
    """Whether some encrypt rule selects an allowed connection of a VM in remediation (whose labels
    are `own`) on a service that overlaps the allowance's: then it travels encrypted. Erring toward
    encryption costs nothing: any such rule puts the two hypervisors in a tunnel pair."""
    encrypting = [r for r in policy.rules[: pipeline.MAX_RULES] if r.action == "encrypt"]
    if not encrypting:
        return None

    def encrypts(rule: remediation.AllowRule, peer: dict | None, service) -> bool:
        opener, answerer = (own, peer) if rule.direction == "to" else (peer, own)
        return any(
            r.src.matches(opener) and r.dst.matches(answerer) and any(s.overlaps(service) for s in r.services)
            for r in encrypting
        )

    return encrypts


def mirrored_vms(topo: Topology, policy: PolicyState) -> list[tuple[frozenset[str], mirror.Analyzer]]:
    """(MACs, analyzer) of every quarantined VM mirrored to an analyzer the network has seen, that is
    in the inventory and not itself in quarantine (a quarantined analyzer gets no copies)."""
    wanted = {r.mirror_to for r in policy.quarantine.values() if r.mirror_to and r.mirror_to not in policy.quarantine}
    vids = mirror.allocate_vlans(n for n in wanted if n in policy.vms)
    analyzers = {}
    for name, vid in vids.items():
        host = next((topo.hosts[m] for m in policy.vms[name].macs if m in topo.hosts), None)
        if host is not None and host.dpid in topo.switches:
            analyzers[name] = mirror.Analyzer(name, host.dpid, host.port, vid)
    found = []
    for name, record in sorted(policy.quarantine.items()):
        analyzer = analyzers.get(record.mirror_to or "")
        if analyzer is not None:
            vm = policy.vms.get(name)
            found.append((quarantine.record_macs(record, vm.macs if vm else ()), analyzer))
    return found


def copy_flows(topo: Topology, dpid: int, view, mirrors, entries) -> list[FlowEntry]:
    """One hypervisor's copies of mirrored VMs' frames (apps/mirror.py)."""
    here = []
    for macs, analyzer in mirrors:
        copy = mirror.copy_actions(dpid, analyzer, view.next_hop)
        if copy is not None:
            own = frozenset(topo.hosts[m].port for m in macs if m in topo.hosts and topo.hosts[m].dpid == dpid)
            here.append(mirror.Mirrored(macs, own, copy))
    return mirror.copy_flows(entries, here, topo.edge_ports(dpid))


def remediated_vms(topo: Topology, policy: PolicyState, quarantined: frozenset[str]) -> list[remediation.Remediated]:
    """Every VM in remediation as its exceptions need it: MACs, addresses (declared and learned),
    where its MACs are, and its allow rules with the peers they select among known hosts."""
    found = []
    candidates = None
    for name, record in sorted(policy.quarantine.items()):
        vm = policy.vms.get(name)
        if record.mode != "remediate" or vm is None:
            continue
        if candidates is None:
            by_mac = policy.vm_by_mac()
            candidates = {
                mac: (dict(policy.effective_labels(by_mac[mac])) if mac in by_mac else None)
                for mac in topo.hosts
                if mac not in topo.endpoints
            }
        macs = tuple(sorted(quarantine.record_macs(record, vm.macs)))
        ips = set(vm.ips)
        locations = []
        for mac in macs:
            host = topo.hosts.get(mac)
            if host is not None:
                ips.update(host.ips)
                locations.append((mac, host.dpid, host.port))
        allowances = remediation.resolve(
            policy.allow_list(record), candidates, quarantined, _encrypts(policy, dict(policy.effective_labels(vm)))
        )
        ipv4 = tuple(sorted(ip for ip in ips if ":" not in ip))  # its IPv6 is cut, as everything not allowed
        found.append(remediation.Remediated(macs, ipv4, tuple(locations), allowances))
    return found
