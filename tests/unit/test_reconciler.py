"""The reconciler sends only the difference, never touches flows that are not ours, and a restart sends nothing."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from apps import pipeline
from apps.desired import desired_tables
from apps.flows import FlowEntry, Output, is_ours
from controller.reconciler import Plan, SwitchSync, plan
from tests.fakeoftable import build_leaf_spine

FOREIGN = 0x0000_0000_0000_0001  # a flow someone else installed (cookie 1, e.g. ovs-ofctl)
FOREIGN_HIGH = 0x6B00_0000_0000_0001  # one byte away from ours


def entries(n: int, table: int = pipeline.FORWARD) -> list[FlowEntry]:
    return [
        FlowEntry.make(table, pipeline.PRIO_UNICAST, {"eth_dst": f"02:00:00:00:00:{i:02x}"}, (Output(i + 1),)) for i in range(n)
    ]


def by_cookie(flows: list[FlowEntry]) -> dict[int, FlowEntry]:
    return {e.cookie: e for e in flows}


def test_identical_desired_and_actual_is_an_empty_plan():
    desired = by_cookie(entries(5))
    result = plan(desired, set(desired))
    assert result == Plan() and not result


def test_only_missing_entries_are_added():
    flows = entries(5)
    result = plan(by_cookie(flows), {flows[0].cookie, flows[3].cookie})
    assert sorted(e.cookie for e in result.adds) == sorted(e.cookie for e in (flows[1], flows[2], flows[4]))
    assert result.deletes == []


def test_only_our_stale_cookies_are_deleted():
    flows = entries(3)
    stale = entries(5)[3:]
    actual = {e.cookie for e in flows + stale} | {FOREIGN, FOREIGN_HIGH, 0}
    result = plan(by_cookie(flows), actual)
    assert result.adds == []
    assert sorted(result.deletes) == sorted(e.cookie for e in stale)
    assert all(is_ours(c) for c in result.deletes)


def test_deletes_are_deferred_while_a_switch_settles():
    flows = entries(3)
    stale = entries(5)[3:]
    result = plan(by_cookie(flows[:2]), {e.cookie for e in flows[1:] + stale} | {FOREIGN}, allow_deletes=False)
    assert [e.cookie for e in result.adds] == [flows[0].cookie]
    assert result.deletes == []
    assert result.deferred_deletes == 3


def test_adds_go_downstream_tables_first_then_by_priority():
    topo = build_leaf_spine(spines=1, leaves=1, hypervisors_per_leaf=1).topo
    desired = desired_tables(topo)[next(iter(sorted(topo.switches)))]
    result = plan(desired, set())
    order = [(e.table, e.priority) for e in result.adds]
    assert order == sorted(order, key=lambda tp: (-tp[0], -tp[1]))
    assert {t for t, _ in order} == {pipeline.INGRESS, pipeline.CLASSIFY, pipeline.POLICY, pipeline.FORWARD}
    assert order[-1][0] == pipeline.INGRESS, "the ingress table, which admits frames, is filled last"


@given(
    st.sets(st.integers(0, 19), max_size=20),
    st.sets(st.integers(0, 19), max_size=20),
    st.sets(st.integers(0, 2**64 - 1), max_size=5),
    st.booleans(),
)
def test_plan_brings_our_flows_to_the_desired_set_and_leaves_others_alone(want, have, foreign, allow_deletes):
    pool = entries(20)
    desired = by_cookie([pool[i] for i in want])
    foreign = {c for c in foreign if not is_ours(c)}
    actual = {pool[i].cookie for i in have} | foreign
    result = plan(desired, actual, allow_deletes)
    assert not {e.cookie for e in result.adds} & actual, "never re-add what is there"
    assert set(result.deletes) <= actual - set(desired)
    assert not set(result.deletes) & foreign
    after = (actual | {e.cookie for e in result.adds}) - set(result.deletes)
    assert after >= set(desired) and after >= foreign
    if allow_deletes:
        assert after == set(desired) | foreign
    else:
        assert result.deletes == [] and result.deferred_deletes == len(actual - set(desired) - foreign)


# ---------------------------------------------------------------------------
# SwitchSync: what the controller remembers a switch holds
# ---------------------------------------------------------------------------
def test_after_applying_a_plan_the_next_plan_is_empty():
    desired = by_cookie(entries(4))
    sync = SwitchSync()
    sync.set_actual({FOREIGN}, {})
    first = sync.next_plan(desired, now=0.0)
    assert len(first.adds) == 4
    sync.applied(first)
    assert not sync.next_plan(desired, now=0.0)


def test_stale_flows_survive_the_settle_time_then_go():
    old = entries(2)
    sync = SwitchSync(settle_until=10.0)
    sync.set_actual({e.cookie for e in old}, {})
    early = sync.next_plan({}, now=5.0)
    assert early.deletes == [] and early.deferred_deletes == 2
    late = sync.next_plan({}, now=10.0)
    assert sorted(late.deletes) == sorted(e.cookie for e in old)
    sync.applied(late)
    assert not sync.next_plan({}, now=11.0)


def test_an_entry_replaced_in_its_slot_is_re_added_when_wanted_back():
    """Adding to an occupied slot replaces the old entry on the switch; the controller must
    not believe the old one is still there."""
    first = FlowEntry.make(pipeline.FORWARD, pipeline.PRIO_UNICAST, {"eth_dst": "02:00:00:00:00:01"}, (Output(1),))
    second = FlowEntry.make(pipeline.FORWARD, pipeline.PRIO_UNICAST, {"eth_dst": "02:00:00:00:00:01"}, (Output(2),))
    assert first.slot == second.slot and first.cookie != second.cookie
    sync = SwitchSync(settle_until=100.0)  # deletes deferred: only the replacing add happens
    sync.set_actual({first.cookie}, by_cookie([first]))
    move = sync.next_plan(by_cookie([second]), now=0.0)
    assert move.adds == [second] and move.deletes == []
    sync.applied(move)
    back = sync.next_plan(by_cookie([first]), now=0.0)
    assert back.adds == [first]


def test_restart_with_the_same_topology_touches_nothing():
    """A new controller process compiles the same model: every switch already holds exactly that."""
    running = desired_tables(build_leaf_spine(dual_homed=True).topo)
    restarted = desired_tables(build_leaf_spine(dual_homed=True).topo)
    for dpid, table in restarted.items():
        sync = SwitchSync()
        sync.set_actual(set(running[dpid]) | {FOREIGN}, table)
        assert not sync.next_plan(table, now=1e9), f"switch {dpid:#x} would be touched"


# -- what the switch refused ----------------------------------------------------------------------
def send(sync: SwitchSync, desired, now: float, xid_start: int = 100) -> tuple[Plan, dict[int, object], int]:
    """Plan and 'send' as the controller does: one xid per flow-mod, then a barrier."""
    result = sync.next_plan(desired, now)
    sync.applied(result)
    xids = {}
    xid = xid_start
    for entry in result.adds:
        sync.sent(xid, "add", entry)
        xids[xid] = entry
        xid += 1
    for cookie in result.deletes:
        sync.sent(xid, "delete", cookie)
        xids[xid] = cookie
        xid += 1
    sync.barrier_sent(xid, list(xids))
    return result, xids, xid


def test_a_refused_add_is_not_believed_installed_and_is_retried_with_backoff_until_it_goes_in():
    flows = entries(3)
    desired = by_cookie(flows)
    sync = SwitchSync()
    sync.set_actual(set(), {})
    _, xids, barrier = send(sync, desired, now=0.0)
    refused_xid = next(x for x, e in xids.items() if e == flows[1])
    refusal = sync.refused(refused_xid, "OFPET_FLOW_MOD_FAILED/OFPFMFC_TABLE_FULL", now=0.0)
    assert refusal is not None and refusal.attempts == 1 and refusal.retry_at == 1.0
    assert sync.barrier_answered(barrier) == []
    assert flows[1].cookie not in sync.installed and {flows[0].cookie, flows[2].cookie} <= set(sync.installed)
    # Within the backoff: withheld, and the sync does not believe it is at the target.
    early = sync.next_plan(desired, now=0.5)
    assert not early.adds and early.withheld == 1
    sync.applied(early)
    assert sync.last is None
    # Refused again: the wait doubles.
    _, xids, barrier = send(sync, desired, now=1.0, xid_start=200)
    assert list(xids.values()) == [flows[1]]
    assert sync.refused(200, "OFPET_FLOW_MOD_FAILED/OFPFMFC_TABLE_FULL", now=1.0).retry_at == 3.0
    assert not sync.next_plan(desired, now=2.9).adds
    # Third time it goes in: the barrier confirms it, and it is no longer reported.
    _, xids, barrier = send(sync, desired, now=3.0, xid_start=300)
    assert list(xids.values()) == [flows[1]]
    assert sync.barrier_answered(barrier) == [flows[1]]
    assert not sync.refusals and not sync.inflight and flows[1].cookie in sync.installed
    assert not sync.next_plan(desired, now=3.0)


def test_a_refused_entry_no_longer_wanted_is_forgotten_and_a_refused_delete_is_retried():
    flows = entries(2)
    sync = SwitchSync()
    sync.set_actual(set(), {})
    _, xids, _ = send(sync, by_cookie(flows), now=0.0)
    sync.refused(next(x for x, e in xids.items() if e == flows[0]), "OFPET_BAD_MATCH/OFPBMC_BAD_PREREQ", now=0.0)
    assert len(sync.refusals) == 1
    assert not sync.next_plan(by_cookie(flows[1:]), now=0.0).withheld
    assert not sync.refusals
    # A delete the switch refused stays believed installed, so the next plan deletes it again.
    sync = SwitchSync()
    sync.set_actual({flows[0].cookie}, by_cookie(flows))
    result, xids, _ = send(sync, {}, now=0.0)
    assert result.deletes == [flows[0].cookie]
    assert sync.refused(next(iter(xids)), "OFPET_BAD_REQUEST/OFPBRC_EPERM", now=0.0) is None
    assert sync.next_plan({}, now=0.0).deletes == [flows[0].cookie]


def test_an_error_for_a_message_that_is_not_a_tracked_flow_mod_changes_nothing():
    flows = entries(2)
    sync = SwitchSync()
    sync.set_actual(set(), {})
    _, _, barrier = send(sync, by_cookie(flows), now=0.0)
    assert sync.refused(9999, "OFPET_BAD_REQUEST/OFPBRC_BAD_TYPE", now=0.0) is None
    sync.barrier_answered(barrier)
    assert set(sync.installed) == {e.cookie for e in flows} and not sync.inflight


def test_a_batch_is_unconfirmed_from_when_it_was_sent_until_its_barrier_is_answered():
    flows = entries(2)
    sync = SwitchSync()
    sync.set_actual(set(), {})
    assert sync.unconfirmed_since() is None
    result = sync.next_plan(by_cookie(flows), now=0.0)
    sync.applied(result)
    for xid, entry in enumerate(result.adds, start=1):
        sync.sent(xid, "add", entry)
    sync.barrier_sent(10, [1, 2], now=5.0)
    assert sync.unconfirmed_since() == 5.0
    sync.barrier_answered(10)
    assert sync.unconfirmed_since() is None


def test_a_big_unconfirmed_batch_keeps_a_switch_working_for_longer_than_a_small_one():
    """A leaf sent 20,000 routes at once is slow to confirm them, not broken: taking it for broken
    after 10 s let every link of a 1,000-hypervisor cold start time out while its switches worked
    through the flow-mods that followed the last VM learned."""
    sync = SwitchSync()
    sync.set_actual(set(), {})
    assert not sync.working(0.0, 10.0, 1000.0)
    sync.barrier_sent(10, [1, 2, 3], now=5.0)
    assert sync.working(14.9, 10.0, 1000.0) and not sync.working(15.1, 10.0, 1000.0)
    sync.barrier_sent(11, list(range(100, 20_100)), now=6.0)  # 20,000 more: 20 s at 1,000 a second
    assert sync.working(24.9, 10.0, 1000.0) and not sync.working(25.2, 10.0, 1000.0)
    sync.barrier_answered(10)
    sync.barrier_answered(11)
    assert not sync.working(7.0, 10.0, 1000.0)
