"""Flow entries: checked against the pipeline description, named by a content cookie in our namespace."""

from __future__ import annotations

import pytest

from apps import flows, pipeline
from apps.desired import ConflictError, desired_tables, index_entries
from apps.flows import Conntrack, FlowEntry, Move, Output, PipelineError, PopVlan, PushVlan, SetField, app_of, is_ours
from tests.fakeoftable import build_leaf_spine, check_entry, policy_state


def test_a_match_field_the_table_does_not_own_is_refused_with_its_name():
    with pytest.raises(PipelineError, match=r"egress.*ipv4_dst"):
        FlowEntry.make(pipeline.EGRESS, 10, {"ipv4_dst": "10.0.0.1", "eth_type": pipeline.ETH_TYPE_IPV4})
    with pytest.raises(PipelineError, match="ingress"):
        FlowEntry.make(pipeline.INGRESS, 10, {"ipv4_dst": "10.0.0.1", "eth_type": pipeline.ETH_TYPE_IPV4})


def test_a_goto_the_pipeline_does_not_allow_is_refused():
    with pytest.raises(PipelineError, match="may not go to table"):
        FlowEntry.make(pipeline.INGRESS, 10, {}, goto=pipeline.POLICY)
    with pytest.raises(PipelineError, match="may not go to table"):
        FlowEntry.make(pipeline.FORWARD, 10, {}, goto=pipeline.CLASSIFY)
    with pytest.raises(PipelineError, match="may not go to table"):
        FlowEntry.make(pipeline.EGRESS, 10, {}, goto=pipeline.EGRESS)


def test_a_table_outside_the_pipeline_is_refused():
    with pytest.raises(PipelineError, match="no table 9"):
        FlowEntry.make(9, 10, {})


def test_every_goto_in_the_pipeline_points_to_a_later_table():
    """OpenFlow only allows goto to a higher table id; a description that broke this would compile flows OVS rejects."""
    for table_id, spec in pipeline.PIPELINE.items():
        assert spec.table_id == table_id
        assert all(nxt > table_id and nxt in pipeline.PIPELINE for nxt in spec.next_tables)


def test_the_cookie_carries_our_magic_byte_and_the_owning_app():
    entry = FlowEntry.make(pipeline.POLICY, 5, {"eth_dst": "02:00:00:00:00:01"}, goto=pipeline.FORWARD, app=pipeline.APP_POLICY)
    assert entry.cookie >> 56 == 0x6C
    assert is_ours(entry.cookie)
    assert app_of(entry.cookie) == "policy"
    assert not is_ours(1) and not is_ours(0x6B << 56) and not is_ours(0)
    assert app_of(0x6C_7F << 48) == "unknown"


def test_the_cookie_is_a_function_of_the_content():
    a = FlowEntry.make(pipeline.FORWARD, 5, {"in_port": 1, "eth_dst": "02:00:00:00:00:01"}, (Output(2),))
    b = FlowEntry.make(pipeline.FORWARD, 5, {"eth_dst": "02:00:00:00:00:01", "in_port": 1}, [Output(2)])
    assert a == b and a.cookie == b.cookie and hash(a) == hash(b)
    changed = [
        FlowEntry.make(pipeline.FORWARD, 6, {"in_port": 1, "eth_dst": "02:00:00:00:00:01"}, (Output(2),)),
        FlowEntry.make(pipeline.FORWARD, 5, {"in_port": 2, "eth_dst": "02:00:00:00:00:01"}, (Output(2),)),
        FlowEntry.make(pipeline.FORWARD, 5, {"in_port": 1, "eth_dst": "02:00:00:00:00:01"}, (Output(3),)),
        FlowEntry.make(pipeline.FORWARD, 5, {"in_port": 1, "eth_dst": "02:00:00:00:00:01"}, goto=pipeline.EGRESS),
        FlowEntry.make(pipeline.EGRESS, 5, {"eth_dst": "02:00:00:00:00:01"}, (Output(2),)),
    ]
    assert len({a.cookie, *(e.cookie for e in changed)}) == 1 + len(changed)


def _golden_entries() -> list[FlowEntry]:
    return [
        FlowEntry.make(pipeline.INGRESS, 1000, {"eth_type": pipeline.ETH_TYPE_LLDP}, (Output(pipeline.OFPP_CONTROLLER, 128),)),
        FlowEntry.make(pipeline.FORWARD, 5, {"in_port": 1, "eth_dst": "02:00:00:00:00:01"}, (Output(2),)),
        FlowEntry.make(
            pipeline.FORWARD,
            5,
            {"eth_dst": "02:00:00:00:00:01"},
            (PushVlan(), SetField("vlan_vid", 0x1000 | 7), Output(3), PopVlan()),
        ),
        FlowEntry.make(
            pipeline.POLICY,
            61010,
            {"ct_mark": 1, "ct_state": (34, 50)},
            (SetField("reg0", 1),),
            goto=pipeline.FORWARD,
            app=pipeline.APP_POLICY,
        ),
        FlowEntry.make(
            pipeline.EGRESS,
            520,
            {"eth_dst": "02:00:00:01:01:01", "eth_type": 2048, "reg0": 1},
            (Conntrack(zone=4113, commit=True, mark=1), Output(2)),
            app=pipeline.APP_TUNNEL,
        ),
        FlowEntry.make(pipeline.INGRESS, 0, {}, (Output(pipeline.OFPP_CONTROLLER),)),
        FlowEntry.make(
            pipeline.INGRESS,
            10,
            {"in_port": 3, "eth_src": "02:00:00:00:00:09"},
            (Move("reg1", "reg2", 32),),
            goto=pipeline.CLASSIFY,
            metadata=(5, 0xFFFF),
        ),
    ]


# Cookies of the entries above, as every earlier version computed them. A switch keeps its entries
# across a controller upgrade only if the new version names the same content with the same cookie.
_GOLDEN_COOKIES = [
    0x6C0159A3BE332853,
    0x6C016E2008972E18,
    0x6C018B6AF49EC544,
    0x6C020DC2A54E5388,
    0x6C0469A477D81CAB,
    0x6C01278A861C65B9,
    0x6C01C6B5CAA5D54E,
]


def test_cookies_never_change_across_versions():
    assert [e.cookie for e in _golden_entries()] == _GOLDEN_COOKIES


def test_cookies_do_not_depend_on_what_was_built_before(monkeypatch):
    """The per-item repr cache may be emptied at any point; cookies come out the same."""
    flows._make_entry.cache_clear()
    monkeypatch.setattr(flows, "_ITEM_REPRS_MAX", 2)
    flows._ITEM_REPRS.clear()
    try:
        assert [e.cookie for e in _golden_entries()] == _GOLDEN_COOKIES
        assert len(flows._ITEM_REPRS) <= 2
    finally:
        flows._make_entry.cache_clear()


def test_actions_are_plain_values_that_keep_their_spelling():
    assert Output(3) == Output(3, 0xFFE5) and hash(Output(3)) == hash(Output(port=3))
    assert Output(3) != SetField("in_port", 3) and PopVlan() != PushVlan()
    assert repr(Conntrack(zone=5, commit=True)) == "Conntrack(zone=5, commit=True, table=None, mark=None)"
    assert repr(PushVlan()) == "PushVlan(ethertype=33024)" and repr(PopVlan()) == "PopVlan()"


def test_masked_matches_are_hashable_plain_data():
    entry = FlowEntry.make(pipeline.FORWARD, 5, {"eth_dst": list(pipeline.MULTICAST_BIT)}, (Output(1),))
    assert entry.match_dict["eth_dst"] == pipeline.MULTICAST_BIT
    assert entry == FlowEntry.make(pipeline.FORWARD, 5, {"eth_dst": pipeline.MULTICAST_BIT}, (Output(1),))
    hash(entry)


def test_index_entries_refuses_two_entries_that_would_overwrite_each_other():
    a = FlowEntry.make(pipeline.FORWARD, 5, {"eth_dst": "02:00:00:00:00:01"}, (Output(1),))
    b = FlowEntry.make(pipeline.FORWARD, 5, {"eth_dst": "02:00:00:00:00:01"}, (Output(2),))
    with pytest.raises(ConflictError, match="table 3 at priority 5"):
        index_entries([a, b])


def test_index_entries_accepts_the_same_entry_twice_and_entries_in_different_slots():
    a = FlowEntry.make(pipeline.FORWARD, 5, {"eth_dst": "02:00:00:00:00:01"}, (Output(1),))
    other_priority = FlowEntry.make(pipeline.FORWARD, 6, {"eth_dst": "02:00:00:00:00:01"}, (Output(2),))
    other_match = FlowEntry.make(pipeline.FORWARD, 5, {"eth_dst": "02:00:00:00:00:02"}, (Output(2),))
    indexed = index_entries([a, a, other_priority, other_match])
    assert indexed == {e.cookie: e for e in (a, other_priority, other_match)}


def test_every_compiled_flow_is_one_open_vswitch_accepts():
    """Prerequisites (arp_* needs eth_type=ARP, icmpv6_type needs ICMPv6 over IPv6, ...), whole-field
    moves, forward-only gotos, conntrack only on IP; with a policy that uses every kind of rule."""
    fabric = build_leaf_spine(dual_homed=True)
    tiers = ["web", "db", "app"]
    policy = policy_state(
        {vm: {"tier": tiers[i % 3]} for i, vm in enumerate(fabric.vms[:-1])},  # the last VM is unmanaged
        [
            {"src": "tier=web", "dst": "tier=db", "services": ["tcp/5432", "udp/53", "icmp"], "action": "allow"},
            {"src": "any", "dst": "tier=db", "services": ["tcp/8000-8100"], "action": "encrypt"},
            {"src": "unmanaged", "dst": "any", "action": "deny"},
            {"src": "tier in (web,app)", "dst": "unmanaged", "services": ["tcp", "any"], "action": "allow"},
        ],
        default_action="deny",
    )
    policy_tables = {pipeline.CLASSIFY, pipeline.POLICY, pipeline.EGRESS}
    for table in desired_tables(fabric.topo, policy).values():
        for entry in table.values():
            check_entry(entry)
            assert is_ours(entry.cookie) and app_of(entry.cookie) in ("topology", "policy", "tunnel", "port-security")
            assert app_of(entry.cookie) != "policy" or entry.table in policy_tables, entry


def test_every_entry_that_punts_to_the_controller_is_metered():
    from apps.desired import desired_tables
    from tests.fakeoftable import build_leaf_spine

    fabric = build_leaf_spine(spines=2, leaves=2, hypervisors_per_leaf=2, vms_per_hypervisor=2)
    punting = [
        e
        for table in desired_tables(fabric.topo).values()
        for e in table.values()
        if any(isinstance(a, Output) and a.port == pipeline.OFPP_CONTROLLER for a in e.actions)
    ]
    assert punting
    for entry in punting:
        lldp = entry.match_dict.get("eth_type") == pipeline.ETH_TYPE_LLDP
        assert entry.meter == (pipeline.METER_LLDP if lldp else pipeline.METER_PACKET_IN), entry
    assert all(e.meter is None for e in desired_tables(fabric.topo)[fabric.hypervisors[0]].values() if e not in punting)
