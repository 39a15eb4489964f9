"""Render bench results (the dict bench.run builds) as docs/benchmarks.md."""

from __future__ import annotations

import statistics

# Quoted from the issue, measured elsewhere on a loop-free 1-spine, 3-leaf, 6-hypervisor, 12-VM topology.
QUOTED = {
    "Ryu simple_switch_13": {"pingall": 1.55, "ratio": 0.98, "gap": 0.054},
    "Faucet 1.10.12": {"pingall": 0.74, "ratio": 1.01, "gap": 0.10},
}
DASH = "–"
FAUCET_VERSION = "1.10.12"


def get(d, path: str):
    for key in path.split("."):
        if not isinstance(d, dict) or d.get(key) is None:
            return None
        d = d[key]
    return d


def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


NEVER = float("inf")  # a pingall that never came clean within the 60 s budget


def fmt(value, digits: int = 2, scale: float = 1.0) -> str:
    if value == NEVER:
        return "> 60"
    return DASH if value is None else f"{value * scale:.{digits}f}"


def pingall_seconds(res) -> float | None:
    """Seconds to the first clean pingall; NEVER when the run went on but none came clean (it counts as the
    worst in a median); None when the run itself failed."""
    if not isinstance(res, dict) or "error" in res or "pingall" not in res:
        return None
    value = get(res, "pingall.seconds")
    return NEVER if value is None else value


def with_runs(values, digits: int = 2, scale: float = 1.0) -> str:
    """The median, then every run in brackets (a failed run shows as –)."""
    if len(values) <= 1:
        return fmt(values[0] if values else None, digits, scale)
    return f"**{fmt(med(values), digits, scale)}** ({', '.join(fmt(v, digits, scale) for v in values)})"


def plural(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def ratio(a, b):
    return a / b if a is not None and b and NEVER not in (a, b) else None


def _headline_series(rows: list[dict], who: str) -> dict:
    return {
        "pingall": [pingall_seconds(r.get(who)) for r in rows],
        "mbps": [get(r.get(who), "iperf_mbps") for r in rows],
        "ratio": [ratio(get(r.get(who), "iperf_mbps"), get(r.get("standalone"), "iperf_mbps")) for r in rows],
        "gap": [get(r.get(who), "gap.largest_gap") for r in rows],
        "gap_open": [bool(get(r.get(who), "gap.open_ended")) for r in rows],
        "replies": [get(r.get(who), "gap.replies") for r in rows],
        "restart": [get(r.get(who), "gap.restart_seconds") for r in rows],
        "resync": [get(r.get(who), "gap.resync_seconds") for r in rows],
        "attempts": [get(r.get(who), "pingall.attempts") for r in rows],
        "failures": [get(r.get(who), "pingall.failures") or [] for r in rows],
        "attempt_started": [get(r.get(who), "pingall.attempt_started") for r in rows],
        "attempt_seconds": [get(r.get(who), "pingall.attempt_seconds") for r in rows],
        "converge_max": [max(c) if (c := get(r.get(who), "converge")) else None for r in rows],
        "converge_med": [med(c) if (c := get(r.get(who), "converge")) else None for r in rows],
        "learn_p50": [get(r.get(who), "learning_p50") for r in rows],
        "learn_p99": [get(r.get(who), "learning_p99") for r in rows],
    }


def _gib(meminfo: str | None) -> str:
    try:
        return f"{int(meminfo.split()[0]) / 2**20:.1f} GiB (MemTotal {meminfo})"
    except (AttributeError, ValueError, IndexError):
        return str(meminfo)


def _machine(m: dict, total: float | None) -> list[str]:
    pk = m.get("packages", {})
    return [
        f"- Date: {m.get('date')}",
        f"- Machine: `{m.get('uname')}`",
        f"- CPUs (`nproc`): {m.get('nproc')}; memory: {_gib(m.get('memory'))}",
        f"- Open vSwitch: {m.get('ovs')} (userspace datapath, `datapath_type=netdev`)",
        f"- Python {m.get('python')}; ryu {pk.get('ryu', '?')}, eventlet {pk.get('eventlet', '?')}, "
        f"mininet {pk.get('mininet', '?')}" + (f"; Faucet {pk['faucet']} on os-ken {pk.get('os-ken', '?')} "
                                                 "(`.venv-faucet`)" if pk.get("faucet") else ""),
        f"- Code: commit {m.get('commit')}",
        f"- Command: `{m['command']}`" if m.get("command", "").split()[3:] else
        "- Command: `make bench` (runs `.venv/bin/python -m bench.run`)",
        f"- Total bench runtime: {fmt(total, 0)} s" + (f" ({total / 60:.1f} min)" if total else ""),
        *(f"- Measured later, on commit {r['commit']} ({r['date']}): {r['sections']}, with `{r['command']}`"
          for r in m.get("remeasured", [])),
    ]


def _explanations(reps: int) -> list[str]:
    return [
        "## What is measured",
        "",
        (f"Each headline figure is the **median of {reps} runs**, shown bold, with every run in brackets. "
         if reps > 1 else "Each headline figure comes from **a single run** (`--reps 1`). ")
        + "Each run builds "
        "a fresh Mininet network and starts a fresh controller. The machine has 2 cores and other work runs on it, "
        "so compare figures from the same run. The baselines below were measured here, in the same `make bench`, in "
        "the same repetition as the run they are compared with.",
        "",
        "- **First 0%-loss pingall after start.** The clock starts just before `net.start()`, when the bridges are "
        "created and told their controller. The controller process is already up and listening. From that moment, "
        "attempt after attempt pings every ordered VM pair in turn, one `ping -c1 -W1` each. An attempt stops at "
        "its first unanswered ping, and the next attempt starts at once. The figure is the time at which an attempt "
        "ends with every pair answered (the whole run gives up after 60 s). It includes the length of that "
        "clean attempt: 132 sequential pings take 0.3-0.4 s here even on a plain NORMAL bridge. Nothing waits on "
        "the controller's REST API first, so the controller's learning time is in the figure. Every failed attempt "
        "costs at least the 1 s `-W1` timeout. The layouts with more than 12 VMs ping a bounded sample instead: "
        "each VM pings the next VM, the VM halfway round and the previous VM (by number). That sample always "
        "crosses leaves.",
        f"- **iperf3 ratio.** TCP `iperf3 -t {3}` from the first VM to the last VM, which sit behind different "
        "leaves (5 bridges: hypervisor, leaf, spine, leaf, hypervisor). The Mbit/s is divided by the same "
        "measurement on the same loop-free topology built with `fail_mode=standalone` and no controller, so that "
        "every bridge is a plain OVS `NORMAL` learning switch. Both are measured in the same repetition. 1.00 "
        "means the controller-programmed path is as fast as plain OVS.",
        "- **Ping gap across SIGKILL + restart.** `ping -D -i 0.05 -c 160` runs between the second VM and the "
        "second-to-last VM (different leaves). 1.5 s in, the controller gets SIGKILL. It is started again at once "
        "with the same command, ports and state directory. The figure is the largest time between two "
        "consecutive echo replies (the 50 ms ping interval is the floor). The number of replies out of 160 is "
        "listed too.",
        "- **Converge time** (Goldilocks only). For each switch, the `converge_seconds` of `GET /v1/topology`: the "
        "time from the OpenFlow connection to the barrier reply that follows the first reconcile. At that point "
        "the switch holds the flow table the controller wants. The bench waits until every switch has a value. "
        "The table shows the median and the maximum over the switches.",
        "- **Packet-in to flow-mod latency** (Goldilocks only). The `goldilocks_packet_in_to_flow_mod_seconds` "
        "histogram of `GET /metrics`, read after the pingall; its quantiles are estimated from the buckets as "
        "Prometheus' `histogram_quantile` does (the buckets make that within about 20 %). Each sample runs from a "
        "learning packet-in (a new host) to the moment its flow-mods are sent. That span includes recompiling the "
        "desired tables.",
        "",
    ]


def _figures_table(g: dict) -> list[str]:
    """The header of a figures table and Goldilocks' row in it."""
    return [
        "| | first 0%-loss pingall (s) | iperf3 (Mbit/s) | iperf3 ratio vs OVS NORMAL | ping gap across SIGKILL + restart (s) "
        "| replies of 160 |",
        "|---|---|---|---|---|---|",
        f"| **Goldilocks** | {with_runs(g['pingall'])} | {with_runs(g['mbps'], 0)} | {with_runs(g['ratio'])} "
        f"| {with_runs(g['gap'], 3)} | {with_runs(g['replies'], 0)} |",
    ]


def _headline(rows: list[dict], reps: int, faucet: dict | None = None) -> list[str]:
    """`faucet`: Faucet's series from the peers section of the same run; it then replaces the quoted Faucet."""
    g, r, s = _headline_series(rows, "goldilocks"), _headline_series(rows, "ryu"), _headline_series(rows, "standalone")
    quoted = {name: q for name, q in QUOTED.items() if not (faucet and name.startswith("Faucet"))}
    faucet_row = [] if not faucet else [
        f"| Faucet {FAUCET_VERSION} (in-run, peers section; flat faucet.yaml) | {with_runs(faucet['pingall'])} "
        f"| {with_runs(faucet['mbps'], 0)} | {with_runs(faucet['ratio'])} | {with_runs(faucet['gap'], 3)} "
        f"| {with_runs(faucet['replies'], 0)} |"]
    out = [
        "## Headline: loop-free leaf-spine, 1 spine, 3 leaves, 6 hypervisors, 12 VMs (10 switches)",
        "",
        "`Layout(1, 3, 2, 2)`. " + ("All four were measured here, in the same run:" if faucet
                                    else "All three were measured here, in the same run:"),
        "",
        *_figures_table(g),
        f"| Ryu simple_switch_13 (in-run baseline) | {with_runs(r['pingall'])} | {with_runs(r['mbps'], 0)} "
        f"| {with_runs(r['ratio'])} | {with_runs(r['gap'], 3)} | {with_runs(r['replies'], 0)} |",
        *faucet_row,
        f"| OVS NORMAL, `fail_mode=standalone`, no controller (baseline) | {with_runs(s['pingall'])} "
        f"| {with_runs(s['mbps'], 0)} | 1.00 (by definition) | {DASH} (no controller) | {DASH} |",
        "",
        "**Quoted from the issue, not measured here** (other machine and method; same 1-spine, 3-leaf, "
        "6-hypervisor, 12-VM loop-free topology, medians of 3):",
        "",
        "| quoted, not measured here | first 0%-loss pingall (s) | iperf3 ratio vs standalone | ping gap across SIGKILL + "
        "restart (s) |",
        "|---|---|---|---|",
    ]
    for name, q in quoted.items():
        out.append(f"| {name} (quoted) | {q['pingall']:.2f} | {q['ratio']:.2f} | {q['gap']:.3f} |")
    refs = _references(r, faucet, quoted)
    out += [
        "",
        "### Goldilocks against each reference (medians)",
        "",
        "| figure | Goldilocks | " + " | ".join(f"{name} | Goldilocks / {name}" for name, _ in refs)
        + " | Goldilocks better than all? |",
        "|---|---|" + "---|---|" * len(refs) + "---|",
        _versus("first 0%-loss pingall (s), lower is better", med(g["pingall"]), refs, "pingall", lower=True),
        _versus("iperf3 ratio vs OVS NORMAL, higher is better", med(g["ratio"]), refs, "ratio", lower=False),
        _versus("ping gap across SIGKILL + restart (s), lower is better", med(g["gap"]), refs, "gap", lower=True, digits=3),
        "",
        _failures("Goldilocks", g) + " " + _failures("simple_switch_13", r),
        "",
        "Where Goldilocks' time to a clean pingall goes (medians): "
        f"the clean attempt started {fmt(med(g['attempt_started']))} s after `net.start()` and took "
        f"{fmt(med(g['attempt_seconds']))} s; attempts per run: {', '.join(fmt(a, 0) for a in g['attempts'])}. "
        f"For simple_switch_13: started {fmt(med(r['attempt_started']))} s, took {fmt(med(r['attempt_seconds']))} s, "
        f"attempts {', '.join(fmt(a, 0) for a in r['attempts'])}. For plain NORMAL: started "
        f"{fmt(med(s['attempt_started']))} s, took {fmt(med(s['attempt_seconds']))} s.",
        "",
        f"Goldilocks on this layout: per-switch converge time median {with_runs(g['converge_med'], 1, 1000)} ms and "
        f"max {with_runs(g['converge_max'], 1, 1000)} ms. Packet-in to flow-mod p50 "
        f"{with_runs(g['learn_p50'], 2, 1000)} ms, p99 {with_runs(g['learn_p99'], 2, 1000)} ms. After the SIGKILL, the "
        f"restarted controller served REST again after {with_runs(g['restart'])} s, and every switch was resynced "
        f"{with_runs(g['resync'])} s after the kill. simple_switch_13 listened again after {with_runs(r['restart'])} s.",
        "",
    ]
    return out


def _references(ryu: dict, faucet: dict | None, quoted: dict) -> list[tuple[str, dict]]:
    """(name, {figure key: median}) of every reference Goldilocks is compared with in the headline."""
    refs = [("simple_switch_13, in-run", {"pingall": med(ryu["pingall"]), "ratio": med(ryu["ratio"]),
                                          "gap": med(ryu["gap"])})]
    if faucet:
        refs.append(("Faucet, in-run", {"pingall": med(faucet["pingall"]), "ratio": med(faucet["ratio"]),
                                        "gap": med(faucet["gap"])}))
    refs += [(f"{name.split()[-1] if name.startswith('Ryu') else name.split()[0]}, quoted", q) for name, q in quoted.items()]
    return refs


def _failures(who: str, series: dict) -> str:
    """Where each run's first attempt failed: which pair, and when that attempt gave up."""
    firsts = [f[0] if f else None for f in series["failures"]]
    if not any(firsts):
        return f"{who}: the first attempt was clean in every run."
    parts = [f"run {i}: {f[1]} to {f[2]}, given up {f[0]:.2f} s after start" if f else f"run {i}: clean"
             for i, f in enumerate(firsts, 1)]
    return f"First failed attempt of {who}: " + "; ".join(parts) + "."


def _versus(label: str, gold, refs: list[tuple[str, dict]], key: str, lower: bool, digits: int = 2) -> str:
    values = [ref[key] for _, ref in refs]
    if gold is None or any(v is None for v in values):
        verdict = DASH
    else:
        behind = [name for (name, _), v in zip(refs, values, strict=True) if not (gold < v if lower else gold > v)]
        verdict = "yes" if not behind else "no, not better than " + ", ".join(behind)
    cells = " | ".join(f"{fmt(v, digits)} | {fmt(ratio(gold, v))}" for v in values)
    return f"| {label} | {fmt(gold, digits)} | {cells} | {verdict} |"


def _looped(rows: list[dict]) -> list[str]:
    g = _headline_series(rows, "goldilocks_looped")
    return [
        "## Looped fabric: 2 spines, 3 leaves, 6 hypervisors, 12 VMs (11 switches)",
        "",
        "`Layout(2, 3, 2, 2)`: every pair of leaves is joined through two spines, so the fabric has loops.",
        "",
        *_figures_table(g),
        "",
        "- Ryu simple_switch_13 is **not run on loops**. It floods unknown destinations and broadcasts out of every "
        "port and has no loop prevention, so a looped fabric turns the first ARP into a broadcast storm.",
        "- OVS NORMAL without STP storms on loops for the same reason. The ratio's denominator is therefore the "
        "loop-free OVS NORMAL measurement from the same repetition. Its VM-to-VM path also crosses 5 bridges "
        "(hypervisor, leaf, spine, leaf, hypervisor), the same number as here.",
        f"- Goldilocks on this layout: per-switch converge median {with_runs(g['converge_med'], 1, 1000)} ms, max "
        f"{with_runs(g['converge_max'], 1, 1000)} ms; packet-in to flow-mod p50 {with_runs(g['learn_p50'], 2, 1000)} ms, "
        f"p99 {with_runs(g['learn_p99'], 2, 1000)} ms. The clean attempt started "
        f"{fmt(med(g['attempt_started']))} s after `net.start()`; attempts per run: "
        f"{', '.join(fmt(a, 0) for a in g['attempts'])}. Resynced {with_runs(g['resync'])} s after the SIGKILL.",
        f"- {_failures('Goldilocks', g)}",
        "",
    ]


def _late(rows: list[dict]) -> list[str]:
    runs = [r.get("goldilocks_late") or {} for r in rows]
    if not any(runs):
        return []
    exact = [get(r, "exact_after_last_connect") for r in runs]
    clean = [get(r, "pingall_after_last_connect") for r in runs]
    last = [get(r, "last_connect_after_start") for r in runs]
    out = [
        "## Late hypervisors on the looped fabric",
        "",
        "`Layout(2, 3, 2, 2)` again, but every hypervisor bridge gets its controller only 1 to 4 s after the fabric "
        "starts (a random delay per hypervisor, seeded by the repetition), as when a rack boots after its leaf. "
        "Until then it is in secure fail mode and forwards nothing, while its uplink interface already chatters "
        "(Mininet's defaults: IPv6 router solicitations and MLD reports from the switch-side veths). The clock "
        "starts when the last hypervisor is given its controller; pinging starts at that moment, and a watcher "
        "reads `GET /v1/topology` every 50 ms.",
        "",
        "| | exact topology after the last connect (s) | first 0%-loss pingall after the last connect (s) | "
        "last connect after `net.start()` (s) | attempts |",
        "|---|---|---|---|---|",
        f"| **Goldilocks** | {with_runs(exact)} | {with_runs(clean)} | {with_runs(last)} | "
        f"{', '.join(fmt(get(r, 'pingall.attempts'), 0) for r in runs)} |",
        "",
        "Exact means every built cable is a link and nothing else is, every VM is learned on the port its cable is "
        "plugged into, and no other host is known. "
        "Exactness needs the VMs to have sent a frame, so it follows the first pings. A frame a VM sends before its "
        "hypervisor holds flows is dropped by the switch (secure fail mode), and that VM is learned at its next "
        "frame: Linux retries an unanswered ARP after 1 s, which is what a run near 1 s shows.",
    ]
    for i, r in enumerate(runs, 1):
        if r.get("not_exact"):
            out.append(f"- Run {i} never became exact within 60 s; last difference: {'; '.join(r['not_exact'])}")
        if r.get("error"):
            out.append(f"- Run {i} failed: {r['error']}")
    return [*out, ""]


def _scaling(scaling: dict, skipped: list) -> list[str]:
    out = [
        "## Scaling: Goldilocks with a growing number of switches",
        "",
        "Layouts are `Layout(spines, leaves, hypervisors per leaf, VMs per hypervisor)`. Every layout with 2 or more "
        "spines has loops. Each cell is the median over the runs, with every run in brackets. Converge times are "
        "first taken per run (median and max over that run's switches), then the median over the runs is shown. "
        "Above 12 VMs, the pingall is the bounded sample described above, not all pairs. A run whose pingall never "
        "came clean within 60 s shows as `> 60` and counts as the slowest in the median. The switch ports keep "
        "Mininet's default IPv6 on, as users' topologies do, so every port sends router solicitations and MLD "
        "reports of its own while the fabric starts: on the largest layout that roughly doubles the median "
        "converge time against the same layout with IPv6 off on the switch ports (47 ms measured once, "
        "commit after 50b95ea), while the first clean pingall stays the same.",
        "",
        "| layout | switches | VMs | pings per attempt | converge median (ms) | converge max (ms) | first 0%-loss pingall (s) "
        "| attempts | packet-in to flow-mod p50 (ms) | p99 (ms) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    load = [
        "Controller load and topology trouble in the same runs: how often the controller recompiled and "
        "reconciled (`goldilocks_reconcile_seconds` count and total), its CPU time up to the end of the pingall "
        "(including start-up), and what its log says. *Link timeouts* counts `link ... timed out` lines. *Misplaced "
        "hosts kept* counts hosts learned where the built layout has none (on a spine or leaf, or on a hypervisor's "
        "uplink) that the controller never forgot; *guesses overturned* counts those it forgot again (the MAC of a "
        "switch port whose switch then connected, or a port that then proved to face a switch): with Mininet's "
        "defaults every switch port chatters IPv6 from its own MAC, so a few are expected while switches connect. "
        "*VMs misplaced or unknown* compares the controller's host table (`GET /v1/topology`) with the port each "
        "VM is cabled to.",
        "",
        "| layout | switches | recompiles | compile + reconcile total (s) | controller CPU (s) | links known after "
        "pingall | hosts known after pingall | VMs misplaced or unknown after pingall | link timeouts | misplaced hosts kept "
        "| guesses overturned | OpenFlow errors |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for entry in scaling.values():
        runs = entry["runs"]
        shape = ",".join(map(str, entry["shape"]))
        cmed = [med(c) if (c := r.get("converge")) else None for r in runs]
        cmax = [max(c) if (c := r.get("converge")) else None for r in runs]
        pairs = next((get(r, "pingall.pairs") for r in runs if get(r, "pingall.pairs")), None)
        how = "all pairs" if entry["vms"] <= 12 else "sample"
        out.append(
            f"| ({shape}) | {entry['switches']} | {entry['vms']} | {fmt(pairs, 0)} ({how}) | {with_runs(cmed, 1, 1000)} "
            f"| {with_runs(cmax, 1, 1000)} | {with_runs([pingall_seconds(r) for r in runs])} "
            f"| {with_runs([get(r, 'pingall.attempts') for r in runs], 0)} "
            f"| {with_runs([r.get('learning_p50') for r in runs], 2, 1000)} "
            f"| {with_runs([r.get('learning_p99') for r in runs], 2, 1000)} |"
        )
        load.append(
            f"| ({shape}) | {entry['switches']} | {with_runs([r.get('reconciles') for r in runs], 0)} "
            f"| {with_runs([r.get('reconcile_seconds') for r in runs], 1)} "
            f"| {with_runs([r.get('controller_cpu_seconds') for r in runs], 1)} "
            f"| {with_runs([get(r, 'health.links') for r in runs], 0)} of {entry.get('links', DASH)} "
            f"| {with_runs([get(r, 'health.hosts') for r in runs], 0)} of {entry['vms']} "
            f"| {with_runs([len(r['vms_misplaced']) if 'vms_misplaced' in r else None for r in runs], 0)} "
            f"| {with_runs([get(r, 'log_topology.link_timeouts') for r in runs], 0)} "
            f"| {with_runs([get(r, 'log_topology.misplaced_hosts') for r in runs], 0)} "
            f"| {with_runs([get(r, 'log_topology.guesses_overturned') for r in runs], 0)} "
            f"| {with_runs([r.get('switch_errors') for r in runs], 0)} |"
        )
    out += ["", *load, ""]
    if any(get(r, "log_topology.link_timeouts") for e in scaling.values() for r in e["runs"]):
        out += [
            "How to read link timeouts: the controller forgets a link when either direction has not seen a fresh "
            "probe for `LINK_TIMEOUT` (3.5 s, `topology/model.py`), while it probes every `--lldp-interval` (1 s). "
            "The ports of a forgotten link are held as *lost-link* until they go down, or until probes return. "
            "Every link or host change recompiles the desired tables for every switch (the recompiles column).",
            "",
        ]
    if skipped:
        out += ["Skipped to keep `make bench` within its time budget: "
                + ", ".join(f"{s['layout']} run {s['rep']}" for s in skipped) + ".", ""]
    return out


def _problems(results: dict) -> list[str]:
    """Everything a reader should look at: failed runs, unclean pingalls, lost pings, log trouble."""
    found = []
    runs = []
    for i, row in enumerate(results.get("headline", []), 1):
        for who, res in row.items():
            runs.append((f"headline run {i}, {who}", res))
    for key, entry in results.get("scaling", {}).items():
        for i, res in enumerate(entry["runs"], 1):
            runs.append((f"scaling {key}, run {i}", res))
    for name, res in runs:
        if "error" in res:
            found.append(f"- {name}: the run failed: `{res['error']}`")
            continue
        if get(res, "pingall.seconds") is None:
            last = (get(res, "pingall.failures") or [[None, "?", "?"]])[-1]
            found.append(f"- {name}: no clean pingall within 60 s ({get(res, 'pingall.attempts')} attempts; the last "
                         f"failed at {last[1]} to {last[2]})")
        health = res.get("health") or {}
        if health.get("links_built") is not None and (health.get("links") != health["links_built"]
                                                      or health.get("hosts") != health["vms_built"]):
            found.append(f"- {name}: after the pingall the controller knew {health.get('links')} of {health['links_built']} "
                         f"links and {health.get('hosts')} hosts for {health['vms_built']} VMs "
                         f"({health.get('switches_synced')} of {health.get('switches_connected')} switches synced)")
        if res.get("vms_misplaced"):
            sample = "; ".join(res["vms_misplaced"][:3])
            found.append(f"- {name}: after the pingall the controller placed {len(res['vms_misplaced'])} VMs wrongly or "
                         f"not at all, e.g. {sample}")
        if res.get("figures_error"):
            found.append(f"- {name}: the controller did not answer REST after the pingall: `{res['figures_error']}`")
        if get(res, "gap.replies") is not None and res["gap"]["replies"] < res["gap"]["sent"]:
            found.append(f"- {name}: {res['gap']['sent'] - res['gap']['replies']} of {res['gap']['sent']} pings lost "
                         "across the SIGKILL and restart" + _open_ended(res))
        if get(res, "iperf_mbps") == 0:
            found.append(f"- {name}: iperf3 failed (0 Mbit/s)")
        if res.get("switch_errors"):
            found.append(f"- {name}: {res['switch_errors']:.0f} OpenFlow error messages from switches")
        lp = res.get("log_problems") or {}
        if lp.get("count"):
            sample = "; ".join(f"`{line.strip()[:160]}`" for line in lp["lines"][:3])
            found.append(f"- {name}: {plural(lp['count'], 'error-like log line')}, e.g. {sample} (log: `{res.get('log')}`)")
        lt = res.get("log_topology") or {}
        if lt.get("link_timeouts"):
            sample = "; ".join(f"`{line}`" for line in lt["link_timeout_lines"][:3])
            found.append(f"- {name}: {plural(lt['link_timeouts'], 'link-timeout line')} ({sample}) (log: `{res.get('log')}`)")
        if lt.get("misplaced_hosts"):
            sample = "; ".join(f"`{line}`" for line in lt["misplaced_host_lines"][:3])
            found.append(f"- {name}: {plural(lt['misplaced_hosts'], 'host')} learned where none is attached, e.g. {sample}")
            if lt.get("vm_misplaced"):
                sample = "; ".join(f"`{line}`" for line in lt["vm_misplaced_lines"][:3])
                found.append(f"  - {lt['vm_misplaced']} of them: VMs learned on a fabric or uplink port, e.g. {sample}")
            if lt.get("switch_port_macs"):
                sample = "; ".join(f"`{line}`" for line in lt["switch_port_mac_lines"][:2])
                found.append(f"  - {lt['switch_port_macs']} of them: the MAC of a switch port in the root namespace "
                             f"(frames the kernel sent from that veth), e.g. {sample}")
    found += _encryption_problems(results.get("encryption") or {})
    found += _quarantine_problems(results.get("quarantine") or {})
    found += _peers_problems(results.get("peers") or {})
    if not found:
        return ["## Problems seen", "", "None: every run completed, and no controller log showed errors.", ""]
    return ["## Problems seen", "", "Generated from the runs above. The logs are kept in `bench/out/logs/` (not committed).",
            "", *found, ""]


def _policy_scale(rows: list[dict]) -> list[str]:
    lines = [
        "## Policy compile at data-centre scale (no switches)",
        "",
        "`bench/policy_scale.py`, one fresh process per size, one run each. The model: a leaf-spine of single-uplink",
        "hypervisors (10 per leaf, 2 spines), 20 VMs per hypervisor, each labelled with one of 5 tiers and one of 20",
        "tenants (10% also `sensitivity=pci`), and 200 rules within a random tenant from one tier to another on one",
        "service, allow or deny at random, default deny. *Compile* numbers the identities and builds every switch's",
        "desired table with a fresh compiler (`apps/compiler.py`): the controller's cold start. Each *change* is",
        "made to the live model from the steady state (every switch holds its table), then the controller's one",
        "compiler recompiles incrementally and the reconciler plans the flow-mods of the switches whose table",
        "changed: the time until the controller would send them (median of 5; the change is undone between",
        "runs). Peak memory is the process's maximum RSS (the model included). Run one size alone with",
        "`.venv/bin/python -m bench.policy_scale VMS HYPERVISORS RULES`.",
        "",
        "| VMs | hypervisors | switches | desired flows | compile (s) | peak RSS (MiB) "
        "| one hypervisor's flows, tables 0/1/2/3/4 (median hypervisor) |",
        "|---|---|---|---|---|---|---|",
    ]
    good = [row for row in rows if "error" not in row]
    for row in rows:
        if "error" in row:
            failure = row["error"][-120:].replace("\n", " ")
            lines.append(f"| {row['vms']} | {row['hypervisors']} | – | failed: {failure} | | | |")
            continue
        by_table = row.get("hypervisor_flows_by_table")
        tables = " / ".join(f"{n:,}" for n in by_table) + f" = {sum(by_table):,}" if by_table else "–"
        lines.append(
            f"| {row['vms']:,} | {row['hypervisors']} | {row['switches']} | {row['flows']:,} | "
            f"{row['compile_seconds']} | {row['peak_rss_mib']} | {tables} |"
        )
    kinds = ["label change", "new rule", "VM migration", "link failure"]
    kinds = [k for k in kinds if any(k in r.get("changes", {}) for r in good)]
    if kinds:
        lines += [
            "",
            "| VMs | "
            + " | ".join(f"{k}: s (flow-mods, switches)" for k in kinds)
            + " | packet-in, known host / new host (µs) |",
            "|---|" + "---|" * len(kinds) + "---|",
        ]
        for row in good:
            cells = []
            for kind in kinds:
                change = row.get("changes", {}).get(kind)
                cells.append(f"{change['seconds']} ({change['flow_mods']:,}, {change['switches']})" if change else "–")
            packet_in = f"{row.get('packet_in_known_host_us', '–')} / {row.get('packet_in_new_host_us', '–')}"
            lines.append(f"| {row['vms']:,} | " + " | ".join(cells) + f" | {packet_in} |")
    lines += [
        "",
        "- *Label change*: one VM to another tier. *New rule*: one allow rule appended. *VM migration*: one VM",
        "  learned on a new port of another hypervisor. *Link failure*: one spine-leaf link gone.",
        "- *Packet-in*: the learner's handling of an ARP from a host it knows, and from a new host, median of",
        "  20 batches of 100 (the controller's Python work per frame, without the OpenFlow parsing).",
        "",
    ]
    lines += _growth(good)
    return lines


def _growth(rows: list[dict]) -> list[str]:
    """The cost-against-size figure and the growth order of each figure (bench/plots.py)."""
    from bench.plots import orders

    fitted = orders(rows)
    if not fitted:
        return []
    sizes = sorted(r["vms"] for r in rows)
    lines = [
        "![cost against size](policy-scale.png)",
        "",
        f"Growth order: the exponent k of a least-squares fit figure ~ VMs^k over {len(sizes)} sizes "
        f"({sizes[0]:,} to {sizes[-1]:,} VMs; hypervisors grow with VMs, 20 per hypervisor; 200 rules throughout). "
        "0 is constant, 1 linear in the data centre.",
        "",
        "| figure | k |",
        "|---|---|",
    ]
    for name, order in fitted.items():
        lines.append(f"| {name} | {'–' if order is None else f'{order:.2f}'} |")
    return lines + [""]


def _encryption(enc: dict) -> list[str]:
    runs, st = enc.get("runs", []), enc.get("settings", {})
    if not runs:
        return []
    n = len(runs)

    def series(path: str) -> list:
        return [get(r, path) for r in runs]

    plain, encrypted = series("datacentre.plain.mbps"), series("datacentre.encrypted.mbps")
    raw, vxlan = series("raw.raw_wireguard.mbps"), series("raw.vxlan_over_wireguard.mbps")
    raw_vm_mss = series("raw.raw_wireguard_vm_mss.mbps")

    def over(base: list) -> list:
        return [ratio(e, b) for e, b in zip(encrypted, base, strict=True)]

    def per_rotation(key: str) -> list:
        return [None if (lost := get(r, f"datacentre.{key}.ping.lost")) is None else lost / r["datacentre"][key]["rotations"]
                for r in runs]  # fmt: skip

    def counts(key: str) -> str:
        """Lost of sent per run; when some were lost, how many followed each rotation (and came before the first)."""
        shown = []
        for r in runs:
            res = get(r, f"datacentre.{key}") or {}
            ping = res.get("ping") or {}
            if ping.get("sent") is None:
                shown.append(DASH)
                continue
            text = f"{ping['lost']} of {ping['sent']}"
            if ping["lost"] and res.get("lost_after_each") is not None:
                who = [w if isinstance(w, str) else f"#{i}" for i, w in enumerate(res.get("requests", []), 1)]
                after = ", ".join(f"{w} {n}" for w, n in zip(who, res["lost_after_each"], strict=False))
                text += f" (after each: {after}; before the first: {res.get('lost_before_first')})"
            shown.append(text)
        return "; ".join(shown)

    tunnel = series("datacentre.rule_to_tunnel_in_place_seconds")
    first = series("datacentre.rule_to_first_encrypted_packet_seconds")
    baseline = ", ".join(DASH if get(r, "datacentre.baseline.sent") is None
                         else f"{r['datacentre']['baseline']['lost']} of {r['datacentre']['baseline']['sent']}"
                         for r in runs)  # fmt: skip
    layout = ",".join(map(str, st.get("layout", [])))
    pps = round(1 / st["ping_interval"]) if st.get("ping_interval") else "?"
    psk_n, psk_dt = st.get("psk_rotations"), st.get("psk_interval")
    id_n, id_dt = st.get("identity_rotations"), st.get("identity_interval")
    distinct = ", ".join(fmt(get(r, "datacentre.psk.distinct_psks"), 0) for r in runs)
    completed = ", ".join(fmt(get(r, "datacentre.identity.completed"), 0) for r in runs)
    settled = ", ".join(fmt(get(r, "datacentre.identity.settled_after_last"), 2) for r in runs)
    return [
        "## Encryption: VXLAN over wireguard-go",
        "",
        "Run alone with `.venv/bin/python -m bench.run --only encryption` (`make bench` runs it too; add `--output` and "
        "`--json` to keep docs/benchmarks.md and bench/out/results.json as they are). "
        + (f"Each figure is the median of {n} repetitions, bold, with every run in brackets. " if n > 1
           else "Each figure comes from a single run. ")
        + f"Each repetition builds a fresh data centre, `Layout({layout})`: vm1 on hv1 and vm2 on hv2, 5 userspace "
        "bridges apart (hv1, leaf, spine, leaf, hv2), each hypervisor with a tunnel-endpoint host and a goldilocks-agent, "
        "and then a fresh raw test bed of two namespaces without OVS. "
        f"The whole section took {fmt(enc.get('wall_seconds'), 0)} s.",
        "",
        "| path | iperf3 TCP (Mbit/s) | encrypted / this path |",
        "|---|---|---|",
        f"| plain VM to VM, default allow (OVS only) | {with_runs(plain, 0)} | {with_runs(over(plain))} |",
        f"| **encrypted VM to VM**, `encrypt` rule (OVS + VXLAN + wireguard-go) | {with_runs(encrypted, 0)} | 1.00 |",
        f"| raw wireguard-go between two namespaces (wg MTU {st.get('raw_wg_mtu', '?')}) | {with_runs(raw, 0)} "
        f"| {with_runs(over(raw))} |",
        f"| raw wireguard-go, TCP MSS {st.get('vm_mss', '?')} (a 1500-MTU VM's segments) | {with_runs(raw_vm_mss, 0)} "
        f"| {with_runs(over(raw_vm_mss))} |",
        f"| VXLAN (MTU {st.get('raw_vxlan_mtu', '?')}) over wireguard-go between two namespaces, no OVS "
        f"| {with_runs(vxlan, 0)} | {with_runs(over(vxlan))} |",
        "",
        f"- **Throughput.** One TCP stream, `iperf3 -t {st.get('iperf_seconds', '?')} -J`, from vm1 to vm2: *plain* before "
        "any rule exists (default allow, in clear), *encrypted* after the rule `sensitivity=pci -> tier=db: encrypt` (vm1 "
        "labelled pci, vm2 db), when the flow crosses the fabric as WireGuard UDP (hv1's wg byte counters are checked "
        "to grow by at least the TCP bytes). The raw rows run between namespaces glb-a and glb-b, joined by a veth at MTU "
        f"{st.get('raw_underlay_mtu', '?')} with wireguard-go between them at the agent's wg MTU "
        f"({st.get('raw_wg_mtu', '?')}): iperf3 over the wg addresses with jumbo segments (the ceiling), again with "
        f"`-M {st.get('vm_mss', '?')}` (a 1500-MTU VM's segments), and over a VXLAN device at MTU "
        f"{st.get('raw_vxlan_mtu', '?')} on each side (the encrypted VM path without Open vSwitch). Ratios are taken per "
        "repetition, then the median.",
        "",
        "| from creating the `encrypt` rule to | seconds |",
        "|---|---|",
        f"| the tunnel in place (`GET /v1/explain` says delivered) | {with_runs(tunnel)} |",
        f"| the first encrypted packet on the wire | {with_runs(first)} |",
        "",
        "- **Rule to encryption.** While vm1 pings vm2 every 50 ms and hv1's port to its tunnel endpoint is captured, "
        "`POST /v1/policies` creates the rule (`mininet_scenarios/encryption_check.py`, `rule_to_encrypted_traffic`). "
        "*Tunnel in place* is when `GET /v1/explain` (polled every 20 ms) first says the flow is delivered through the "
        "tunnel; *first encrypted packet* is the capture time of the first WireGuard transport-data message on that port. "
        "No tunnel exists before the rule (each repetition has a fresh data centre), so both include making the tunnel "
        "pair on demand: its pre-shared key, both agents' peers and VXLAN ports, and the first WireGuard handshake.",
        "",
        f"| rotation under a {pps} pps encrypted ping | rotations per run | pings lost per rotation "
        "| lost of sent, each run | largest gap between replies (ms) | check |",
        "|---|---|---|---|---|---|",
        f"| pre-shared key, `POST /v1/keys/rotate`, {fmt(psk_dt, 0)} s apart | {psk_n} | {with_runs(per_rotation('psk'))} "
        f"| {counts('psk')} | {with_runs(series('datacentre.psk.ping.largest_gap_seconds'), 0, 1000)} "
        f"| distinct PSKs seen: {distinct} (of {psk_n + 1 if psk_n else '?'}) |",
        f"| identity (WireGuard key pair), `POST /v1/agents/{{hv}}/rotate-identity`, {fmt(id_dt, 0)} s apart, "
        f"alternating {' and '.join(st.get('identity_hypervisors', []))} | {id_n} | {with_runs(per_rotation('identity'))} "
        f"| {counts('identity')} | {with_runs(series('datacentre.identity.ping.largest_gap_seconds'), 0, 1000)} "
        f"| completed: {completed} (of {id_n}); the last {settled} s after the last request |",
        "",
        f"- **Loss per rotation.** vm1 pings vm2 at {pps} pps (`ping -D -i {st.get('ping_interval')}`, the encrypted "
        f"flow); the rotations are requested from {fmt(st.get('rotation_lead'), 0)} s in, and the pings go on "
        f"{fmt(st.get('psk_tail'), 0)} s after the last PSK rotation and {fmt(st.get('identity_tail'), 0)} s after the "
        "last identity rotation (longer than WireGuard's 5 s handshake retry). Per rotation is (sent - answered) / "
        "rotations; the counts after each rotation (by when each lost ping was sent) show which one they followed, and "
        f"the same pings with no rotation, for {fmt(st.get('baseline_seconds'), 0)} s just before, lost {baseline}. "
        "*Completed* is the controller's `identity_rotations` count; wireguard-go holds packets back while a handshake "
        "is pending and sends them late, so the largest gap between replies shows stalls that the lost count misses.",
        "",
    ]


def _encryption_problems(enc: dict) -> list[str]:
    found = []
    for i, run in enumerate(enc.get("runs", []), 1):
        for who, res in run.items():
            name = f"encryption run {i}, {who}"
            if res.get("error"):
                found.append(f"- {name}: the run failed: `{res['error']}`")
            for key in ("plain", "encrypted", "raw_wireguard", "raw_wireguard_vm_mss", "vxlan_over_wireguard"):
                if get(res, f"{key}.error"):
                    found.append(f"- {name}: iperf3 {key.replace('_', ' ')} failed: `{res[key]['error']}`")
            sent, wg_bytes = get(res, "encrypted.bytes"), get(res, "encrypted.wireguard_bytes")
            if sent is not None and wg_bytes is not None and wg_bytes < sent:
                found.append(f"- {name}: hv1's WireGuard carried {wg_bytes} bytes during an encrypted iperf3 of {sent} "
                             "bytes: not all of it was encrypted")
            psk = res.get("psk") or {}
            if psk.get("distinct_psks") is not None and psk["distinct_psks"] != psk["rotations"] + 1:
                found.append(f"- {name}: {psk['rotations']} PSK rotations gave {psk['distinct_psks'] - 1} new keys")
            ident = res.get("identity") or {}
            if ident.get("completed") is not None and ident["completed"] < ident["rotations"]:
                found.append(f"- {name}: {ident['completed']} of {ident['rotations']} identity rotations completed")
            elif ident and ident.get("settled_after_last") is None:
                found.append(f"- {name}: the identity rotations completed only after the pings stopped: their "
                             "losses may be undercounted")
            for key in ("psk", "identity"):
                ping = get(res, f"{key}.ping") or {}
                if ping.get("largest_gap_seconds") is not None and ping["largest_gap_seconds"] > 1:
                    gaps = "; ".join(f"{length:.2f} s from {at:.2f} s" for at, length in ping.get("gaps", []))
                    asked = ", ".join(f"{at:.2f} s" + (f" ({who})" if isinstance(who, str) else "")
                                      for at, who in zip(res[key].get("requested_at", []), res[key].get("requests", []),
                                                         strict=False))  # fmt: skip
                    runs = "; ".join(f"{n} sent {a:.2f}-{b:.2f} s" for a, b, n in ping.get("lost_runs", []))
                    found.append(f"- {name}: {key} rotations: replies stopped for more than 1 s ({gaps}; seconds after "
                                 f"the pings started); rotations requested at {asked}; lost pings: {runs or 'none'}")
                if ping.get("sent") is not None and ping["sent"] < get(res, f"{key}.pings_planned"):
                    found.append(f"- {name}: {key} rotations: ping sent {ping['sent']} of {res[key]['pings_planned']}")
    return found


def _quarantine(q: dict) -> list[str]:
    runs, st = q.get("runs", []), q.get("settings", {})
    if not runs:
        return []
    n = len(runs)
    latency = [[t for t in r.get("latency", []) if "after_returned" in t] for r in runs]
    moves = [r.get("migration", []) for r in runs]

    def over_all(key: str, trials_by_run: list[list[dict]]) -> list:
        return [t.get(key) for trials in trials_by_run for t in trials]

    def row(label: str, key: str, trials_by_run: list[list[dict]], scale: float = 1000, digits: int = 1) -> str:
        values = [v for v in over_all(key, trials_by_run) if v is not None]
        worst = max(values) if values else None
        each = "; ".join(f"{fmt(med([t.get(key) for t in trials]), digits, scale)} / "
                         f"{fmt(max((v for t in trials if (v := t.get(key)) is not None), default=None), digits, scale)}"
                         for trials in trials_by_run)  # fmt: skip
        return f"| {label} | {fmt(med(values), digits, scale)} | {fmt(worst, digits, scale)} | {each} | {len(values)} |"

    def answered(direction: str) -> str:
        shown = []
        for trials in moves:
            sent = sum(get(t, f"{direction}.sent") or 0 for t in trials)
            got = sum(get(t, f"{direction}.answered") or 0 for t in trials)
            shown.append(f"{got} of {sent}" if trials else DASH)
        return "; ".join(shown)

    stream = [r.get("stream") or {} for r in runs]
    interval_ms = 1000 * st.get("ping_interval", 0)
    target, pinger, watcher = st.get("target", "vm1"), st.get("pinger", "vm3"), st.get("watcher", "vm4")
    client, server = st.get("stream", ["vm2", "vm4"])
    released = ", ".join(fmt(r.get("released_after_moves"), 1, 1000) for r in runs)
    layout = ",".join(map(str, st.get("layout", [])))
    return [
        "## Quarantine: cutting a VM off, and following it when it moves",
        "",
        "Run alone with `.venv/bin/python -m bench.run --only quarantine` (`make bench` runs it too; add `--output` and "
        "`--json` to keep docs/benchmarks.md and bench/out/results.json as they are). "
        + (f"{n} repetitions; " if n > 1 else "A single repetition; ")
        + f"each builds a fresh data centre, `Layout({layout})`: vm1 and vm2 on hv1, vm3 and vm4 on hv2, 5 userspace "
        "bridges apart (hv1, leaf, spine, leaf, hv2), no tunnel endpoints, the four VMs in the inventory and no rule "
        "(default allow). The figures over all trials pool the trials of every repetition; the per-repetition column "
        f"shows each repetition's median / worst. The whole section took {fmt(q.get('wall_seconds'), 0)} s.",
        "",
        f"| `POST /v1/quarantine` of {target}, while {pinger} pings it every {fmt(interval_ms, 0)} ms (ms) "
        "| median, all trials | worst, all trials | each repetition: median / worst | trials |",
        "|---|---|---|---|---|",
        row("last echo reply after the call **returned**", "after_returned", latency),
        row("last echo reply after the call was **sent**", "after_sent", latency),
        row("the call itself (sent to returned)", "call_seconds", latency),
        row("`DELETE /v1/quarantine/{vm}` returned to the first reply again", "release_to_reply",
            [r.get("latency", []) for r in runs]),
        "",
        f"- **Quarantine latency.** {pinger} (on hv2) pings {target} (on hv1) with `ping -D -n -i "
        f"{st.get('ping_interval')}`; after {fmt(st.get('ping_lead'), 1)} s of replies the bench calls `POST "
        f"/v1/quarantine` and notes the time just before sending it and just after the answer (201) came back. The "
        f"figure is the `-D` timestamp of the last echo reply minus either time (one clock): negative means the drop "
        "entries were already in place on the hypervisors before the HTTP answer arrived, and is reported as is. A "
        f"reply needs a request that passed before the cut, so the figure is within one ping interval "
        f"({fmt(interval_ms, 0)} ms) plus a round trip of the moment the cut took effect.",
        f"- **Release between trials.** The pings go on {fmt(st.get('ping_tail'), 1)} s after the call returned, then "
        f"`DELETE` releases {target} and {pinger} pings it every {fmt(interval_ms, 0)} ms until the first reply "
        f"(at most {fmt(st.get('release_wait'), 0)} s) before the next trial; that wait is the last row. {pinger} "
        f"and {target} hold permanent neighbour entries for each other, so every echo request goes out addressed to "
        f"{target} and no ARP exchange decides when replies stop or resume.",
        "",
        f"| {target}, quarantined, moved to the other hypervisor (ms) | median, all trials | worst, all trials "
        "| each repetition: median / worst | trials |",
        "|---|---|---|---|---|",
        row(f"plugged in to `GET /v1/quarantine/{target}` showing the new hypervisor", "plugged_to_located", moves),
        "",
        "| pings answered during the moves (must be 0) | each repetition |",
        "|---|---|",
        f"| {watcher} to {target}, every {fmt(interval_ms, 0)} ms | {answered('to_target')} |",
        f"| {target} to {watcher} (its announce at the new place) | {answered('from_target')} |",
        "",
        f"- **Re-applying on migration.** {target} is quarantined once, then moved "
        f"{plural(st.get('migration_trials', 0), 'time')}, hv1 to hv2 and back, as `DataCentre.move_vm` "
        "does: its cable to the old hypervisor is unplugged and a new one plugged into the other (`ovs-vsctl add-port`). "
        "The isolation itself needs nothing new after a move (the drop entries match its MAC on every hypervisor), so "
        f"the figure is how long until the controller *shows* it there: from the moment the port was added to the first "
        f"`GET /v1/quarantine/{target}` (polled every {fmt(1000 * st.get('location_poll', 0), 0)} ms) whose `location.dpid` "
        f"is the new hypervisor's. Right after the plug, {target} sends `ping {st.get('announce', '')}` to {watcher}, "
        "standing in for the announce a hypervisor sends for a migrated VM: its ARP request is its first frame, dropped "
        "and copied to the controller, which learns the new place from it. The figure includes the "
        f"{fmt(st.get('edge_confirm_time'), 1)} s a newly plugged port stays *pending*: nothing is learned from it until "
        "it has been up that long with no LLDP from another switch (`EDGE_CONFIRM_TIME`, `topology/model.py`). A port "
        "the hypervisor declares as a VM's (OVSDB) skips that wait; the bench's Mininet ports are not declared.",
        f"- **Nothing answered meanwhile.** {watcher} (on hv2, with a permanent neighbour entry for {target}) pings "
        f"{target} every {fmt(interval_ms, 0)} ms from {fmt(st.get('migration_lead'), 1)} s before each move to "
        f"{fmt(st.get('migration_tail'), 1)} s after the controller showed the new place: after a move to hv2 from the "
        f"same hypervisor, after a move to hv1 across the fabric. After the last move, {target} is given a permanent "
        f"neighbour entry for {watcher} (its announce left it retrying ARP once a second, which would otherwise be "
        f"measured) and released: {watcher} reached it again after {released} ms.",
        "",
        f"- **Background stream.** Throughout the trials one TCP stream runs from {client} (hv1) to {server} (hv2), "
        f"`iperf3 -c -t 600 -i 1`, started {fmt(st.get('stream_alone'), 0)} s before the first trial and stopped after "
        "the last; the rates are the server's 1 s intervals (bytes received). Mbit/s over its life: "
        + ", ".join(fmt(s.get("mbps"), 0) for s in stream)
        + "; alone, before the first trial: " + ", ".join(fmt(s.get("alone_mbps"), 0) for s in stream)
        + "; during the trials: " + ", ".join(fmt(s.get("during_mbps"), 0) for s in stream)
        + "; slowest 1 s interval during the trials: " + ", ".join(fmt(s.get("slowest_interval_mbps"), 0) for s in stream)
        + " (per repetition). The pings, the REST calls and the controller's recompiles share the machine's CPUs with "
        "it, so the latencies above are measured under that load.",
        "",
    ]


def _quarantine_problems(q: dict) -> list[str]:
    found = []
    st = q.get("settings", {})
    kept = st.get("kept_answered", 0.25)
    target, watcher = st.get("target", "vm1"), st.get("watcher", "vm4")
    directions = {"to_target": f"from {watcher} to {target}", "from_target": f"from {target} to {watcher}"}
    for i, run in enumerate(q.get("runs", []), 1):
        name = f"quarantine run {i}"
        if run.get("error"):
            found.append(f"- {name}: the run failed: `{run['error']}`")
        for j, trial in enumerate(run.get("latency", []), 1):
            if trial.get("invalid"):
                found.append(f"- {name}, latency trial {j}: not counted, {trial['invalid']}")
            if trial.get("kept_answered"):
                found.append(f"- {name}, latency trial {j}: the cut did not hold within {kept:g} s: "
                             f"{trial['kept_answered']} (the figure is a lower bound)")
            if "release_to_reply" in trial and trial["release_to_reply"] is None:
                found.append(f"- {name}, latency trial {j}: after the release, the VM did not answer again within "
                             f"{st.get('release_wait', '?')} s")
        for j, trial in enumerate(run.get("migration", []), 1):
            where = f"{name}, move {j} ({trial.get('from')} to {trial.get('to')})"
            if trial.get("plugged_to_located") is None:
                found.append(f"- {where}: the controller never showed the VM on {trial.get('to')} within "
                             f"{st.get('location_timeout', '?')} s")
            for direction, pings in directions.items():
                if get(trial, f"{direction}.answered"):
                    found.append(f"- {where}: {trial[direction]['answered']} of {trial[direction]['sent']} pings {pings} "
                                 "were answered while it was quarantined")
                elif get(trial, f"{direction}.sent") is None:
                    found.append(f"- {where}: no ping summary for the pings {pings}")
        if run.get("migration") and run.get("released_after_moves") is None:
            found.append(f"- {name}: after the moves and the release, the VM did not answer again")
        stream = run.get("stream") or {}
        if run.get("stream") is not None and stream.get("mbps") is None:
            found.append(f"- {name}: the background iperf3 stream failed: `{stream.get('error')}`")
        lp = run.get("log_problems") or {}
        if lp.get("count"):
            sample = "; ".join(f"`{line.strip()[:160]}`" for line in lp["lines"][:3])
            found.append(f"- {name}: {plural(lp['count'], 'error-like log line')}, e.g. {sample} (log: `{run.get('log')}`)")
    return found


def _converge(rows: list[dict]) -> list[str]:
    lines = [
        "## Cold converge of emulated switches",
        "",
        "`bench/converge.py`, one fresh controller and interpreter per size. `bench/ofswitch.py` emulates OpenFlow 1.3",
        "switches on one event loop (in the spirit of cbench): each answers the controller's connect-time questions,",
        "keeps the flows it is sent (so audits and read-backs see real tables) and carries LLDP probes to the switch",
        "it is cabled to. N hypervisors with 20 VM ports and an uplink each, a leaf per 20 hypervisors, two spines,",
        "all connecting at once; each VM sends its first frame (an ARP request) a second after its hypervisor got its",
        "first flows, and again every 2 s until the controller knows every VM: a table miss until its hypervisor",
        "holds the entry admitting it, then the copy of a request no responder answered (it asks for a gateway",
        "nobody holds), so 10,000 packet-ins a second at 1,000 hypervisors for as long as it takes. *Converged*:",
        "the largest `converge_seconds` in `/v1/topology` (connect to the first reconcile confirmed by a",
        "barrier). *Settled*: the last flow-mod, from the moment the connections opened, once `/metrics` shows",
        "every switch, link and VM and no compile due (`goldilocks_compile_pending`), the emulated switches hold",
        "every flow the controller wants (`goldilocks_flows_desired`), and no flow-mod came for 3 s. Controller CPU",
        "and peak memory come from its `/proc` entry; the emulator's CPU is the benchmark process's (every switch",
        "shares it, where a data centre gives each hypervisor its own). Run one size alone with",
        "`.venv/bin/python -m bench.converge HYPERVISORS`.",
        "",
        "| hypervisors | switches | VMs | every switch converged (s) | settled (s) | flow-mods | flow-mods/s "
        "| controller CPU (s) | emulator CPU (s) | peak RSS (MiB) | links timed out on the way |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        if "error" in row:
            failure = (row["error"].strip().splitlines() or ["?"])[-1][-300:]
            lines.append(f"| {row['hypervisors']} | failed: {failure} | | | | | | | | | |")
            continue
        lines.append(
            f"| {row['hypervisors']} | {row['switches']} | {row['vms']:,} | {row['all_converged_seconds']} | "
            f"{row['settled_seconds']} | {row['flow_mods']:,} | {row['flow_mods_per_second']:,} | "
            f"{row['controller_cpu_seconds']} | {row.get('emulator_cpu_seconds', '–')} | {row['controller_peak_rss_mib']} | "
            f"{row.get('links_timed_out', '–')} |"
        )
    lines += [
        "",
        "Each VM learned is compiled incrementally: the switches whose tables it changes get its entries",
        "(its hypervisor's own entries, routes on the switches that hold one for it, the responder and classify",
        "groups of the hypervisors whose VMs' rules name it), and the others are not looked at. With no inventory",
        "every VM is unmanaged and the default allows; a hypervisor answers ARP only for the addresses its VMs",
        "asked for (none here: they ask for a gateway that does not exist). A switch holds no route toward its",
        "parent on the flooding tree, so a hypervisor holds O(its VMs) entries, a leaf O(its hypervisors' VMs),",
        "and only the spines and the tree's root O(VMs): about 410,000 flow-mods at 1,000 hypervisors (1.38 M when",
        "every leaf routed every VM), which is the size of the tables: no entry is sent twice. Emulated switches",
        "reconnect as Open vSwitch does (`reconnects`).",
        "",
        "Packet-ins wait in the controller's intake (docs/architecture.md, \"Protecting the controller\"): probes",
        "first, a VM's retries merged while one waits, each switch bounded. Before it, at 1,000 hypervisors the",
        "packet-ins queued in arrival order behind each other, in Ryu's queue and in the kernel buffers of 1,052",
        "connections; probes arrived tens of seconds late, about 200 hypervisor uplinks were taken for VM ports",
        "for a minute, and runs settled in 95-195 s. Now every link is known 3-4 s after the connections open",
        "and none times out. The edge ports are confirmed about a second later, and every VM is learned within a",
        "second of that: frames held on a port while it proved itself are handled at its confirmation, so their",
        "hosts join the compile it starts. One compile of all 20,000 VMs follows, with its 409,557 flow-mods:",
        "about 2 s of pure compile and 2 s of planning, encoding and sending, while the same CPU also serves",
        "the switches' connections and the storm of ARP copies. (Held frames used to be handled after that",
        "compile's flows were in place; most VMs were then learned a compile later, and runs took three or",
        "four compiles and 16-18 s. Python's garbage collector then walked the growing tables some fifteen",
        "times, 6.4 s of the controller's 15 s of CPU, until the controller froze them: controller/heap.py.)",
        "The probes refused as stale are those that waited out the compile.",
        "The connections themselves no longer take 20 s: Ryu listened with a backlog of 50, and the kernel",
        "dropped the other connection attempts, which retried after TCP's back-off.",
        "",
    ]
    return lines


def _operator_costs(rest: dict) -> list[str]:
    """The operator's tools at the concurrent run's full size (bench/rest_load.py operator_costs)."""
    run = next((r for r in rest.get("runs", []) if r.get("operator")), None)
    if run is None:
        return []
    o = run["operator"]
    base, loaded = o.get("health_without_views_ms", {}), o.get("health_with_views_ms", {})
    return [
        "",
        f"**The operator's tools at {run['vms']:,} VMs**, after the {run['clients']}-client run, the hypervisors still churning"
        " (medians):",
        "",
        "| what | time (ms) | size |",
        "|---|---|---|",
        f"| `GET /metrics` (a Prometheus scrape) | {fmt(o.get('metrics_scrape_ms'))} | {o.get('metrics_bytes', 0):,} bytes |",
        f"| `GET /v1/fabric` (the web view's document) | {fmt(o.get('fabric_get_ms'))} | {o.get('fabric_bytes', 0):,} bytes |",
        f"| `GET /v1/fabric` with `If-None-Match` (a poll, nothing changed) | {fmt(o.get('fabric_304_ms'))} "
        f"| {o.get('fabric_304s')} of 10 answered 304 (the others: the churn had changed the fabric) |",
        f"| `goldilocks status` (the CLI, process start to exit) | {fmt(o.get('cli_status_ms'))} | |",
        "",
        f"`GET /v1/health` p50 / p99 with no web view open: {base.get('p50')} / {base.get('p99')} ms; with {o.get('views')}"
        f" views polling `/v1/fabric` every 0.5 s: {loaded.get('p50')} / {loaded.get('p99')} ms (p50 ratio"
        f" {fmt(o.get('health_p50_ratio'))}, both measured in this run, 10 s each); {o.get('errors')} errors.",
    ]


def _rest(rest: dict) -> list[str]:
    lines = [
        "## REST writes under switch churn",
        "",
        f"`bench/rest_load.py`: the real controller process and {rest.get('hypervisors', '?')} emulated hypervisors",
        "(`bench/ofswitch.py`, two leaves, two spines) of which one disconnects or reconnects every",
        f"{rest.get('churn_period_seconds', '?')} s, a quarter of them down at any time: handshakes, table read-backs,",
        f"reconciles and compiles all along. VMs are created one by one with `PUT /v1/vms/{{name}}` up to {rest.get('vms', 0):,}",
        "(each its own MAC and address, one of 50 label sets), by one client (each request after the last answer),",
        "then by several clients at once, a fresh controller each. Writes/s at N VMs: the writes are cut into",
        f"windows of {rest.get('window', '?')} answers and the median window rate of the last 1,000 writes before N is shown.",
        "Latencies are request sent to answer read; `GET /v1/health` is asked every 0.1 s by another client",
        "meanwhile. Every write must answer 201 (errors: any other answer, or none). Run it alone with",
        "`.venv/bin/python -m bench.rest_load` (or `.venv/bin/python -m bench.run --only rest`).",
        "",
    ]
    if "error" in rest:
        failure = (rest["error"].strip().splitlines() or ["?"])[-1][-300:]
        return [*lines, f"Failed: {failure}", ""]
    lines += [
        "| clients | writes/s at 1,000 VMs | at 10,000 | at 20,000 | write p50 / p99 (ms) | write p99 near 20,000 (ms) "
        "| health p50 / p99 (ms) | errors | switches connected / disconnected | controller CPU (s) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run in rest.get("runs", []):
        at = run.get("at", {})

        def rate(mark: str, at=at) -> str:
            value = get(at, f"{mark}.writes_per_second")
            return DASH if value is None else f"{value:,}"

        write, health = run.get("write_latency_ms", {}), run.get("health_latency_ms", {})
        lines.append(
            f"| {run['clients']} | {rate('1000')} | {rate('10000')} | {rate('20000')} | {write.get('p50')} / {write.get('p99')} "
            f"| {fmt(get(at, '20000.write_latency_ms.p99'))} | {health.get('p50')} / {health.get('p99')} "
            f"| {run['errors']} | {run['switch_connects']} / {run['switch_disconnects']} | {run['controller_cpu_seconds']} |"
        )
    lines += _operator_costs(rest)
    lines += [
        "",
        "A write costs what it changes: the inventory is a persistent map (`apps/persistent_map.py`) with its",
        "MAC and address owners, so a new VM is checked against the owners of its own addresses, the new",
        "version shares everything else with the old, and the store, the learner, identity numbering and the",
        "compiler find the VM that changed by skipping what the two versions share. Before (commit 90d54e3,",
        "measured the same way on this machine) each write re-checked, re-indexed and re-scanned every VM, and",
        "held the one event loop that long: one client made 941 writes/s at 1,000 VMs, 82 at 10,000 and 22 at",
        "20,000 (a write's p99 142 ms near 20,000, the health check's p99 593 ms); four clients 1,145, 111 and 43.",
        "",
    ]
    return lines


PEER_NAMES = {"goldilocks": "Goldilocks", "simple_switch_13": "simple_switch_13", "faucet": "Faucet"}
PEERS_COMMAND = ".venv/bin/python -m bench.run --only peers"


def _peers(peers: dict, reps: int) -> list[str]:
    rows = peers.get("runs", [])
    g, r, f, s = (_headline_series(rows, who) for who in ("goldilocks", "ryu", "faucet", "standalone"))
    gl, fl = _headline_series(rows, "goldilocks_looped"), _headline_series(rows, "faucet_looped")
    reused = any(row.get("ryu", {}).get("from_headline") for row in rows)
    stack = [get(row.get("faucet_looped"), "stack") or {} for row in rows]
    back = [get(row.get("faucet_looped"), "gap.back_after_kill") for row in rows]
    configs = [get(row.get("faucet"), "config") for row in rows] + [get(row.get("faucet_looped"), "config") for row in rows]

    def line(name: str, x: dict, baseline: bool = False) -> str:
        open_ended = " (at least: no reply came back after the kill" + (")" if len(x["gap_open"]) == 1 else
                                                                          " in some runs)")
        return (f"| {name} | {with_runs(x['pingall'])} | {with_runs(x['mbps'], 0)} | "
                + ("1.00 (by definition) | – | – |" if baseline else
                   f"{with_runs(x['ratio'])} | {with_runs(x['gap'], 3)}{open_ended if any(x['gap_open']) else ''} "
                   f"| {with_runs(x['replies'], 0)} |"))

    def versus(label: str, key: str, peer: dict, lower: bool, digits: int = 2, gold: dict = g) -> str:
        a, b = med(gold[key]), med(peer[key])
        better = DASH if a is None or b is None or NEVER in (a, b) else ("yes" if (a < b if lower else a > b) else "no")
        return f"| {label} | {fmt(a, digits)} | {fmt(b, digits)} | {fmt(ratio(a, b))} | {better} |"

    header = ["| | first 0%-loss pingall (s) | iperf3 (Mbit/s) | iperf3 ratio vs OVS NORMAL | ping gap across SIGKILL "
              "+ restart (s) | replies of 160 |", "|---|---|---|---|---|---|"]
    out = [
        "## Peers: Goldilocks, Ryu simple_switch_13 and Faucet, measured in the same run",
        "",
        f"Everything in this section: `{PEERS_COMMAND}` (add `--reps 1` for a quick look). "
        + ("Each figure is the median of the repetitions, bold, with every run in brackets. " if reps > 1 else "")
        + "Faucet runs from its own virtualenv, `.venv-faucet` (`make install` puts `faucet==1.10.12` there), on "
        "os-ken, with a faucet.yaml generated for each layout by `mininet_scenarios/faucet_config.py` (the same dpids "
        "and port numbers Mininet builds, checked against the built network in every run; each run's file is kept: "
        + ", ".join(f"`{c}`" for c in configs if c) + "). "
        + ("OVS NORMAL, simple_switch_13 and Goldilocks are the headline section's runs of the same repetition. "
           if reused else ""),
        "",
        "### Loop-free: `Layout(1, 3, 2, 2)`, 10 switches, 12 VMs",
        "",
        "Faucet's configuration: one VLAN, every port of every switch an untagged member (each switch an "
        "independent learning switch; on a tree that floods without loops). The figures are measured as in the "
        "headline section.",
        "",
        *header,
        line("**Goldilocks**", g),
        line("Ryu simple_switch_13", r),
        line(f"Faucet {FAUCET_VERSION}", f),
        line("OVS NORMAL, no controller", s, baseline=True),
        "",
        "| figure (medians) | Goldilocks | peer | Goldilocks / peer | Goldilocks better? |",
        "|---|---|---|---|---|",
        versus("pingall (s) vs simple_switch_13, lower is better", "pingall", r, True),
        versus("pingall (s) vs Faucet, lower is better", "pingall", f, True),
        versus("iperf3 ratio vs simple_switch_13, higher is better", "ratio", r, False),
        versus("iperf3 ratio vs Faucet, higher is better", "ratio", f, False),
        versus("ping gap (s) vs simple_switch_13, lower is better", "gap", r, True, 3),
        versus("ping gap (s) vs Faucet, lower is better", "gap", f, True, 3),
        "",
        f"{_failures('Faucet', f)} Faucet listened again {with_runs(f['restart'])} s after the SIGKILL.",
        "",
        "### Looped: `Layout(2, 3, 2, 2)`, 11 switches, 12 VMs",
        "",
        "What Faucet needs here: a **stacking** configuration. With the flat one above nothing breaks the loops "
        "(Faucet, like simple_switch_13 and OVS NORMAL without STP, floods out of every port), so the first "
        "broadcast circles the fabric forever; that is not run here, as a storm would load the machine others "
        "share. The generated stack: every inter-switch port is a stack port naming the switch and port at its "
        "other end, `sp1` has stack priority 1 (the root) and `sp2` priority 2 (the next root), and the VMs' "
        "ports stay untagged VLAN members. Faucet then floods along its own tree toward the root. Its stack ports "
        "come up only once its LLDP has crossed each link both ways (at its defaults), after every cold start, "
        "its restart too; until then it logs `no path available to root` and floods nothing, so even two VMs "
        "of one hypervisor cannot resolve each other.",
        "",
        *header,
        line("**Goldilocks**", gl),
        line(f"Faucet {FAUCET_VERSION}, stacked", fl),
        "",
        "| figure (medians) | Goldilocks | Faucet, stacked | Goldilocks / Faucet | Goldilocks better? |",
        "|---|---|---|---|---|",
        versus("pingall (s), lower is better", "pingall", fl, True, gold=gl),
        versus("iperf3 ratio vs OVS NORMAL (loop-free), higher is better", "ratio", fl, False, gold=gl),
        versus("ping gap across SIGKILL + restart (s), lower is better", "gap", fl, True, 3, gold=gl),
        "",
        f"{_failures('stacked Faucet', fl)} "
        + (f"Where no reply came back within the ping run, a ping crossed again "
           f"{', '.join(fmt(b) for b in back)} s after the kill (runs in order). " if any(b is not None for b in back)
           else "")
        + "Stack ports by state after the pingall: "
        + "; ".join(f"run {i}: " + (", ".join(f"{n} {k}" for k, n in st.get("ports_by_state", {}).items()) or DASH)
                    + (f" (root {', '.join(st['root'])})" if st.get("root") else "") for i, st in enumerate(stack, 1))
        + ".",
        "",
    ]
    return out + _packet_in(peers)


def _packet_in(peers: dict) -> list[str]:
    ladders = peers.get("packet_in") or {}
    st = peers.get("packet_in_settings") or {}
    if not ladders:
        return []
    rates = sorted({step["offered_per_second"] for runs in ladders.values() for run in runs for step in run})

    def steps(name: str, rate: float) -> list[dict]:
        return [step for run in ladders.get(name, []) for step in run if step["offered_per_second"] == rate]

    def series(name: str, rate: float, key: str) -> list:
        return [step.get(key) for step in steps(name, rate)]

    def per_host(name: str, rate: float, key: str) -> list:
        return [ratio(step.get(key), step.get("hosts")) for step in steps(name, rate)]

    out = [
        "### Packet-in handling under one generator",
        "",
        f"`bench/peers.py`: {st.get('switches')} emulated OpenFlow 1.3 switches (`bench/ofswitch.py`, no Mininet) with "
        f"{st.get('ports')} ports each and no cables, the same for all three (Faucet's faucet.yaml is generated for "
        "those dpids and ports, with the VLAN's `max_hosts` raised from 256 to 4,096: Faucet learns no more hosts per "
        "switch otherwise). Port 1 of each switch has a gateway host, learned in a warm-up; then new hosts, each a "
        "new MAC on one of the other ports in turn, send one IPv4/UDP datagram to their gateway, at the offered "
        f"rate for {st.get('step_seconds')} s ({st.get('saturation_seconds')} s at saturation). Each frame reaches "
        "the controller as the switch running that controller's pipeline would send it up. The **answer** is the "
        "first flow-mod that adds an entry matching exactly that host's MAC as `eth_src` on its `in_port`, the "
        "entry that admits it: Goldilocks' table-0 (ingress) `in_port, eth_src` entry; simple_switch_13's learning "
        "flow, table 0 `in_port, eth_src, eth_dst`; Faucet's eth_src-table (table 1) `in_port, vlan_vid, eth_src` "
        "entry. Latency: from the packet-in written to the controller's socket to that flow-mod read from it. A "
        f"host not answered within {st.get('retry')} s sends again (at most {st.get('tries')} frames), as a real "
        "host retries; its latency still counts from its first frame. Answered per second: hosts answered divided "
        "by the time from the first frame to the last answer. Flow-mods per host: every flow-mod the controller sent "
        "during the step, divided by the new hosts. Every step starts a fresh controller and fresh "
        f"switches. One step alone: `.venv/bin/python -m bench.peers packet-in CONTROLLER --rate R`; a controller's "
        "whole ladder: `.venv/bin/python -m bench.peers packet-in CONTROLLER`.",
        "",
        "| offered new hosts/s | controller | answered/s | p50 (ms) | p90 (ms) | p99 (ms) | answered of hosts | frames "
        "sent again | flow-mods per host | controller CPU (s) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for rate in rates:
        label = f"{rate:,.0f}" + (" (saturation)" if rate == st.get("saturation") else "")
        for name in PEER_NAMES:
            if not steps(name, rate):
                continue
            failed = [step["error"] for step in steps(name, rate) if "error" in step]
            answered = [f"{a}/{h}" for a, h in zip(series(name, rate, "answered"), series(name, rate, "hosts"),
                                                    strict=True) if a is not None]
            out.append(
                f"| {label} | {PEER_NAMES[name]} | {with_runs(series(name, rate, 'answered_per_second'), 0)} "
                f"| {with_runs(series(name, rate, 'p50'), 1, 1000)} | {with_runs(series(name, rate, 'p90'), 1, 1000)} "
                f"| {with_runs(series(name, rate, 'p99'), 1, 1000)} | {', '.join(answered) or DASH} "
                f"| {', '.join(str(v) for v in series(name, rate, 'retries') if v is not None) or DASH} "
                f"| {with_runs(per_host(name, rate, 'flow_mods'), 1)} "
                f"| {with_runs(series(name, rate, 'controller_cpu_seconds'), 2)} |"
                + (f" failed: `{failed[0][:120]}`" if failed else "")
            )
    out += [
        "",
        "Goldilocks against each peer, same rate, medians (answered/s: higher is better; latency: lower is better):",
        "",
        "| offered new hosts/s | peer | answered/s, Goldilocks / peer | p50, Goldilocks / peer | p99, Goldilocks / peer |",
        "|---|---|---|---|---|",
    ]
    for rate in rates:
        for name in ("simple_switch_13", "faucet"):
            cells = [fmt(ratio(med(series("goldilocks", rate, key)), med(series(name, rate, key))))
                     for key in ("answered_per_second", "p50", "p99")]
            out.append(f"| {rate:,.0f} | {PEER_NAMES[name]} | " + " | ".join(cells) + " |")
    out.append("")
    return out


def _open_ended(res: dict) -> str:
    if not get(res, "gap.open_ended"):
        return ""
    back = get(res, "gap.back_after_kill")
    return (f"; no reply came back for the rest of the ping run, so the gap ({res['gap']['largest_gap']:.2f} s, to "
            "the last request) is a lower bound; "
            + (f"a ping crossed again {back:.2f} s after the kill" if back is not None else
               "no ping crossed within 30 s after the run"))


def _peers_problems(peers: dict) -> list[str]:
    found = []
    for i, row in enumerate(peers.get("runs", []), 1):
        for who, res in row.items():
            if res.get("from_headline"):
                continue  # listed with the headline's runs
            name = f"peers run {i}, {who}"
            if "error" in res:
                found.append(f"- {name}: the run failed: `{res['error']}`")
                continue
            if get(res, "pingall.seconds") is None:
                last = (get(res, "pingall.failures") or [[None, "?", "?"]])[-1]
                found.append(f"- {name}: no clean pingall within 60 s ({get(res, 'pingall.attempts')} attempts; the "
                             f"last failed at {last[1]} to {last[2]})")
            if get(res, "gap.replies") is not None and res["gap"]["replies"] < res["gap"]["sent"]:
                found.append(f"- {name}: {res['gap']['sent'] - res['gap']['replies']} of {res['gap']['sent']} pings "
                             "lost across the SIGKILL and restart" + _open_ended(res))
            lp = res.get("log_problems") or {}
            if lp.get("count"):
                sample = "; ".join(f"`{line.strip()[:160]}`" for line in lp["lines"][:3])
                found.append(f"- {name}: {plural(lp['count'], 'error-like log line')}, e.g. {sample} "
                             f"(log: `{res.get('log')}`)")
    for name, runs in (peers.get("packet_in") or {}).items():
        for i, run in enumerate(runs, 1):
            for step in run:
                where = f"- packet-in {name}, run {i}, {step['offered_per_second']:,.0f}/s"
                if "error" in step:
                    found.append(f"{where}: the step failed: `{step['error'][:200]}`")
                elif step.get("unanswered"):
                    found.append(f"{where}: {step['unanswered']} of {step['hosts']} new hosts never answered")
                elif step.get("switches_disconnected"):
                    found.append(f"{where}: {step['switches_disconnected']} emulated switches lost their connection")
    return found


def render(results: dict, args) -> str:
    rows = results.get("headline", [])
    lines = [
        "# Benchmarks",
        "",
        "Generated by `make bench` (`bench/run.py`); do not edit by hand. Raw results: `bench/out/results.json` "
        "(not committed).",
        "",
        *_machine(results.get("machine", {}), results.get("total_seconds")),
        "",
    ]
    if rows or results.get("scaling"):
        lines += _explanations(len(rows) or args.reps)
    peers = results.get("peers") or {}
    faucet = _headline_series(peers["runs"], "faucet") if peers.get("runs") else None
    if rows:
        lines += _headline(rows, len(rows), faucet) + _looped(rows) + _late(rows)
    if results.get("scaling"):
        lines += _scaling(results["scaling"], results.get("skipped", []))
    if results.get("encryption"):
        lines += _encryption(results["encryption"])
    if results.get("quarantine"):
        lines += _quarantine(results["quarantine"])
    if results.get("policy_scale"):
        lines += _policy_scale(results["policy_scale"])
    if results.get("converge"):
        lines += _converge(results["converge"])
    if results.get("rest"):
        lines += _rest(results["rest"])
    if peers:
        lines += _peers(peers, len(peers.get("runs", [])) or args.reps)
    lines += _problems(results)
    return "\n".join(lines).rstrip() + "\n"
