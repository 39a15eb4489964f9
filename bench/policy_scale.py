"""Policy compile at data-centre scale, no switches: compile time and memory, and one label change.

Each size runs in its own process, so the peak memory (ru_maxrss) is that size's alone.
    python -m bench.policy_scale VMS HYPERVISORS RULES   # prints one JSON line
"""

from __future__ import annotations

import json
import random
import resource
import subprocess
import sys
import time
from dataclasses import replace

SIZES = [(1_000, 50, 200), (5_000, 250, 200), (10_000, 500, 200), (20_000, 1_000, 200)]  # 20 VMs per hypervisor
SPINES = 2
HYPERVISORS_PER_LEAF = 10  # the fake builder numbers at most 15 hypervisors per leaf


def build(vms: int, hypervisors: int, rules: int, seed: int = 1):
    """A leaf-spine with `hypervisors` single-uplink hypervisors, `vms` VMs spread evenly, labels
    drawn from tiers and tenants (10% pci), and `rules` rules within random tenants."""
    from apps.context import PolicyState
    from apps.inventory import VM
    from apps.policy import rule_from_json
    from tests.fakeoftable import build_leaf_spine

    leaves = max(1, hypervisors // HYPERVISORS_PER_LEAF)
    fabric = build_leaf_spine(
        spines=SPINES, leaves=leaves, hypervisors_per_leaf=hypervisors // leaves, vms_per_hypervisor=max(1, vms // hypervisors)
    )
    rnd = random.Random(seed)
    tiers = ["web", "app", "db", "cache", "lb"]
    tenants = [f"t{i}" for i in range(20)]
    inventory = []
    for i, host in enumerate(sorted(fabric.topo.hosts.values(), key=lambda h: h.mac)):
        labels = {"tier": rnd.choice(tiers), "tenant": rnd.choice(tenants)}
        if rnd.random() < 0.1:
            labels["sensitivity"] = "pci"
        inventory.append(VM(f"vm{i}", (host.mac,), tuple(sorted(host.ips)), tuple(sorted(labels.items()))))
    rule_list = []
    services = ["tcp/5432", "tcp/80", "udp/53", "tcp/8000-8100", "icmp"]
    for i in range(rules):
        tenant = rnd.choice(tenants)
        rule_list.append(
            rule_from_json(
                {
                    "name": f"r{i}",
                    "src": f"tenant={tenant},tier={rnd.choice(tiers)}",
                    "dst": f"tenant={tenant},tier={rnd.choice(tiers)}",
                    "services": [rnd.choice(services)],
                    "action": rnd.choice(["allow", "deny"]),
                }
            )
        )
    state = replace(PolicyState().with_vms(inventory), rules=tuple(rule_list), default_action="deny")
    return fabric, state


def _changes(fabric, state):
    """The single changes timed at each size, each applied to the live model and then undone:
    (name, apply, undo), where apply and undo return the policy to compile with."""
    from apps.policy import rule_from_json
    from topology.model import Port

    topo = fabric.topo
    mover = next(iter(state.vms.values()))
    new_tier = "db" if mover.label_map.get("tier") != "db" else "web"
    relabelled = state.with_labels(mover.name, {"tier": new_tier}, [])
    yield "label change", lambda: relabelled, lambda: state
    rule = rule_from_json({"name": "new", "src": "tenant=t1,tier=web", "dst": "tenant=t1,tier=db", "services": ["tcp/443"],
                           "action": "allow"})  # fmt: skip
    with_rule = state.with_rule(rule)
    yield "new rule", lambda: with_rule, lambda: state
    host = topo.hosts[mover.macs[0]]
    target = next(d for d in fabric.hypervisors if d != host.dpid)
    spare = max(p for p in topo.switches[target].ports if p < 0xFFFFFF00) + 1  # a new VM port (not above LOCAL)

    def migrate():
        topo.set_port(target, Port(spare, f"s{target}-eth{spare}"))
        topo.switches[target].edge_confirmed.add(spare)
        topo.host_seen(host.mac, target, spare, next(iter(host.ips)))
        return state

    def migrate_back():
        topo.host_seen(host.mac, host.dpid, host.port, next(iter(host.ips)))
        return state

    yield "VM migration", migrate, migrate_back
    link = next(lk for lk in sorted(topo.links, key=lambda lk: (lk.a.dpid, lk.a.port)) if lk.a.dpid in fabric.spines)
    kept = topo.links[link]

    def cut():
        del topo.links[link]
        return state

    def restore():
        topo.links[link] = kept
        return state

    yield "link failure", cut, restore


def _packet_in_micros(topo, count: int = 2000) -> tuple[float, float]:
    """Median cost of the learner's packet-in (microseconds) for an ARP from a known host and from
    new hosts, in batches of 100."""
    import statistics

    from tests.unit.test_learner import arp_frame
    from topology.learner import Learner, Punt

    learner = Learner(topo, key=b"k" * 32, now=0.0)
    hosts = sorted(topo.hosts.values(), key=lambda h: h.mac)
    known = hosts[len(hosts) // 2]
    ip = next(iter(known.ips))
    samples = {"known": [], "new": []}
    for batch in range(count // 100):
        started = time.perf_counter()
        for i in range(100):
            learner.packet_in(known.dpid, known.port, arp_frame(known.mac, ip), Punt.MISS, 1.0 + batch + i * 1e-4)
        samples["known"].append((time.perf_counter() - started) / 100)
        started = time.perf_counter()
        for i in range(100):
            n = batch * 100 + i
            frame = arp_frame(f"02:ee:00:00:{n >> 8:02x}:{n & 255:02x}", f"10.250.{n >> 8}.{n & 255}")
            learner.packet_in(known.dpid, known.port, frame, Punt.MISS, 1.0 + batch + i * 1e-4)
        samples["new"].append((time.perf_counter() - started) / 100)
        for n in range(batch * 100, batch * 100 + 100):  # forget them again: the port holds at most 64
            topo.remove_host(f"02:ee:00:00:{n >> 8:02x}:{n & 255:02x}")
    return round(1e6 * statistics.median(samples["known"]), 1), round(1e6 * statistics.median(samples["new"]), 1)


def measure(vms: int, hypervisors: int, rules: int) -> dict:
    from collections import Counter

    from apps.compiler import Compiler
    from apps.identity import Identities, assign_identities
    from controller.reconciler import SwitchSync

    fabric, state = build(vms, hypervisors, rules)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    identities = Identities()
    compiler = Compiler()  # the controller's: one for its life
    started = time.perf_counter()
    assign_identities(fabric.topo, state, identities)
    tables = compiler.compile(fabric.topo, state, identities).tables
    compile_seconds = time.perf_counter() - started
    rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    syncs = {}
    for dpid, table in tables.items():
        # Steady state: each switch holds its table and the controller knows it is there.
        sync = syncs[dpid] = SwitchSync(synced=True)
        sync.set_actual(set(table), table)
        sync.applied(sync.next_plan(table, now=float("inf")))
    per_table = []
    for dpid in fabric.hypervisors:
        counts = Counter(e.table for e in tables[dpid].values())
        per_table.append(tuple(counts.get(t, 0) for t in range(5)))
    per_table.sort(key=sum)
    median_hv = per_table[len(per_table) // 2]

    def change_to_flow_mods(policy) -> tuple[float, int, int]:
        """What the controller does on a change: assign identities, compile, plan the switches whose
        table changed; (seconds, flow-mods, switches)."""
        started = time.perf_counter()
        assign_identities(fabric.topo, policy, identities)
        compiled = compiler.compile(fabric.topo, policy, identities)
        memo: dict = {}
        flow_mods = switches_touched = 0
        for dpid in compiled.changed:
            sync = syncs.get(dpid)
            if sync is None:
                continue
            plan = sync.next_plan(compiled.tables[dpid], float("inf"), memo)
            sync.applied(plan)
            if plan:
                switches_touched += 1
                flow_mods += len(plan.adds) + len(plan.deletes)
        return time.perf_counter() - started, flow_mods, switches_touched

    # Each change from the steady state, then undone (the undo is not timed). Medians of 5.
    changes = {}
    for name, apply, undo in _changes(fabric, state):
        runs = []
        for _ in range(5):
            runs.append(change_to_flow_mods(apply()))
            change_to_flow_mods(undo())
        runs.sort()
        seconds, flow_mods, switches_touched = runs[len(runs) // 2]
        changes[name] = {"seconds": round(seconds, 4), "flow_mods": flow_mods, "switches": switches_touched}
    full_started = time.perf_counter()
    Compiler().compile(fabric.topo, state, identities)
    full_seconds = time.perf_counter() - full_started
    known_us, new_us = _packet_in_micros(fabric.topo)
    label = changes["label change"]
    return {
        "vms": len(state.vms),
        "hypervisors": len(fabric.hypervisors),
        "switches": len(tables),
        "rules": len(state.rules),
        "flows": sum(len(t) for t in tables.values()),
        "hypervisor_flows_by_table": list(median_hv),
        "compile_seconds": round(compile_seconds, 2),
        "recompile_from_scratch_seconds": round(full_seconds, 2),
        "peak_rss_mib": round(rss_after / 1024),
        "compile_rss_growth_mib": round((rss_after - rss_before) / 1024),
        "label_change_to_flow_mods_seconds": label["seconds"],
        "label_change_flow_mods": label["flow_mods"],
        "label_change_switches": label["switches"],
        "changes": changes,
        "packet_in_known_host_us": known_us,
        "packet_in_new_host_us": new_us,
    }


def run_all(log=print) -> list[dict]:
    """Each size in a fresh interpreter (bounded to 15 minutes each)."""
    results = []
    for vms, hypervisors, rules in SIZES:
        log(f"policy scale: {vms} VMs, {hypervisors} hypervisors, {rules} rules ...")
        done = subprocess.run(
            [sys.executable, "-m", "bench.policy_scale", str(vms), str(hypervisors), str(rules)],
            capture_output=True,
            text=True,
            timeout=900,
        )
        if done.returncode != 0:
            results.append({"vms": vms, "hypervisors": hypervisors, "rules": rules, "error": done.stderr[-500:]})
            continue
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
        log(f"policy scale: {results[-1]}")
    return results


if __name__ == "__main__":
    print(json.dumps(measure(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]))))
