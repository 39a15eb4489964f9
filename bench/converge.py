"""Cold converge of emulated switches: the real controller process, N emulated hypervisors (bench/ofswitch.py)
with 20 VM ports and one uplink each, a leaf per 20 hypervisors and two spines, all connecting at once.
Every VM plays its first frame (an ARP request) a second after its hypervisor got its first flows, and
again every 2 s until the controller knows every VM (as a real VM keeps resolving its gateway). Each
arrives as a table miss until the VM's hypervisor holds the entry admitting it, and then as the copy
of an ARP request no responder answered (the gateway is nobody): 10,000 packet-ins a second at
1,000 hypervisors, for as long as it takes.

Measured, from the moment the connections open:
- every switch converged: the largest `converge_seconds` in /v1/topology (connect to the first reconcile
  confirmed by a barrier: the controller's own definition);
- settled: the last flow-mod, once the controller shows every link and VM, has no compile due
  (`goldilocks_compile_pending`), the switches hold every flow it wants (`goldilocks_flows_desired`)
  and no flow-mod came for 3 s;
- flow-mods sent, and per second between the first and the last;
- controller CPU seconds and peak memory (its process, from /proc), and the emulator's CPU seconds
  (all switches share this one process, where a data centre gives each hypervisor its own CPUs);
- how many learned links timed out meanwhile (flaps under load);
- how many times an emulated switch connected again after its connection dropped (it does, as Open
  vSwitch would: bench/ofswitch.py).

    python -m bench.converge HYPERVISORS [--timeout S] [--debug] [--legacy]   # prints one JSON line

--debug prints progress and every dropped connection to stderr, measures the emulator's loop lag,
keeps the controller's log (its path is printed) with Ryu's connection layer logging at debug level
(why Ryu closes a connection: a send that timed out, a socket error), and adds a "debug" summary of
both to the result. --legacy runs the emulator as it was before its reads were sliced (1 MiB reads,
waiting for its writes to drain), for comparing.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time

from bench.ofswitch import OFPP_LOCAL, EmulatedSwitch, Fabric

VMS_PER_HYPERVISOR = 20
HYPERVISORS_PER_LEAF = 20
SPINES = 2
SETTLE_QUIET = 3.0
SIZES = (100, 500, 1000)
ARP_RETRY = 2.0  # seconds between a VM's ARP requests while the controller does not know it yet
DEBUG = False


def _mac(kind: int, number: int, port: int) -> bytes:
    return bytes([kind]) + number.to_bytes(3, "big") + port.to_bytes(2, "big")


def build(hypervisors: int, **options) -> tuple[Fabric, list[tuple[int, int, bytes, bytes]]]:
    """The fabric and its VMs: (dpid, port, MAC, IPv4) each. `options` go to Fabric."""
    from apps import pipeline
    from apps.forwarding import MISS_COOKIE

    # Any cookie of ours from the topology app: the controller reads a copy's reason from it and its table.
    unanswered = (pipeline.COOKIE_MAGIC << pipeline.COOKIE_MAGIC_SHIFT) | (pipeline.APP_TOPOLOGY << pipeline.COOKIE_APP_SHIFT) | 1
    fabric = Fabric(MISS_COOKIE, unanswered_cookie=unanswered, **options)
    leaves = -(-hypervisors // HYPERVISORS_PER_LEAF)
    spines = [0x30000 + k for k in range(SPINES)]
    for k, dpid in enumerate(spines):
        ports = {p + 1: (f"sp{k}-eth{p + 1}", _mac(0x0A, dpid, p + 1)) for p in range(leaves)}
        fabric.add(EmulatedSwitch(dpid, {**ports, OFPP_LOCAL: (f"sp{k}", _mac(0x0A, dpid, 0xFFFE))}))
    vms = []
    for j in range(leaves):
        leaf = 0x20000 + j
        members = range(j * HYPERVISORS_PER_LEAF, min(hypervisors, (j + 1) * HYPERVISORS_PER_LEAF))
        ports = {p + 1: (f"lf{j}-eth{p + 1}", _mac(0x0A, leaf, p + 1)) for p in range(len(members) + SPINES)}
        fabric.add(EmulatedSwitch(leaf, {**ports, OFPP_LOCAL: (f"lf{j}", _mac(0x0A, leaf, 0xFFFE))}))
        for k, spine in enumerate(spines):
            fabric.cable((leaf, len(members) + k + 1), (spine, j + 1))
        for slot, i in enumerate(members):
            hv = 0x10000 + i
            uplink = VMS_PER_HYPERVISOR + 1
            ports = {p: (f"hv{i}-eth{p}", _mac(0x0A, hv, p)) for p in range(1, uplink + 1)}
            fabric.add(EmulatedSwitch(hv, {**ports, OFPP_LOCAL: (f"hv{i}", _mac(0x0A, hv, 0xFFFE))}))
            fabric.cable((hv, uplink), (leaf, slot + 1))
            for p in range(1, VMS_PER_HYPERVISOR + 1):
                n = i * VMS_PER_HYPERVISOR + p
                vms.append((hv, p, _mac(0x02, i, p), bytes([10, n >> 16 & 0xFF, n >> 8 & 0xFF, n & 0xFF])))
    return fabric, vms


def _proc_stats(pid: int) -> tuple[float, int]:
    """(CPU seconds, peak RSS in MiB) of a process."""
    import os

    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    peak = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                peak = int(line.split()[1]) // 1024
    return cpu, peak


def _metric(text: str, name: str) -> float:
    """A metric's value, summed over its series (packet-ins are per switch); -1 if it has none."""
    values = [float(line.split()[-1]) for line in text.splitlines() if line.startswith((name + " ", name + "{"))]
    return sum(values) if values else -1.0


async def _converge(fabric: Fabric, vms, controller, timeout: float) -> dict:
    from mininet_scenarios.harness import rest_get

    loop = asyncio.get_running_loop()
    by_switch: dict[int, list] = {}
    for vm in vms:
        by_switch.setdefault(vm[0], []).append(vm)
    gateway = bytes([10, 255, 255, 254])
    everyone_learned = False

    def first_flows(switch: EmulatedSwitch) -> None:
        # Like a real VM resolving its gateway, each sends its ARP request again every ARP_RETRY
        # seconds while it goes unanswered: here, until the controller knows every VM (a frame of a
        # burst the controller's packet-in budget dropped is not lost for good, as on real hosts).
        def play() -> None:
            if everyone_learned:
                return
            for dpid, port, mac, ip in by_switch.get(switch.dpid, []):
                fabric.play_arp(dpid, port, mac, ip, gateway)
            loop.call_later(ARP_RETRY, play)

        loop.call_later(1.0, play)

    for switch in fabric.switches.values():
        switch.on_first_flows = first_flows
    expected_links = len(fabric.cables) // 2
    cpu_before, _ = _proc_stats(controller.proc.pid)
    emulator_cpu_before = time.process_time()
    started = time.monotonic()
    tasks = [asyncio.create_task(fabric.run_switch(s, "127.0.0.1", controller.of_port)) for s in fabric.switches.values()]
    if fabric.debug:
        tasks.append(asyncio.create_task(fabric.watch_loop()))
    deadline = started + timeout
    seen = {}
    try:
        while time.monotonic() < deadline:
            await asyncio.sleep(1.0)
            text = await loop.run_in_executor(None, lambda: rest_get(controller.rest_url, "/metrics", timeout=30))
            wanted = ("switches_connected", "links", "hosts", "flows_desired", "compile_pending")
            seen = {k: _metric(text, f"goldilocks_{k}") for k in wanted}
            seen["flows_held"] = sum(len(s.flows) for s in fabric.switches.values())
            everyone_learned = seen["hosts"] >= len(vms)
            if DEBUG or fabric.debug:
                probes = {k: _metric(text, f"goldilocks_{k}_total") for k in ("lldp_rejected", "probes_refused", "packet_ins")}
                probes["packet_ins_waiting"] = _metric(text, "goldilocks_packet_ins_waiting")
                print(round(time.monotonic() - started, 1), seen, probes, fabric.counters, file=sys.stderr, flush=True)
            last = fabric.counters.last_flow_mod
            if (
                seen["switches_connected"] == len(fabric.switches)
                and seen["links"] == expected_links
                and seen["hosts"] >= len(vms)
                # Every switch holds its whole desired table: a compile that ran longer than the
                # quiet time without a flow-mod out (a big one does) is not taken for the end.
                and seen["flows_held"] == seen["flows_desired"]
                and not seen["compile_pending"]
                and last is not None
                and time.monotonic() - last >= SETTLE_QUIET
            ):
                break
        else:
            raise TimeoutError(f"not settled after {timeout:.0f} s: {seen}, {fabric.counters}")
        topo = await loop.run_in_executor(None, lambda: rest_get(controller.rest_url, "/v1/topology", timeout=60))
        flaps = await loop.run_in_executor(None, lambda: _timed_out_links(controller.log_path))
        text = await loop.run_in_executor(None, lambda: rest_get(controller.rest_url, "/metrics", timeout=30))
        rejected = _metric(text, "goldilocks_lldp_rejected_total")
    finally:
        cpu_after, peak_mib = _proc_stats(controller.proc.pid)
        emulator_cpu = time.process_time() - emulator_cpu_before
        for task in tasks:
            task.cancel()
        if fabric.debug:
            print("debug:", json.dumps(_debug_summary(fabric, controller.log_path)), file=sys.stderr, flush=True)
    converged = [s["converge_seconds"] for s in topo["switches"]]
    c = fabric.counters
    span = (c.last_flow_mod - c.first_flow_mod) if c.first_flow_mod else 0.0
    return {
        "switches": len(fabric.switches),
        "hypervisors": sum(1 for d in fabric.switches if d < 0x20000),
        "vms": len(vms),
        # The controller's own figure: each switch's first reconcile confirmed by a barrier, from its connect.
        "all_converged_seconds": round(max(converged), 2) if converged and None not in converged else None,
        "settled_seconds": round(c.last_flow_mod - started, 2),
        "flow_mods": c.flow_mods,
        "flows_held": int(seen.get("flows_held", 0)),
        "flow_mods_per_second": round(c.flow_mods / span) if span else None,
        "controller_cpu_seconds": round(cpu_after - cpu_before, 1),
        "controller_peak_rss_mib": peak_mib,
        # The emulator: every switch in this one process, where a data centre has a CPU per hypervisor.
        "emulator_cpu_seconds": round(emulator_cpu, 1),
        "probes_delivered": c.probes_delivered,
        "links_timed_out": flaps,
        "probes_rejected_stale": int(rejected),
        "reconnects": c.reconnects,
        **({"debug": _debug_summary(fabric, controller.log_path)} if fabric.debug else {}),
    }


# What the controller's log says about connections: Goldilocks' own lines, and Ryu's connection layer
# (ryu.controller.controller, at debug level only under --debug) on why it closed one.
LOG_MARKS = {
    "switch_connected": " connected\n",
    "switch_disconnected": " disconnected",
    "ryu_send_timed_out": "Socket timed out while sending",
    "ryu_send_error": "Socket error while sending",
    "ryu_datapath_error": "Error in the datapath",
    "ryu_connections_accepted": "connected socket:",
    "ryu_sends_discarded": "send() to",
    "tracebacks": "Traceback",
}


def _debug_summary(fabric: Fabric, log_path: str) -> dict:
    counts = dict.fromkeys(LOG_MARKS, 0)
    try:
        with open(log_path, errors="replace") as log:
            for line in log:
                for key, mark in LOG_MARKS.items():
                    if mark in line:
                        counts[key] += 1
    except OSError:
        pass
    return {"emulator": fabric.drop_summary(), "controller_log": log_path, "controller_log_counts": counts}


def _debug_ryu_connections() -> None:
    """Under --debug: the controller child logs Ryu's connection layer at debug level (it says why it
    closes a connection only there), through a sitecustomize on its PYTHONPATH; its code is untouched."""
    import tempfile

    path = tempfile.mkdtemp(prefix="goldilocks-converge-debug-")
    with open(os.path.join(path, "sitecustomize.py"), "w") as f:
        f.write("import logging\nlogging.getLogger('ryu.controller.controller').setLevel(logging.DEBUG)\n")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (path, os.environ.get("PYTHONPATH")) if p)


def _timed_out_links(log_path: str) -> int:
    """How many times a learned link timed out while the fabric converged (each is a flap: its ports
    change kind and the fabric is recompiled)."""
    with open(log_path, errors="replace") as log:
        return sum(1 for line in log if "timed out: no probe" in line)


# The emulator as it was before its reads were sliced, for comparing (--legacy).
LEGACY = {"read_slice": 1 << 20, "drain_at": 1 << 20, "packet_in_backlog": 1 << 30}


def measure(hypervisors: int, timeout: float = 600.0, log_path: str = "", debug: bool = False, legacy: bool = False) -> dict:
    from mininet_scenarios.harness import ControllerProcess

    fabric, vms = build(hypervisors, debug=debug, **(LEGACY if legacy else {}))
    if debug:
        _debug_ryu_connections()
        log_path = log_path or f"/tmp/goldilocks-converge-{hypervisors}-{os.getpid()}.log"
        print(f"controller log: {log_path}", file=sys.stderr, flush=True)
    controller = ControllerProcess(log_path=log_path).start()
    try:
        return asyncio.run(_converge(fabric, vms, controller, timeout))
    finally:
        controller.stop()


def json_from_child(argv: list[str], timeout: float) -> dict:
    """Run `python -m <argv>` in a fresh interpreter (the controllers it starts are its children) and
    return the JSON its last line prints; {"error": ...} when it fails, or has no result within
    `timeout` seconds (it gets SIGTERM first: it stops its controller before exiting)."""
    child = subprocess.Popen([sys.executable, "-m", *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = child.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        child.terminate()
        try:
            child.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            child.kill()
            child.communicate()
        return {"error": f"no result in {timeout:.0f} s"}
    if child.returncode != 0:
        return {"error": err[-500:]}
    return json.loads(out.strip().splitlines()[-1])


def run_all(log=print, sizes=SIZES) -> list[dict]:
    """Each size with a fresh controller, in a fresh interpreter (given up after 10 minutes each)."""
    results = []
    for hypervisors in sizes:
        log(f"cold converge: {hypervisors} emulated hypervisors ...")
        result = json_from_child(["bench.converge", str(hypervisors)], timeout=700)
        if "error" in result:
            result = {"hypervisors": hypervisors, **result}
        results.append(result)
        log(f"cold converge: {result}")
    return results


def exit_on_term(signum, frame) -> None:
    raise SystemExit(f"stopped by signal {signum}")  # runs measure's cleanup: the controller stops too


if __name__ == "__main__":
    import argparse
    import signal

    parser = argparse.ArgumentParser(prog="python -m bench.converge", description=__doc__.split("\n\n")[0])
    parser.add_argument("hypervisors", type=int)
    parser.add_argument("--timeout", type=float, default=600.0, help="give up after this many seconds (default 600)")
    parser.add_argument("--debug", action="store_true", help="progress, dropped connections and their causes to stderr")
    parser.add_argument("--legacy", action="store_true", help="the emulator before sliced reads, for comparing")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, exit_on_term)
    print(json.dumps(measure(args.hypervisors, args.timeout, debug=args.debug, legacy=args.legacy)))
