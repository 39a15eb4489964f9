"""The collector stays off what a compile built (controller/heap.py). At a cold start of 1,000
hypervisors, full collections walking the growing tables took 6.4 s of the controller's 15 s of
CPU and found nothing to collect."""

from __future__ import annotations

import gc
import weakref
from types import SimpleNamespace

import pytest

from controller.launcher import patch_eventlet

patch_eventlet()  # before anything imports ryu.app.wsgi

from controller import heap as heap_mod  # noqa: E402
from controller.app import GoldilocksController  # noqa: E402
from controller.heap import Heap  # noqa: E402


@pytest.fixture(autouse=True)
def _unfrozen():
    yield
    gc.unfreeze()
    gc.enable()


class _Node:
    def __init__(self) -> None:
        self.me = self  # a reference cycle: only the collector frees it


def test_no_collection_runs_while_a_large_compile_builds_and_what_it_built_is_left_out_of_later_ones():
    heap = Heap()
    before = gc.get_freeze_count()
    with heap.building(large=True):
        assert not gc.isenabled()
        tables = [{"entry": n} for n in range(10_000)]
    assert gc.isenabled()
    assert gc.get_freeze_count() >= before + len(tables), "what the compile built is frozen"


def test_a_small_fabric_is_left_to_pythons_defaults():
    """Its collections cost little, and its timing is what the Mininet figures were measured with."""
    heap = Heap(sweep_every=0.0)
    with heap.building(large=Heap.large(switches=90, hosts=64)):
        assert gc.isenabled()
    assert gc.get_freeze_count() == 0 and not heap.maybe_sweep(1e9)
    assert Heap.large(switches=1052, hosts=0) and Heap.large(switches=10, hosts=20_000)


def test_the_collector_is_left_as_it_was_and_frozen_even_when_the_compile_fails():
    heap = Heap()
    gc.disable()
    with pytest.raises(RuntimeError), heap.building(large=True):
        raise RuntimeError("compile failed")
    assert not gc.isenabled(), "a collector the caller had turned off stays off"
    gc.enable()
    with pytest.raises(RuntimeError), heap.building(large=True):
        raise RuntimeError("compile failed")
    assert gc.isenabled()


def test_cyclic_garbage_caught_by_a_freeze_is_collected_by_the_next_sweep():
    clock = [0.0]
    heap = Heap(sweep_every=300.0, clock=lambda: clock[0])
    node = _Node()
    gone = weakref.ref(node)
    with heap.building(large=True):
        pass
    del node
    gc.collect()
    assert gone() is not None, "frozen: the ordinary collections leave it"
    assert not heap.maybe_sweep(299.0) and gone() is not None, "not before its time"
    assert heap.maybe_sweep(300.0)
    assert gone() is None, "the sweep collects the whole heap"
    assert gc.get_freeze_count() > 0, "and freezes what is left"
    assert heap.sweeps == 1 and not heap.maybe_sweep(300.5)


def test_the_controller_compiles_with_the_collector_off(monkeypatch):
    seen = []
    shell = SimpleNamespace(
        topo=SimpleNamespace(switches=dict.fromkeys(range(1052)), hosts={}),
        _dirty=True,
        _after_compile=[],
        _when_sent=[],
        _compile_pending=True,
        heap=Heap(),
        _let_intake_drain=lambda: None,
        _run_callbacks=lambda callbacks: None,
    )

    def compile_and_reconcile() -> None:
        seen.append(gc.isenabled())

    shell._compile_and_reconcile = compile_and_reconcile
    GoldilocksController._compile_loop(shell)
    assert seen == [False] and gc.isenabled() and not shell._compile_pending
    assert heap_mod.SWEEP_EVERY >= 60, "a full collection is rare: a second each at 1,000 hypervisors"
