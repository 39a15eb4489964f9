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

SIZES = [(1_000, 100, 200), (10_000, 500, 200)]
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


def measure(vms: int, hypervisors: int, rules: int) -> dict:
    from apps.desired import desired_tables
    from apps.identity import Identities
    from controller.reconciler import SwitchSync

    fabric, state = build(vms, hypervisors, rules)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    identities = Identities()
    started = time.perf_counter()
    tables = desired_tables(fabric.topo, state, identities)
    compile_seconds = time.perf_counter() - started
    rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    syncs = {}
    for dpid, table in tables.items():
        # Steady state: each switch holds its table and the controller knows it is there.
        sync = syncs[dpid] = SwitchSync(synced=True)
        sync.set_actual(set(table), table)
        sync.applied(sync.next_plan(table, now=float("inf")))

    # One label change: a VM moves from its tier to another; time until every switch's
    # flow-mods are planned (what the controller then sends).
    mover = next(iter(state.vms.values()))
    new_tier = "db" if mover.label_map.get("tier") != "db" else "web"
    started = time.perf_counter()
    changed = state.with_labels(mover.name, {"tier": new_tier}, [])
    new_tables = desired_tables(fabric.topo, changed, identities)
    recompile_seconds = time.perf_counter() - started
    flow_mods = switches_touched = 0
    for dpid, table in new_tables.items():
        plan = syncs[dpid].next_plan(table, now=float("inf"))
        if plan:
            switches_touched += 1
            flow_mods += len(plan.adds) + len(plan.deletes)
    change_seconds = time.perf_counter() - started
    return {
        "vms": len(state.vms),
        "hypervisors": len(fabric.hypervisors),
        "switches": len(tables),
        "rules": len(state.rules),
        "flows": sum(len(t) for t in tables.values()),
        "compile_seconds": round(compile_seconds, 2),
        "peak_rss_mib": round(rss_after / 1024),
        "compile_rss_growth_mib": round((rss_after - rss_before) / 1024),
        "label_change_recompile_seconds": round(recompile_seconds, 2),
        "label_change_to_flow_mods_seconds": round(change_seconds, 2),
        "label_change_flow_mods": flow_mods,
        "label_change_switches": switches_touched,
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
