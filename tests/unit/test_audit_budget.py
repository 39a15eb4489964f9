"""Audits read back a bounded number of flow entries per tick: a fabric of hundreds of switches
with thousands of entries each is read over several ticks, never all at once (that stalled the
controller for good at 500 emulated hypervisors: bench/converge.py), and every switch still gets
its audit once per audit interval."""

from __future__ import annotations

from types import SimpleNamespace

from controller.launcher import patch_eventlet

patch_eventlet()  # before anything imports ryu.app.wsgi

from controller import app as app_mod  # noqa: E402
from controller.app import AUDIT_ENTRIES_PER_TICK, GoldilocksController  # noqa: E402
from controller.reconciler import SwitchSync  # noqa: E402


class _Datapath:
    def __init__(self, dpid: int) -> None:
        self.id = dpid
        self.ofproto_parser = SimpleNamespace(OFPDescStatsRequest=lambda dp, flags: ("desc", dp.id))
        self.sent: list = []

    def send_msg(self, msg) -> None:
        self.sent.append(msg)


def _controller(sizes: dict[int, int], interval: float = 30.0):
    ctl = SimpleNamespace(
        datapaths={d: _Datapath(d) for d in sizes},
        sync={},
        _next_audit={d: 0.0 for d in sizes},
        settings=SimpleNamespace(audit_interval=interval),
        read=[],
    )
    for dpid, size in sizes.items():
        sync = ctl.sync[dpid] = SwitchSync(synced=True)
        sync.installed = {cookie: None for cookie in range(size)}
    ctl._request_flows = lambda datapath: ctl.read.append(datapath.id)
    return ctl


def test_a_large_fabric_is_audited_over_several_ticks_within_the_budget():
    sizes = {dpid: 10_000 for dpid in range(1, 101)}  # 1 M entries: a round takes 40 ticks
    ctl = _controller(sizes, interval=1000.0)
    per_tick = []
    for tick in range(1, 60):
        before = len(ctl.read)
        GoldilocksController._audit(ctl, float(tick))
        batch = ctl.read[before:]
        per_tick.append(batch)
        assert sum(sizes[d] for d in batch) <= max(AUDIT_ENTRIES_PER_TICK, 10_000), "over the budget in one tick"
    assert sorted(ctl.read) == sorted(sizes), "every switch is audited once in the round, none twice"
    assert len([b for b in per_tick if b]) >= len(sizes) * 10_000 // AUDIT_ENTRIES_PER_TICK


def test_a_table_bigger_than_the_budget_is_still_read_alone_and_small_ones_all_at_once():
    ctl = _controller({1: 3 * AUDIT_ENTRIES_PER_TICK, 2: 10, 3: 10})
    GoldilocksController._audit(ctl, 1.0)
    assert ctl.read == [1], "the oldest due first, alone"
    GoldilocksController._audit(ctl, 2.0)
    assert sorted(ctl.read[1:]) == [2, 3]
    ctl.read.clear()
    GoldilocksController._audit(ctl, 20.0)
    assert ctl.read == [], "not due again before the interval"
    GoldilocksController._audit(ctl, 40.0)
    assert sorted(ctl.read) == [1, 2, 3] or ctl.read == [1], "due again after it"


def test_the_budget_constant_is_what_the_controller_uses():
    assert app_mod.AUDIT_ENTRIES_PER_TICK == AUDIT_ENTRIES_PER_TICK > 0
