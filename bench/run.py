"""`make bench`: measure Goldilocks against Ryu simple_switch_13, Faucet and plain OVS NORMAL, then write docs/benchmarks.md.

    .venv/bin/python -m bench.run                 # everything (what `make bench` runs)
    .venv/bin/python -m bench.run --reps 1 --scaling-reps 1 --output /tmp/b.md   # a quick look
    .venv/bin/python -m bench.run --only encryption --output /tmp/e.md --json /tmp/e.json   # one section alone
    .venv/bin/python -m bench.run --only quarantine --reps 1 --output /tmp/q.md --json /tmp/q.json
    .venv/bin/python -m bench.run --only rest --output /tmp/r.md --json /tmp/r.json   # no Mininet, no root
    .venv/bin/python -m bench.run --only peers --reps 1 --output /tmp/p.md --json /tmp/p.json   # Faucet too

Needs root, Open vSwitch running and Mininet; Mininet runs of others are waited for (the machine-wide lock)."""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from bench.measure import (
    FAUCET_VENV,
    FaucetProcess,
    RyuSimpleSwitch,
    converge_seconds,
    first_clean_pingall,
    histogram_quantile,
    interface_macs,
    log,
    log_problems,
    metric_values,
    ping_gap_across_restart,
    ping_pairs,
    topology_trouble,
    wait_until,
)
from mininet_scenarios.datacenter import Layout, MininetLock, running
from mininet_scenarios.harness import REPO, rest_get

LOOP_FREE = (1, 3, 2, 2)  # 1 spine, 3 leaves, 2 hypervisors per leaf, 2 VMs each: 10 switches, 12 VMs
LOOPED = (2, 3, 2, 2)  # the same with 2 spines: every leaf pair has two paths
SCALING = [(1, 2, 1, 1), (2, 4, 2, 1), (2, 6, 3, 1), (2, 8, 4, 1), (2, 12, 4, 1), (4, 16, 4, 1)]
IPERF_SECONDS = 3
OUT_DIR = REPO / "bench" / "out"
# Late hypervisors: on the looped layout, every hypervisor gets its controller this long after the
# fabric starts (random per hypervisor, seeded by the repetition), as when a rack boots after its leaf.
LATE_SECONDS = (1.0, 4.0)
LEARNING = "goldilocks_packet_in_to_flow_mod_seconds"  # a histogram: quantiles estimated from its buckets
SECTIONS = ("headline", "scaling", "encryption", "quarantine", "policy", "converge", "rest", "peers")  # --only; --no-SECTION


def layout_of(shape: tuple[int, int, int, int]) -> Layout:
    return Layout(*shape)


def describe(shape: tuple[int, int, int, int]) -> str:
    lay = layout_of(shape)
    return f"({','.join(map(str, shape))}) {len(lay.switches)} switches, {len(lay.vms)} VMs"


def _pingall(dc) -> dict:
    vms = list(dc.layout.vms)
    pairs, how = ping_pairs(vms)
    result = first_clean_pingall(dc, pairs)
    return {**vars(result), "how": how}


def _keep_log(src: str, label: str) -> str:
    """Copy a controller log to bench/out/logs (gitignored) for the record; return its path."""
    dest = OUT_DIR / "logs" / f"{label}.log"
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        shutil.copyfile(src, dest)
    except OSError:
        return ""
    return str(dest.relative_to(REPO))


def _problems(path: str) -> dict:
    count, lines = log_problems(path)
    return {"count": count, "lines": lines}


# -- one run of each kind ---------------------------------------------------------------------
def run_standalone(shape) -> dict:
    """No controller: every bridge is a plain OVS NORMAL learning switch (fail_mode standalone)."""
    started = time.monotonic()
    with running(layout_of(shape), fail_mode="standalone", with_controller=False) as dc:
        vms = list(dc.layout.vms)
        pingall = _pingall(dc)
        mbps = dc.iperf3(vms[0], vms[-1], IPERF_SECONDS)
    return {"pingall": pingall, "iperf_mbps": mbps, "wall_seconds": time.monotonic() - started}


def run_ryu(shape, label: str) -> dict:
    started = time.monotonic()
    log_path = OUT_DIR / "logs" / f"{label}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log_path.unlink(missing_ok=True)
    ryu = RyuSimpleSwitch(log_path=str(log_path)).start()
    try:
        with running(layout_of(shape), controller=ryu.target, tunnels=False) as dc:
            vms = list(dc.layout.vms)
            pingall = _pingall(dc)
            mbps = dc.iperf3(vms[0], vms[-1], IPERF_SECONDS)
            gap = ping_gap_across_restart(dc, vms[1], vms[-2], kill=lambda: ryu.kill(signal.SIGKILL), restart=ryu.start)
    finally:
        ryu.stop()
    return {
        "pingall": pingall,
        "iperf_mbps": mbps,
        "gap": vars(gap),
        "log": str(log_path.relative_to(REPO)),
        "log_problems": _problems(str(log_path)),
        "wall_seconds": time.monotonic() - started,
    }


def built_ports(dc) -> dict[str, dict[int, str]]:
    """What Mininet really cabled: switch -> port number -> the node at the other end."""
    ports: dict[str, dict[int, str]] = {}
    for name in dc.layout.switches:
        switch = dc.net.get(name)
        for intf, port in switch.ports.items():
            link = getattr(intf, "link", None)
            if link is not None:
                peer = link.intf2 if link.intf1 is intf else link.intf1
                ports.setdefault(name, {})[port] = peer.node.name
    return ports


def run_faucet(shape, label: str, stacked: bool = False) -> dict:
    """Faucet with a faucet.yaml generated for the layout (mininet_scenarios/faucet_config.py): flat on a
    loop-free layout, stacked (a spine the root) on a looped one. The same figures as simple_switch_13."""
    from mininet_scenarios.faucet_config import dump, for_layout, layout_ports

    started = time.monotonic()
    layout = layout_of(shape)
    log_path = OUT_DIR / "logs" / f"{label}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log_path.unlink(missing_ok=True)
    config = dump(for_layout(layout, stacked))
    (OUT_DIR / "logs" / f"{label}.faucet.yaml").write_text(config)
    faucet = FaucetProcess(config=config, log_path=str(log_path)).start()
    result: dict = {"config": str((OUT_DIR / "logs" / f"{label}.faucet.yaml").relative_to(REPO)), "stacked": stacked}
    try:
        with running(layout, controller=faucet.target, tunnels=False) as dc:
            vms = list(dc.layout.vms)
            # The configuration names ports by number: it is only right if Mininet numbered them so.
            if built_ports(dc) != layout_ports(layout):
                raise RuntimeError(f"Mininet's port numbers differ from the faucet.yaml's: {built_ports(dc)}")
            result["pingall"] = _pingall(dc)
            if stacked:
                result["stack"] = faucet_stack(faucet)
            result["iperf_mbps"] = dc.iperf3(vms[0], vms[-1], IPERF_SECONDS)
            killed: list[float] = []

            def kill() -> None:
                killed.append(time.monotonic())
                faucet.kill(signal.SIGKILL)

            gap = ping_gap_across_restart(dc, vms[1], vms[-2], kill=kill, restart=faucet.start)
            result["gap"] = vars(gap)
            if gap.open_ended:
                # The ping run ended before the path came back: how long it took, one ping at a time.
                back = wait_until(lambda: dc.ping_pair(vms[1], vms[-2], timeout=0.2), 30, 0.05)
                result["gap"]["back_after_kill"] = time.monotonic() - killed[0] if back else None
    finally:
        faucet.stop()
    result.update({"log": str(log_path.relative_to(REPO)), "log_problems": _problems(str(log_path)),
                   "wall_seconds": time.monotonic() - started})
    return result


STACK_STATES = {0: "ADMIN_DOWN", 1: "INITIALIZING", 2: "BAD", 3: "UP", 4: "GONE", -1: "NONE"}  # faucet/port.py


def faucet_stack(faucet: FaucetProcess) -> dict:
    """Faucet's stack as its Prometheus port shows it after the pingall: stack ports by state, the root."""
    try:
        metrics = faucet.metrics()
    except (OSError, ValueError) as exc:
        return {"error": repr(exc)}
    states: dict[str, int] = {}
    roots = []
    for key, value in metrics.items():
        if key.startswith("port_stack_state{"):
            name = STACK_STATES.get(int(value), str(value))
            states[name] = states.get(name, 0) + 1
        elif key.startswith("is_dp_stack_root{") and value == 1:
            roots += re.findall(r'dp_name="([^"]+)"', key)
    return {"ports_by_state": states, "root": roots}


def _cpu_seconds(pid: int) -> float | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def vms_misplaced(dc) -> list[str]:
    """VMs the controller does not know, or places anywhere but their built hypervisor port."""
    learned = {h["mac"]: (int(h["dpid"], 16), h["port"]) for h in dc.topology()["hosts"]}
    wrong = []
    for name, (hv, _, mac) in dc.layout.vms.items():
        intf = dc.host(name).defaultIntf()
        peer = intf.link.intf2 if intf.link.intf1 is intf else intf.link.intf1
        built = (dc.layout.switches[hv], peer.node.ports[peer])
        where = learned.get(mac)
        if where != built:
            wrong.append(f"{name} (built {hv} port {built[1]}): " + (f"learned at {where[0]:016x} port {where[1]}"
                                                                     if where else "not known"))
    return wrong


def _goldilocks_figures(dc) -> dict:
    """Read right after the pingall. A controller too busy to answer REST leaves figures empty, not the run failed."""
    figures: dict = {"controller_cpu_seconds": _cpu_seconds(dc.controller_proc.proc.pid)}
    try:
        health = rest_get(dc.rest_url, "/v1/health", 10)
        figures["health"] = {**health, "links_built": len(dc.layout.switch_links), "vms_built": len(dc.layout.vms)}
    except (OSError, ValueError) as exc:
        figures["health"] = {"error": repr(exc)}
    try:
        figures["vms_misplaced"] = vms_misplaced(dc)
    except (OSError, ValueError, KeyError) as exc:
        figures["vms_misplaced_error"] = repr(exc)
    try:
        values = converge_seconds(dc)
        metrics = metric_values(dc.rest_url)
    except (OSError, ValueError) as exc:
        figures["figures_error"] = repr(exc)
        return figures
    return {
        **figures,
        "reconciles": metrics.get("goldilocks_reconcile_seconds_count"),
        "reconcile_seconds": metrics.get("goldilocks_reconcile_seconds_sum"),
        "converge": sorted(values) if values else None,
        "learning_p50": histogram_quantile(metrics, LEARNING, 0.5),
        "learning_p99": histogram_quantile(metrics, LEARNING, 0.99),
        "learning_count": metrics.get("goldilocks_packet_in_to_flow_mod_seconds_count"),
        "packet_ins": metrics.get("goldilocks_packet_ins_total"),
        "flow_mods": metrics.get("goldilocks_flow_mods_total"),
        "switch_errors": metrics.get("goldilocks_switch_errors_total"),
        "flows_desired": metrics.get("goldilocks_flows_desired"),
    }


def run_goldilocks(shape, label: str, full: bool = True) -> dict:
    """Pingall from start, then the controller's own figures; with full, iperf3 and the SIGKILL gap too."""
    started = time.monotonic()
    result: dict = {}
    # Learning and forwarding are measured without tunnel endpoints, as for the baselines; the
    # encryption section builds its own data centres with them.
    with running(layout_of(shape), tunnels=False) as dc:
        ctl = dc.controller_proc
        try:
            vms = list(dc.layout.vms)
            result["pingall"] = _pingall(dc)
            result.update(_goldilocks_figures(dc))
            if full:
                result["iperf_mbps"] = dc.iperf3(vms[0], vms[-1], IPERF_SECONDS)
                switches = len(dc.layout.switches)

                def synced():
                    return wait_until(lambda: rest_get(ctl.rest_url, "/v1/health", 1)["switches_synced"] == switches, 20)

                gap = ping_gap_across_restart(
                    dc, vms[1], vms[-2], kill=lambda: ctl.kill(signal.SIGKILL), restart=ctl.start, after_restart=synced
                )
                result["gap"] = vars(gap)
                result["health_after"] = rest_get(ctl.rest_url, "/v1/health")
        finally:
            result["log"] = _keep_log(ctl.log_path, label)
            result["log_problems"] = _problems(ctl.log_path)
            try:
                macs = interface_macs()
            except (OSError, subprocess.SubprocessError):
                macs = {}
            result["log_topology"] = topology_trouble(ctl.log_path, dc.layout, macs)
    result["wall_seconds"] = time.monotonic() - started
    return result


def late_delays(layout: Layout, seed: int) -> dict[str, float]:
    rng = random.Random(seed)
    return {name: round(rng.uniform(*LATE_SECONDS), 2) for name, role in layout.roles.items() if role == "hypervisor"}


def run_goldilocks_late(shape, label: str, seed: int) -> dict:
    """Hypervisors connect late, in random order: from the last connect, the time to an exact
    topology (every link, every VM on its own port, no phantom host) and to the first clean pingall.
    At the last connect every VM sends one ping in the background and the pingall attempts start;
    a watcher polls /v1/topology every 50 ms meanwhile."""
    started = time.monotonic()
    layout = layout_of(shape)
    delays = late_delays(layout, seed)
    result: dict = {"delays": delays}
    with running(layout, connect_delays=delays, tunnels=False) as dc:
        ctl = dc.controller_proc
        try:
            wait_until(lambda: len(dc.controller_set_at) == len(delays), max(delays.values()) + 10)
            last = max(dc.controller_set_at.values())
            exact: dict = {}
            stop = threading.Event()

            def watch() -> None:
                while not stop.is_set() and time.monotonic() - last < 60:
                    try:
                        diff = dc.learning_diff()
                    except (OSError, ValueError):
                        diff = ["(REST did not answer)"]
                    if not diff:
                        exact["at"] = time.monotonic()
                        return
                    exact["last_diff"] = diff
                    time.sleep(0.05)

            watcher = threading.Thread(target=watch, daemon=True)
            watcher.start()
            vms = list(dc.layout.vms)
            # Every VM speaks once, at once, so that exactness measures learning, not the ping order.
            for i, vm in enumerate(vms):
                dc.host(vm).cmd(f"ping -c1 -W1 {dc.layout.vms[vms[(i + 1) % len(vms)]][1]} >/dev/null 2>&1 &")
            pairs, how = ping_pairs(vms)
            pingall = first_clean_pingall(dc, pairs)
            result["pingall"] = {**vars(pingall), "how": how}
            if pingall.seconds is not None:
                result["pingall_after_last_connect"] = dc.net_start_at + pingall.seconds - last
            watcher.join(30)
            stop.set()
            if "at" in exact:
                result["exact_after_last_connect"] = exact["at"] - last
            else:
                result["not_exact"] = exact.get("last_diff", [])[:8]
            result["last_connect_after_start"] = last - dc.net_start_at
            result.update(_goldilocks_figures(dc))
        finally:
            result["log"] = _keep_log(ctl.log_path, label)
            result["log_problems"] = _problems(ctl.log_path)
    result["wall_seconds"] = time.monotonic() - started
    return result


# -- orchestration ------------------------------------------------------------------------------
def preflight(encryption: bool = False, quarantine: bool = False, faucet: bool = False) -> None:
    problems = []
    if faucet and not (FAUCET_VENV / "bin" / "faucet").exists():
        problems.append(f"Faucet is not installed in {FAUCET_VENV.relative_to(REPO)} (make install)")
    if os.geteuid() != 0:
        problems.append("needs root (Mininet creates namespaces and veths)")
    missing = [tool for tool in ("ovs-vsctl", "mnexec", "iperf3", "ethtool", "ping") if shutil.which(tool) is None]
    if encryption:
        from bench import encryption as encryption_section

        missing += encryption_section.missing_tools()
    if quarantine:
        from bench import quarantine as quarantine_section

        missing += quarantine_section.missing_tools()
    problems += [f"{tool} is not installed (make install)" for tool in dict.fromkeys(missing)]
    if not problems:
        # Another Mininet run's bridges are its own while it holds the lock: wait for it to end,
        # then what is left over is a crashed run's.
        lock = MininetLock()
        lock.acquire()
        try:
            listed = subprocess.run(["ovs-vsctl", "--timeout=5", "list-br"], capture_output=True, text=True, timeout=15)
        finally:
            lock.release()
        if listed.returncode:
            problems.append("Open vSwitch is not running (make install starts it)")
        else:
            ours = {n for s in [LOOPED, *SCALING] for n in layout_of(s).switches}
            busy = sorted(set(listed.stdout.split()) & ours)
            if busy:
                problems.append(f"bridges {busy} already exist: left over by a run that crashed")
    if problems:
        sys.exit("bench: " + "; ".join(problems))


def guarded(what: str, fn, *args, **kwargs) -> dict:
    """Run one scenario; a failure is recorded (and reported), not fatal to the rest of the bench."""
    log(f"{what} ...")
    try:
        result = fn(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001 - a benchmark records failures and goes on
        log(f"{what} FAILED: {exc!r}")
        return {"error": repr(exc)}
    bits = []
    if "pingall" in result:
        p = result["pingall"]
        bits.append(f"pingall {p.get('seconds') and round(p['seconds'], 2)} s ({p.get('attempts')} attempts)")
    if "iperf_mbps" in result:
        bits.append(f"iperf3 {result['iperf_mbps']:.0f} Mbit/s")
    if "gap" in result:
        bits.append(f"gap {result['gap']['largest_gap'] and round(result['gap']['largest_gap'], 3)} s")
    if result.get("converge"):
        bits.append(f"converge max {max(result['converge']):.3f} s")
    if result.get("log_problems", {}).get("count"):
        bits.append(f"{result['log_problems']['count']} problem lines in the log")
    if result.get("summary"):
        bits.append(result["summary"])
    log(f"{what}: " + ", ".join(bits) + f" [{result['wall_seconds']:.0f} s]")
    return result


def run_encryption(reps: int) -> dict:
    """Per repetition, a fresh data centre (plain, encrypted, rule to first encrypted packet, rotations)
    and a fresh raw wireguard-go test bed: the ratios compare figures of the same repetition."""
    from bench import encryption

    started = time.monotonic()
    runs = []
    for rep in range(1, reps + 1):
        runs.append({
            "datacentre": guarded(f"rep {rep}/{reps}: encryption, Goldilocks {describe(encryption.LAYOUT)}",
                                  encryption.run_datacentre),
            "raw": guarded(f"rep {rep}/{reps}: encryption, raw wireguard-go between two namespaces", encryption.run_raw),
        })  # fmt: skip
    seconds = time.monotonic() - started
    log(f"encryption section: {seconds:.0f} s")
    return {"settings": encryption.settings(), "runs": runs, "wall_seconds": seconds}


PEERS_FROM_HEADLINE = ("standalone", "ryu", "goldilocks", "goldilocks_looped")


def run_peers(reps: int, headline: list[dict]) -> dict:
    """Per repetition: OVS NORMAL, simple_switch_13, Goldilocks and Faucet on the loop-free layout, Goldilocks
    and stacked Faucet on the looped one (the first four taken from the headline section's same repetition
    when it ran in this run); then the packet-in ladder of each controller on emulated switches."""
    from bench import peers

    started = time.monotonic()
    rows = []
    for rep in range(1, reps + 1):
        same = headline[rep - 1] if rep <= len(headline) else {}
        row = {key: {**same[key], "from_headline": True} for key in PEERS_FROM_HEADLINE if key in same}
        what = f"rep {rep}/{reps}: peers"
        if "standalone" not in row:
            row["standalone"] = guarded(f"{what}, OVS NORMAL {describe(LOOP_FREE)}", run_standalone, LOOP_FREE)
        if "ryu" not in row:
            row["ryu"] = guarded(f"{what}, simple_switch_13 {describe(LOOP_FREE)}", run_ryu, LOOP_FREE, f"peers-ryu-{rep}")
        if "goldilocks" not in row:
            row["goldilocks"] = guarded(f"{what}, Goldilocks {describe(LOOP_FREE)}", run_goldilocks, LOOP_FREE,
                                        f"peers-goldilocks-{rep}")
        row["faucet"] = guarded(f"{what}, Faucet {describe(LOOP_FREE)}", run_faucet, LOOP_FREE, f"peers-faucet-{rep}")
        if "goldilocks_looped" not in row:
            row["goldilocks_looped"] = guarded(f"{what}, Goldilocks {describe(LOOPED)}", run_goldilocks, LOOPED,
                                               f"peers-goldilocks-looped-{rep}")
        row["faucet_looped"] = guarded(f"{what}, Faucet stacked {describe(LOOPED)}", run_faucet, LOOPED,
                                       f"peers-faucet-looped-{rep}", stacked=True)
        rows.append(row)
    packet_in: dict[str, list[list[dict]]] = {name: [] for name in peers.CONTROLLERS}
    for rep in range(1, reps + 1):
        for name in peers.CONTROLLERS:
            log(f"rep {rep}/{reps}: packet-in ladder, {name} ...")
            packet_in[name].append(peers.ladder(name, log=log))
    seconds = time.monotonic() - started
    log(f"peers section: {seconds:.0f} s")
    return {"runs": rows, "packet_in": packet_in, "packet_in_settings": peers.settings(), "wall_seconds": seconds}


def run_quarantine(reps: int) -> dict:
    """Per repetition, a fresh data centre: quarantine latency trials, then moves of the quarantined VM, with a
    bystanders' TCP stream throughout."""
    from bench import quarantine

    started = time.monotonic()
    runs = [guarded(f"rep {rep}/{reps}: quarantine, Goldilocks {describe(quarantine.LAYOUT)}", quarantine.run_datacentre,
                    rep) for rep in range(1, reps + 1)]  # fmt: skip
    seconds = time.monotonic() - started
    log(f"quarantine section: {seconds:.0f} s")
    return {"settings": quarantine.settings(), "runs": runs, "wall_seconds": seconds}


def machine() -> dict:
    def run(cmd):
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return "?"

    mem = next((line.split(":", 1)[1].strip() for line in Path("/proc/meminfo").read_text().splitlines()
                if line.startswith("MemTotal")), "?")
    commit = run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"])
    # The report this run rewrites does not count as a change to the code measured.
    dirty = "\n".join(line for line in run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"])
                      .splitlines() if not line.endswith("docs/benchmarks.md"))
    try:
        from importlib.metadata import version

        versions = {p: version(p) for p in ("ryu", "eventlet", "mininet")}
    except Exception:  # noqa: BLE001
        versions = {}
    faucet = run([str(FAUCET_VENV / "bin" / "python"), "-c", "from importlib.metadata import version as v; "
                  "print(v('faucet'), v('os-ken'))"]).split()
    if len(faucet) == 2:
        versions.update({"faucet": faucet[0], "os-ken": faucet[1]})
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "uname": run(["uname", "-a"]),
        "nproc": run(["nproc"]),
        "memory": mem,
        "ovs": run(["ovs-vsctl", "--version"]).splitlines()[0] if run(["ovs-vsctl", "--version"]) else "?",
        "python": sys.version.split()[0],
        "packages": versions,
        "commit": commit + (" (with uncommitted changes)" if dirty else ""),
        "dirty_files": dirty.splitlines(),
    }


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3, help="repetitions of the headline and looped runs (default 3)")
    parser.add_argument("--scaling-reps", type=int, default=3, help="repetitions per scaling layout (default 3)")
    parser.add_argument("--budget", type=float, default=870, help="seconds; scaling runs that would not fit are skipped")
    parser.add_argument("--no-headline", action="store_true", help="skip the headline and looped runs")
    parser.add_argument("--no-scaling", action="store_true", help="skip the scaling runs")
    parser.add_argument("--no-policy", action="store_true", help="skip the policy compile benchmark (no switches)")
    parser.add_argument("--no-encryption", action="store_true", help="skip the encryption runs")
    parser.add_argument("--no-quarantine", action="store_true", help="skip the quarantine runs")
    parser.add_argument("--no-converge", action="store_true", help="skip the cold converge of emulated switches")
    parser.add_argument("--no-rest", action="store_true", help="skip the REST writes under switch churn")
    parser.add_argument("--no-peers", action="store_true", help="skip Faucet and the packet-in ladders of all three")
    parser.add_argument("--only", action="append", choices=SECTIONS, metavar="SECTION",
                        help=f"run only this section (repeatable): {', '.join(SECTIONS)}")
    parser.add_argument("--output", default=str(REPO / "docs" / "benchmarks.md"))
    parser.add_argument("--json", default=str(OUT_DIR / "results.json"), help="where the raw results go (and, with "
                        "--render-only, come from)")
    parser.add_argument("--render-only", action="store_true",
                        help="measure nothing: rewrite --output from the results already in --json")
    args = parser.parse_args(argv)
    if not 1 <= args.reps <= 5 or not 1 <= args.scaling_reps <= 5:
        parser.error("--reps and --scaling-reps must be between 1 and 5")
    if args.only:
        for section in SECTIONS:
            if section not in args.only:
                setattr(args, f"no_{section}", True)
    return args


def _plots(results: dict, output: Path) -> None:
    """The cost-against-size figure beside the report (bench/plots.py)."""
    if results.get("policy_scale"):
        from bench.plots import plot

        written = plot(results["policy_scale"], output.parent / "policy-scale.png")
        if written is not None:
            log(f"wrote {written}")


def main(argv=None) -> int:
    from bench.report import render

    args = parse_args(argv)
    if args.render_only:
        results = json.loads(Path(args.json).read_text())
        _plots(results, Path(args.output))
        Path(args.output).write_text(render(results, args))
        log(f"rewrote {args.output} from {args.json}")
        return 0
    if not (args.no_headline and args.no_scaling and args.no_encryption and args.no_quarantine and args.no_peers):
        preflight(  # Mininet's sections only
            encryption=not args.no_encryption, quarantine=not args.no_quarantine, faucet=not args.no_peers
        )
    started = time.monotonic()
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    results: dict = {"machine": machine(), "headline": [], "scaling": {}, "skipped": []}
    results["machine"]["command"] = " ".join([".venv/bin/python -m bench.run", *(sys.argv[1:] if argv is None else argv)])
    log(f"machine: {results['machine']['uname']}")

    if not args.no_headline:
        for rep in range(1, args.reps + 1):
            row = {
                "standalone": guarded(f"rep {rep}/{args.reps}: OVS NORMAL {describe(LOOP_FREE)}", run_standalone, LOOP_FREE),
                "ryu": guarded(f"rep {rep}/{args.reps}: simple_switch_13 {describe(LOOP_FREE)}", run_ryu, LOOP_FREE,
                               f"ryu-loopfree-{rep}"),
                "goldilocks": guarded(f"rep {rep}/{args.reps}: Goldilocks {describe(LOOP_FREE)}", run_goldilocks, LOOP_FREE,
                                      f"goldilocks-loopfree-{rep}"),
                "goldilocks_looped": guarded(f"rep {rep}/{args.reps}: Goldilocks {describe(LOOPED)}", run_goldilocks, LOOPED,
                                             f"goldilocks-looped-{rep}"),
                "goldilocks_late": guarded(f"rep {rep}/{args.reps}: Goldilocks {describe(LOOPED)}, late hypervisors",
                                           run_goldilocks_late, LOOPED, f"goldilocks-late-{rep}", rep),
            }
            results["headline"].append(row)

    if not args.no_scaling:
        last_wall: dict[str, float] = {}
        for rep in range(1, args.scaling_reps + 1):
            for shape in SCALING:
                key = describe(shape)
                estimate = last_wall.get(key, 20.0 + 2.0 * len(layout_of(shape).switches))
                elapsed = time.monotonic() - started
                if elapsed + estimate > args.budget:
                    log(f"skipping scaling {key} rep {rep}: {elapsed:.0f} s spent, about {estimate:.0f} s more would pass "
                        f"the {args.budget:.0f} s budget")
                    results["skipped"].append({"layout": key, "rep": rep})
                    continue
                label = "goldilocks-scale-" + "-".join(map(str, shape)) + f"-{rep}"
                res = guarded(f"scaling rep {rep}/{args.scaling_reps}: Goldilocks {key}", run_goldilocks, shape, label,
                              full=False)
                last_wall[key] = res.get("wall_seconds", estimate)
                lay = layout_of(shape)
                entry = {"shape": shape, "switches": len(lay.switches), "links": len(lay.switch_links), "vms": len(lay.vms)}
                results["scaling"].setdefault(key, {**entry, "runs": []})["runs"].append(res)

    if not args.no_encryption:
        results["encryption"] = run_encryption(args.reps)

    if not args.no_quarantine:
        results["quarantine"] = run_quarantine(args.reps)

    if not args.no_peers:
        results["peers"] = run_peers(args.reps, results["headline"])

    if not args.no_policy:
        from bench.policy_scale import run_all

        results["policy_scale"] = run_all(log)

    if not args.no_converge:
        from bench.converge import run_all as run_converge

        results["converge"] = run_converge(log)

    if not args.no_rest:
        from bench.rest_load import run_all as run_rest

        results["rest"] = run_rest(log)

    results["total_seconds"] = time.monotonic() - started
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(results, indent=1, default=str))
    _plots(results, Path(args.output))
    Path(args.output).write_text(render(results, args))
    log(f"wrote {args.output} (raw results: {args.json}) in {results['total_seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
