"""Packet-ins wait here, apart from everything else a switch sends, until the controller handles them.

A data centre's VMs can send the controller more frames than it can handle: at a cold start of
1,000 hypervisors, 20,000 VMs resolving their gateway every 2 s send 10,000 packet-ins a second.
Queued in arrival order behind each other (Ryu's event queue, then the kernel's socket buffers),
every frame waited for every older one, the backlog reached tens of seconds, and the probes among
them arrived too late to prove any link: hypervisors' uplinks were taken for VM ports.

So packet-ins are taken off the connections as they arrive and wait here:
- probes (LLDP) have their own lane and are handled first: discovery never waits for hosts;
- a frame identical to one still waiting (same switch, port, table, entry and bytes: a VM's retry)
  is dropped, as handling it again would teach nothing. A VM that repeats itself costs one handling
  however far behind the controller is, and what waits is bounded by what is distinct;
- each switch may have at most `per_switch` frames waiting, and all switches `total`: beyond that
  new frames are shed (and counted), as Open vSwitch drops packet-ins beyond its queue. A hypervisor
  whose VMs flood cannot crowd out the others.
- copies of ARP requests nobody answered wait in a lane of their own, behind the frames that teach
  the controller something (a new host, a move): at a cold start, every VM learned keeps asking for
  its gateway, and 20,000 such copies queued ahead of the VMs not learned yet held their learning
  back by seconds. One take in BACKGROUND_SHARE still goes to them, so they are never starved.
  They teach no host's place, so taking them later sees no move backwards;
Frames are otherwise handled in the order they arrived, so a host's move is never seen backwards.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from typing import Generic, TypeVar

T = TypeVar("T")

PER_SWITCH = 512
TOTAL = 65_536
PROBES_TOTAL = 16_384
BACKGROUND_SHARE = 8  # one take in this many goes to the background lane when others wait too


class _Lane(Generic[T]):
    __slots__ = ("items", "waiting", "total")

    def __init__(self, total: int) -> None:
        self.items: OrderedDict[Hashable, tuple[int, T]] = OrderedDict()
        self.waiting: dict[int, int] = {}  # dpid -> its items here
        self.total = total


class Intake(Generic[T]):
    """Waiting packet-ins: a lane for probes, one for frames, one for background copies, each in
    arrival order."""

    def __init__(self, per_switch: int = PER_SWITCH, total: int = TOTAL, probes_total: int = PROBES_TOTAL) -> None:
        self.per_switch = per_switch
        self._probes: _Lane[T] = _Lane(probes_total)
        self._frames: _Lane[T] = _Lane(total)
        self._background: _Lane[T] = _Lane(total)
        self._unique = 0
        self._takes = 0
        self.duplicates = 0  # frames dropped because an identical one was waiting
        self.shed = 0  # frames dropped because their switch, or the intake, was full

    def __len__(self) -> int:
        return len(self._probes.items) + len(self._frames.items) + len(self._background.items)

    @property
    def probes_waiting(self) -> int:
        return len(self._probes.items)

    @property
    def urgent(self) -> int:
        """Probes and frames waiting: what a compile should have seen (background copies aside)."""
        return len(self._probes.items) + len(self._frames.items)

    def waiting(self, dpid: int) -> int:
        """Frames and probes of switch `dpid` waiting."""
        return sum(lane.waiting.get(dpid, 0) for lane in (self._probes, self._frames, self._background))

    def offer(self, dpid: int, key: Hashable | None, item: T, probe: bool = False, background: bool = False) -> bool:
        """Keep `item` from switch `dpid` unless an item with the same `key` waits already in its
        lane (None: never the same as another) or there is no room. True if it was kept."""
        lane = self._probes if probe else self._background if background else self._frames
        if key is None:
            self._unique += 1
            key = ("unique", self._unique)
        elif key in lane.items:
            self.duplicates += 1
            return False
        waiting = lane.waiting.get(dpid, 0)
        if len(lane.items) >= lane.total or waiting >= self.per_switch:
            self.shed += 1
            return False
        lane.items[key] = (dpid, item)
        lane.waiting[dpid] = waiting + 1
        return True

    def take(self) -> T | None:
        """The oldest waiting probe, else the oldest frame, else the oldest background copy (which
        goes first one take in BACKGROUND_SHARE); None when nothing waits."""
        self._takes += 1
        if self._probes.items:
            lane = self._probes
        elif self._background.items and (not self._frames.items or self._takes % BACKGROUND_SHARE == 0):
            lane = self._background
        else:
            lane = self._frames
        if not lane.items:
            return None
        _, (dpid, item) = lane.items.popitem(last=False)
        left = lane.waiting[dpid] - 1
        if left:
            lane.waiting[dpid] = left
        else:
            del lane.waiting[dpid]
        return item
