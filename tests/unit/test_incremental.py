"""Incremental reconciliation: after any change, diffing the two desired tables group by group
brings every switch to exactly the new desired table, and shared groups are reused."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from apps.compiler import Compiler
from apps.desired import desired_tables
from apps.identity import Identities, assign_identities
from apps.switch_table import SwitchTable
from controller.reconciler import SwitchSync
from tests.fakeoftable import build_leaf_spine, policy_state, vm_name
from topology.model import PortRef

TIERS = ["web", "app", "db"]
RULES = [
    {"src": "tier=web", "dst": "tier=db", "services": ["tcp/5432"], "action": "allow"},
    {"src": "tier=app", "dst": "tier in (db,web)", "services": ["any"], "action": "deny"},
    {"src": "any", "dst": "tier=web", "services": ["icmp"], "action": "allow"},
]


def _bring(syncs: dict[int, SwitchSync], tables) -> dict[int, bool]:
    """Plan and apply on every switch; return which plans were incremental."""
    incremental = {}
    for dpid, table in tables.items():
        sync = syncs.setdefault(dpid, SwitchSync(synced=True))
        incremental[dpid] = sync.last is not None
        sync.applied(sync.next_plan(table, now=math.inf))
    return incremental


def _at_target(syncs, tables) -> None:
    for dpid, table in tables.items():
        assert set(syncs[dpid].installed) == set(table), f"switch {dpid:#x} is not at its desired table"


def test_hypervisors_share_one_responder_group_and_recompiles_reuse_it():
    fabric = build_leaf_spine(spines=2, leaves=2, hypervisors_per_leaf=2, vms_per_hypervisor=2)
    labels = {vm: {"tier": TIERS[i % 3]} for i, vm in enumerate(fabric.vms)}
    state = policy_state(labels, [{"src": "any", "dst": "tier in (web,db)", "services": ["any"], "action": "allow"}])
    identities = Identities()
    compiler = Compiler()
    assign_identities(fabric.topo, state, identities)
    first = compiler.compile(fabric.topo, state, identities).tables
    second = compiler.compile(fabric.topo, state, identities)
    keys = {k for d in fabric.hypervisors for k in first[d].groups if k[0] == "responders"}
    assert keys, "ARP responders are groups, one per identity"
    for key in keys:
        groups = {id(first[d].groups[key]) for d in fabric.hypervisors}
        assert len(groups) == 1, "one responder group object for every hypervisor"
    assert not second.changed, "nothing changed: no switch gets a new table"
    assert all(second.tables[d] is first[d] for d in first)
    assert all(isinstance(t, SwitchTable) for t in first.values())


@settings(max_examples=25, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.tuples(st.just("relabel"), st.integers(0, 7), st.sampled_from(TIERS)),
            st.tuples(st.just("forget"), st.integers(0, 7), st.just("")),
            st.tuples(st.just("cut"), st.integers(0, 3), st.just("")),
            st.tuples(st.just("rules"), st.integers(0, 3), st.sampled_from(["allow", "deny"])),
        ),
        min_size=1,
        max_size=6,
    )
)
def test_incremental_plans_reach_exactly_the_desired_tables(changes):
    fabric = build_leaf_spine(spines=2, leaves=2, hypervisors_per_leaf=2, vms_per_hypervisor=2)
    labels = {vm: {"tier": TIERS[i % 3]} for i, vm in enumerate(fabric.vms)}
    state = policy_state(labels, RULES, "deny")
    identities = Identities()
    syncs: dict[int, SwitchSync] = {}
    tables = desired_tables(fabric.topo, state, identities)
    _bring(syncs, tables)
    _at_target(syncs, tables)
    for kind, index, value in changes:
        if kind == "relabel":
            state = state.with_labels(vm_name(fabric.vms[index]), {"tier": value}, [])
        elif kind == "forget":
            fabric.topo.remove_host(fabric.vms[index].mac)
        elif kind == "cut":
            links = sorted(fabric.topo.links, key=lambda lk: (lk.a.dpid, lk.a.port))
            if links:
                link = links[index % len(links)]
                fabric.topo.links.pop(link)
                for end in link.ends():
                    fabric.topo.switches[end.dpid].fabric_ports.discard(end.port)
                assert PortRef(link.a.dpid, link.a.port) not in {e for lk in fabric.topo.links for e in lk.ends()}
        else:
            state = state.with_default(value).reordered([r.name for r in reversed(state.rules)])
        new_tables = desired_tables(fabric.topo, state, identities)
        incremental = _bring(syncs, new_tables)
        assert all(incremental.values()), "every switch was at its last table, so every plan was a diff"
        _at_target(syncs, new_tables)
