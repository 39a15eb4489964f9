"""Helpers for integration tests: reading real switch tables and timing real pings."""

from __future__ import annotations

import contextlib
import itertools
import re
import subprocess
import time


def switch_flows(bridge: str) -> list[dict]:
    """Our flows on a bridge as OVS reports them: cookie and duration (seconds)."""
    out = subprocess.run(
        ["ovs-ofctl", "-O", "OpenFlow13", "dump-flows", bridge], capture_output=True, text=True, check=True
    ).stdout
    flows = []
    for line in out.splitlines():
        cookie = re.search(r"cookie=(0x[0-9a-f]+)", line)
        duration = re.search(r"duration=([0-9.]+)s", line)
        packets = re.search(r"n_packets=(\d+)", line)
        if cookie and duration and int(cookie.group(1), 16) >> 56 == 0x6C:
            flows.append(
                {
                    "cookie": int(cookie.group(1), 16),
                    "duration": float(duration.group(1)),
                    "packets": int(packets.group(1)) if packets else 0,
                    "line": line,
                }
            )
    return flows


def reply_times(ping_output: str) -> list[float]:
    """Timestamps of echo replies from `ping -D` output."""
    return [float(m.group(1)) for m in re.finditer(r"^\[(\d+\.\d+)\] \d+ bytes from", ping_output, re.M)]


def largest_gap(times: list[float], started: float, ended: float) -> float:
    """The longest time without a reply, including before the first and after the last."""
    points = [started, *sorted(times), ended]
    return max(b - a for a, b in itertools.pairwise(points))


def wait_until(predicate, timeout: float, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    return predicate()


@contextlib.contextmanager
def emulated_switch(of_port: int, dpid: int):
    """One emulated OpenFlow switch (bench/ofswitch.py: a VM port and its local port) connected to
    the controller on `of_port` while the block runs, in a thread of its own; yields the switch."""
    import asyncio
    import threading

    from apps.forwarding import MISS_COOKIE
    from bench.ofswitch import OFPP_LOCAL, EmulatedSwitch, Fabric

    fabric = Fabric(MISS_COOKIE, reconnect=False)
    switch = EmulatedSwitch(dpid, {1: ("p1", bytes([2, 0, 0, 0, dpid, 1])), OFPP_LOCAL: ("br", bytes([2, 0, 0, 0, dpid, 0xFE]))})
    loop = asyncio.new_event_loop()
    task = loop.create_task(fabric.run_switch(switch, "127.0.0.1", of_port))

    def run() -> None:
        with contextlib.suppress(asyncio.CancelledError):  # the block ended: the switch is cancelled
            loop.run_until_complete(task)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield switch
    finally:
        loop.call_soon_threadsafe(task.cancel)
        thread.join(10)
        loop.close()
