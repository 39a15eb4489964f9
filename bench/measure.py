"""The measurements: first clean pingall, iperf3, ping gap across a controller SIGKILL, controller figures.

Every loop here is bounded in count and in time, and all traffic stays inside Mininet hosts."""

from __future__ import annotations

import itertools
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from mininet_scenarios.harness import REPO, ManagedProcess, free_port, rest_get

PINGALL_BUDGET = 60.0  # seconds from net.start() to give up on a clean pingall
ALL_PAIRS_MAX_VMS = 12  # above this, each VM pings a sample of SAMPLE_PEERS others
SAMPLE_PEERS = 3


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- which pairs to ping ------------------------------------------------------------------
def ping_pairs(vms: list[str]) -> tuple[list[tuple[str, str]], str]:
    """Every ordered pair for small layouts; for big ones each VM to its next, its opposite and its
    previous VM (by number), which always includes VMs behind other leaves. Returns (pairs, description)."""
    n = len(vms)
    if n <= ALL_PAIRS_MAX_VMS:
        return [(a, b) for a in vms for b in vms if a != b], f"all {n * (n - 1)} ordered pairs"
    pairs = []
    for i, src in enumerate(vms):
        seen = set()
        for offset in (1, n // 2, n - 1):
            dst = vms[(i + offset) % n]
            if dst != src and dst not in seen:
                seen.add(dst)
                pairs.append((src, dst))
    return pairs, f"sample of {len(pairs)} pairs (each of {n} VMs to {SAMPLE_PEERS} others)"


# -- time to the first pingall with 0% loss --------------------------------------------------
@dataclass
class PingallResult:
    seconds: float | None  # net.start() to the end of the first attempt in which every pair answered
    attempt_started: float | None  # net.start() to the start of that attempt
    attempt_seconds: float | None  # how long that clean attempt took
    attempts: int
    pairs: int
    failures: list = field(default_factory=list)  # first and last 3 failed attempts: (seconds after start, src, dst)


def _attempt(dc, pairs: list[tuple[str, str]], deadline: float) -> tuple[str, str] | None:
    """Ping the pairs in order, `ping -c1 -W1` each; stop at the first failure. One shell loop per
    source VM keeps the per-ping overhead to a fork, and the pings stay strictly sequential."""
    by_ip = {ip: name for name, (_, ip, _) in dc.layout.vms.items()}
    for src, group in itertools.groupby(pairs, key=lambda p: p[0]):
        if time.monotonic() >= deadline:
            return (src, "(time budget)")
        ips = " ".join(dc.layout.vms[dst][1] for _, dst in group)
        out = dc.host(src).cmd(
            f"f=0; for ip in {ips}; do ping -c1 -W1 -n -q $ip >/dev/null 2>&1 || {{ f=$ip; break; }}; done; echo PINGRC=$f"
        )
        match = re.search(r"PINGRC=(\S+)", out)
        if not match or match.group(1) != "0":
            return (src, by_ip.get(match.group(1), "?") if match else "?")
    return None


def first_clean_pingall(dc, pairs: list[tuple[str, str]], budget: float = PINGALL_BUDGET) -> PingallResult:
    """Attempt after attempt from right after start until one has every pair answering, at most `budget`
    seconds after net.start() (dc.net_start_at)."""
    t0 = dc.net_start_at
    deadline = t0 + budget
    attempts = 0
    failures = []
    while time.monotonic() < deadline and attempts < 1000:
        attempts += 1
        began = time.monotonic()
        failed = _attempt(dc, pairs, deadline)
        ended = time.monotonic()
        if failed is None:
            return PingallResult(ended - t0, began - t0, ended - began, attempts, len(pairs), failures)
        failures.append((round(ended - t0, 3), *failed))
        if len(failures) > 6:
            del failures[3]  # keep the first three and the last three
    return PingallResult(None, None, None, attempts, len(pairs), failures)


# -- ping gap across a controller SIGKILL and restart ------------------------------------------
@dataclass
class GapResult:
    largest_gap: float | None  # seconds between consecutive echo replies
    replies: int
    sent: int
    restart_seconds: float  # SIGKILL to the restarted controller listening again
    resync_seconds: float | None = None  # SIGKILL to every switch synced again (Goldilocks only)
    replies_after_kill: int | None = None
    # No reply came back for the rest of the ping run: largest_gap then runs to the scheduled last
    # echo request, so it is a lower bound (the path may never have come back).
    open_ended: bool = False


def reply_times(ping_output: str) -> list[float]:
    return [float(m.group(1)) for m in re.finditer(r"^\[(\d+\.\d+)\] \d+ bytes from", ping_output, re.M)]


def ping_gap_across_restart(
    dc, src: str, dst: str, kill: Callable[[], None], restart: Callable[[], None], after_restart=None, count: int = 160
) -> GapResult:
    """`ping -D -i 0.05 -c count` from src to dst; SIGKILL the controller 1.5 s in and start it again
    at once; the largest time between two consecutive replies, or, when the replies stopped for good,
    from the last one to the scheduled last request (open_ended: a lower bound)."""
    interval = 0.05
    started_wall = time.time()  # ping -D stamps replies with this clock
    pinger = dc.host(src).popen(
        ["ping", "-D", "-n", "-i", "0.05", "-c", str(count), dc.layout.vms[dst][1]], stdout=subprocess.PIPE, text=True
    )
    resync = None
    try:
        time.sleep(1.5)
        killed = time.monotonic()
        killed_wall = time.time()
        kill()
        restart()
        restarted = time.monotonic() - killed
        if after_restart is not None:
            done = after_restart()
            resync = time.monotonic() - killed if done else None
        out, _ = pinger.communicate(timeout=count * 0.05 + 20)
    finally:
        if pinger.poll() is None:
            pinger.kill()
            pinger.wait()
    times = reply_times(out)
    gap = max((b - a for a, b in itertools.pairwise(times)), default=None)
    # The requests go out no earlier than scheduled, so the silence at the end is at least this long.
    silent_to_end = started_wall + (count - 1) * interval - (times[-1] if times else started_wall)
    open_ended = silent_to_end > 4 * interval and (gap is None or silent_to_end > gap)
    if open_ended:
        gap = silent_to_end
    after = sum(1 for t in times if t > killed_wall)
    return GapResult(gap, len(times), count, restarted, resync, after, open_ended)


# -- Ryu simple_switch_13, the in-run baseline ---------------------------------------------------
def _listening(port: int) -> bool:
    needle = f":{port:04X} "
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 3 and (fields[1] + " ").endswith(needle) and fields[3] == "0A":
                return True
    return False


@dataclass
class PeerController(ManagedProcess):
    """A peer OpenFlow controller in its own process (process group), on a port of its own, its
    output in `log_path`. Subclasses say what to run (`command`), where and with what environment."""

    name: ClassVar[str] = "peer"
    of_port: int = 0
    log_path: str = ""
    proc: subprocess.Popen | None = None
    _tmp: tempfile.TemporaryDirectory | None = field(default=None, repr=False)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.of_port}"

    def command(self) -> list[str]:
        raise NotImplementedError

    def workdir(self) -> str:
        return str(REPO)

    def environment(self) -> dict[str, str] | None:
        return None  # ours

    def start(self, wait: float = 30.0):
        """Start it; return it once its OpenFlow port listens (raises, with its log, if it exits or is late)."""
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(
                self.command(), cwd=self.workdir(), env=self.environment(), stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}: {self.log_tail()}")
            if _listening(self.of_port):
                return self
            time.sleep(0.02)
        raise RuntimeError(f"{self.name} did not listen on {self.of_port} within {wait}s: {self.log_tail()}")


@dataclass
class RyuSimpleSwitch(PeerController):
    """`ryu.app.simple_switch_13`."""

    name: ClassVar[str] = "simple_switch_13"

    def __post_init__(self) -> None:
        self.of_port = self.of_port or free_port()
        if not self.log_path:
            self._tmp = tempfile.TemporaryDirectory(prefix="bench-ryu-")
            self.log_path = os.path.join(self._tmp.name, "ryu.log")

    def command(self) -> list[str]:
        code = (
            "from controller.launcher import patch_eventlet; patch_eventlet(); from ryu.cmd import manager; "
            f"manager.main(args=['--ofp-tcp-listen-port', '{self.of_port}', 'ryu.app.simple_switch_13'])"
        )
        return [sys.executable, "-c", code]


FAUCET_VENV = REPO / ".venv-faucet"  # scripts/install.sh puts Faucet there, apart from our own .venv


@dataclass
class FaucetProcess(PeerController):
    """Faucet (`.venv-faucet/bin/faucet`, on os-ken) in its own process group, with its own OpenFlow and
    Prometheus ports, its faucet.yaml (`config`, the YAML text) and its logs in a temporary directory.
    Restarting it (start() again) reads the same configuration."""

    name: ClassVar[str] = "faucet"
    config: str = ""
    prometheus_port: int = 0

    def __post_init__(self) -> None:
        self.of_port = self.of_port or free_port()
        self.prometheus_port = self.prometheus_port or free_port()
        self._tmp = tempfile.TemporaryDirectory(prefix="bench-faucet-")
        self.config_path = os.path.join(self._tmp.name, "faucet.yaml")
        Path(self.config_path).write_text(self.config)
        self.log_path = self.log_path or os.path.join(self._tmp.name, "faucet.log")

    @property
    def prometheus_url(self) -> str:
        return f"http://127.0.0.1:{self.prometheus_port}"

    def command(self) -> list[str]:
        return [str(FAUCET_VENV / "bin" / "faucet"), f"--ryu-ofp-tcp-listen-port={self.of_port}"]

    def environment(self) -> dict[str, str]:
        return {
            **os.environ,
            # faucet execs `osken-manager` by name: the one beside it, not anything else on PATH.
            "PATH": os.pathsep.join((str(FAUCET_VENV / "bin"), os.environ.get("PATH", ""))),
            "FAUCET_CONFIG": self.config_path,
            "FAUCET_LOG": self.log_path,  # its own log lines; stdout and stderr go there too
            "FAUCET_EXCEPTION_LOG": self.log_path,
            "FAUCET_PROMETHEUS_PORT": str(self.prometheus_port),
            "FAUCET_PROMETHEUS_ADDR": "127.0.0.1",
            "FAUCET_EVENT_SOCK": "0",
        }

    def workdir(self) -> str:
        return self._tmp.name

    def start(self, wait: float = 30.0) -> FaucetProcess:
        if not (FAUCET_VENV / "bin" / "faucet").exists():
            raise RuntimeError(f"Faucet is not installed in {FAUCET_VENV} (make install puts it there)")
        return super().start(wait)

    def metrics(self, timeout: float = 5.0) -> dict[str, float]:
        """Faucet's own Prometheus samples, keyed by name plus labels as written."""
        import urllib.request

        with urllib.request.urlopen(self.prometheus_url, timeout=timeout) as resp:
            text = resp.read().decode()
        values = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                try:
                    values[name] = float(value)
                except ValueError:
                    continue
        return values


# -- Goldilocks' own figures ---------------------------------------------------------------------
def wait_until(predicate, timeout: float, interval: float = 0.1):
    """Poll predicate() (errors count as not yet) until truthy or timeout; return the last value."""
    deadline = time.monotonic() + timeout
    value = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except (OSError, ValueError, KeyError):
            value = None
        if value:
            return value
        time.sleep(interval)
    return value


def converge_seconds(dc, timeout: float = 30.0) -> list[float] | None:
    """Per-switch converge_seconds from /v1/topology, once every built switch has one."""
    expected = len(dc.layout.switches)

    def all_converged():
        values = [s["converge_seconds"] for s in dc.topology()["switches"]]
        return values if len(values) == expected and all(v is not None for v in values) else None

    return wait_until(all_converged, timeout, 0.2)


def metric_values(rest_url: str) -> dict[str, float]:
    """Every sample of /metrics, keyed by name plus labels (sorted, as prometheus_client writes them);
    and under its bare name the sum of a labelled metric's series (a per-switch counter's total)."""
    from prometheus_client.parser import text_string_to_metric_families

    values: dict[str, float] = {}
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(rest_get(rest_url, "/metrics")):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            values[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
            if sample.labels and "le" not in sample.labels:
                totals[sample.name] = totals.get(sample.name, 0.0) + sample.value
    for name, total in totals.items():
        values.setdefault(name, total)
    return values


def histogram_quantile(values: dict[str, float], name: str, q: float) -> float | None:
    """The q-quantile of an unlabelled histogram in `values` (metric_values), estimated as
    Prometheus' histogram_quantile does: linearly inside the bucket that holds it. None if empty."""
    prefix = f'{name}_bucket{{le="'
    buckets = sorted((float(key[len(prefix) : -2]), count) for key, count in values.items() if key.startswith(prefix))
    if not buckets or buckets[-1][1] == 0:
        return None
    rank = q * buckets[-1][1]
    lower, below = 0.0, 0.0
    for upper, count in buckets:
        if count >= rank:
            if upper == float("inf"):
                return lower  # beyond the last finite bucket: its bound is all that is known
            return lower + (upper - lower) * ((rank - below) / (count - below) if count > below else 1.0)
        lower, below = upper, count
    return lower


ERROR_PATTERN = re.compile(r"error|exception|traceback|refused|failed|timed out", re.I)
BENIGN = (
    "RLock(s) were not greened",  # eventlet's import-order notice, printed at every start
    "send_flow_msgs: DP not up",  # Faucet, at every start: its timers fire before the switches connect
)
HOST_LINE = re.compile(r"host (\S+) ip (\S+) at switch ([0-9a-f]{16}) port (\d+)$")
LINK_TIMEOUT_TEXT = "timed out: no probe both ways"  # the learner's line when a link ages out


def _lines(path: str) -> list[str]:
    try:
        return Path(path).read_text(errors="replace").splitlines()
    except OSError:
        return []


def log_problems(path: str, limit: int = 20) -> tuple[int, list[str]]:
    """Lines of a controller log that look like trouble: (how many, the first `limit`)."""
    bad = [line for line in _lines(path) if ERROR_PATTERN.search(line) and not any(b in line for b in BENIGN)
           and LINK_TIMEOUT_TEXT not in line]  # counted by topology_trouble
    return len(bad), bad[:limit]


def interface_macs() -> dict[str, str]:
    """MAC -> interface name for the root namespace (where Mininet keeps the switch ports)."""
    out = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, timeout=10).stdout
    macs = {}
    for line in out.splitlines():
        match = re.match(r"\d+: ([^:@]+)[@:].*link/ether ([0-9a-f:]{17})", line)
        if match:
            macs[match.group(2)] = match.group(1)
    return macs


FORGOT_ONE = re.compile(r"forgot host (\S+): it is a switch port's MAC")
FORGOT_ON_LINK = re.compile(r"link .*: forgot \d+ hosts learned on its ports: (.*)$")


def topology_trouble(path: str, layout, macs: dict[str, str] | None = None, limit: int = 8) -> dict:
    """What the Goldilocks log says about the learned topology: links aged out, and hosts learned
    where the built layout has none (a fabric switch, or a hypervisor's uplink, port 1). Such a
    host that the controller forgot later (a switch port's MAC once that switch connected, or a
    port that turned out to face a switch) is a guess overturned, counted apart from those it kept.
    Misplaced MACs that belong to a root-namespace interface (a switch port) are named."""
    hypervisors = {dpid for name, dpid in layout.switches.items() if layout.roles[name] == "hypervisor"}
    vm_macs = {mac for _, _, mac in layout.vms.values()}
    macs = macs or {}
    timeouts: list[str] = []
    misplaced: dict[str, str] = {}  # MAC -> its last misplaced host line, until forgotten
    overturned: list[str] = []
    for line in _lines(path):
        if LINK_TIMEOUT_TEXT in line:
            timeouts.append(line)
        forgotten = [m.group(1)] if (m := FORGOT_ONE.search(line)) else []
        if m := FORGOT_ON_LINK.search(line):
            forgotten += [mac.strip() for mac in m.group(1).split(",")]
        for mac in forgotten:
            if mac in misplaced:
                overturned.append(misplaced.pop(mac))
        match = HOST_LINE.search(line)
        if match:
            mac = match.group(1)
            if int(match.group(3), 16) not in hypervisors or match.group(4) == "1":
                misplaced[mac] = line
            else:
                misplaced.pop(mac, None)  # learned again where it really is
    kept = list(misplaced.values())
    vm_moved = [line for mac, line in misplaced.items() if mac in vm_macs]
    switch_port_macs = [f"{line} (MAC of switch port {macs[mac]})" for mac, line in misplaced.items() if mac in macs]
    return {"link_timeouts": len(timeouts), "link_timeout_lines": timeouts[:limit],
            "misplaced_hosts": len(kept), "misplaced_host_lines": kept[:limit],
            "guesses_overturned": len(overturned), "guesses_overturned_lines": overturned[:limit],
            "vm_misplaced": len(vm_moved), "vm_misplaced_lines": vm_moved[:limit],
            "switch_port_macs": len(switch_port_macs), "switch_port_mac_lines": switch_port_macs[:limit]}
