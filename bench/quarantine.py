"""The quarantine benchmark: how soon a VM's running flows stop after `POST /v1/quarantine`, and how soon the
controller shows a quarantined VM at its new place after it moves, while a TCP stream between two other VMs runs.

One fresh data centre per repetition (bench/run.py orchestrates them), `Layout(1, 2, 1, 2)`: vm1 and vm2 on hv1,
vm3 and vm4 on hv2, without tunnel endpoints (quarantine needs none). Throughout the trials iperf3 carries TCP
from vm2 to vm4, across the spine.
- Latency: vm3 pings vm1 every 5 ms, then the API quarantines vm1; the figure is the last echo reply's time minus
  the time the call returned (and minus the time it was sent). Released between trials.
- Migration: vm1, quarantined, is unplugged and plugged into the other hypervisor, back and forth; the figure is
  the time until `GET /v1/quarantine/vm1` places it on its new hypervisor, while vm4 pings it (not one ping may
  be answered).

Every ping has a count and a deadline and every wait a timeout; pingers and iperf3 are stopped in `finally`, and
the data centre's context manager tears the network down (and kills whatever still runs in the VMs).
"""

from __future__ import annotations

import math
import os
import re
import shutil
import signal
import statistics
import subprocess
import tempfile
import time

from agent.netns import in_namespace
from bench.measure import log_problems
from mininet_scenarios.datacenter import Layout, running
from mininet_scenarios.harness import REPO, rest_call, rest_get
from topology.model import EDGE_CONFIRM_TIME

LAYOUT = (1, 2, 1, 2)  # 1 spine, 2 leaves, 1 hypervisor each, 2 VMs each: vm1, vm2 on hv1; vm3, vm4 on hv2
TARGET = "vm1"  # the VM quarantined, and moved
PINGER = "vm3"  # pings the target across hypervisors in the latency trials
WATCHER = "vm4"  # pings the target while it moves
STREAM = ("vm2", "vm4")  # the bystanders' iperf3 TCP stream: client, server
HYPERVISORS = ("hv1", "hv2")  # the target moves to the other one in each migration trial
REASON = "bench: quarantine"

LATENCY_TRIALS = 20
MIGRATION_TRIALS = 4  # an even number: the target ends where it started
PING_INTERVAL = 0.005
PING_COUNT = 4000  # with -w, ping stops after this many replies (or at the deadline)
PING_DEADLINE = 15  # seconds: no pinger outlives this (`ping -w`)
PING_LEAD = 0.5  # seconds of answered pings before the call
PING_TAIL = 0.5  # seconds of pings after the call returned
KEPT_ANSWERED = 0.25  # a reply later than this after the call returned: the cut did not hold
RELEASE_WAIT = 10.0  # seconds to wait for the target to answer again after a release
MIGRATION_LEAD = 0.3  # seconds of the watcher's pings before the move
MIGRATION_TAIL = 0.3  # seconds of the watcher's pings after the controller placed the target
LOCATION_TIMEOUT = 10.0
LOCATION_POLL = 0.01
# What the moved VM sends at its new place, as a hypervisor announces a migrated VM (RARP or gratuitous ARP):
# a few pings to the watcher, whose ARP request is its first frame. Bounded by count and -W.
ANNOUNCE = ("-n", "-c", "5", "-i", "0.05", "-W", "1")
READY_TIMEOUT = 30.0
STREAM_ALONE = 2.0  # seconds the stream runs before the first trial
STREAM_LIMIT = 600  # iperf3 -t: the stream's upper bound; it is stopped after the last trial
STREAM_PORT = 5201
STREAM_ATTEMPTS = 5
STOP_TIMEOUT = 5.0
TOOLS = ("iperf3", "ping", "nsenter", "ip")
LOG_DIR = REPO / "bench" / "out" / "logs"

REPLY = re.compile(r"^\[(\d+\.\d+)\] \d+ bytes from ", re.M)
COUNTS = re.compile(r"(\d+) packets transmitted, (\d+) received")
# iperf3 -f m interval line: "[  5]   1.00-2.00   sec   112 MBytes   941 Mbits/sec ..."; totals end in sender/receiver.
INTERVAL = re.compile(r"^\[\s*\d+\]\s+([\d.]+)-([\d.]+)\s+sec\s+\S+\s+\S?Bytes\s+([\d.]+)\s+Mbits/sec(.*)$", re.M)


def settings() -> dict:
    """What the report needs to describe the runs."""
    return {
        "layout": list(LAYOUT),
        "target": TARGET,
        "pinger": PINGER,
        "watcher": WATCHER,
        "stream": list(STREAM),
        "latency_trials": LATENCY_TRIALS,
        "migration_trials": MIGRATION_TRIALS,
        "ping_interval": PING_INTERVAL,
        "ping_lead": PING_LEAD,
        "ping_tail": PING_TAIL,
        "kept_answered": KEPT_ANSWERED,
        "release_wait": RELEASE_WAIT,
        "migration_lead": MIGRATION_LEAD,
        "migration_tail": MIGRATION_TAIL,
        "location_timeout": LOCATION_TIMEOUT,
        "location_poll": LOCATION_POLL,
        "announce": " ".join(ANNOUNCE),
        "stream_alone": STREAM_ALONE,
        "edge_confirm_time": EDGE_CONFIRM_TIME,
    }


def missing_tools() -> list[str]:
    return [tool for tool in TOOLS if shutil.which(tool) is None]


# -- processes inside the VMs ------------------------------------------------------------------
def _netns(dc, vm: str) -> str:
    return f"/proc/{dc.host(vm).pid}/ns/net"


def _ip(dc, vm: str) -> str:
    return dc.layout.vms[vm][1]


def _spawn(dc, vm: str, argv: list[str], stdout=subprocess.PIPE) -> subprocess.Popen:
    return subprocess.Popen(in_namespace(_netns(dc, vm), argv), stdin=subprocess.DEVNULL, stdout=stdout,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)  # fmt: skip


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


def _stop(proc: subprocess.Popen, sig: int = signal.SIGINT) -> str:
    """Stop a process politely (ping and iperf3 print their summary on SIGINT); its output."""
    if proc.poll() is None:
        _signal_group(proc, sig)
    try:
        out, _ = proc.communicate(timeout=STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        _signal_group(proc, signal.SIGKILL)
        out, _ = proc.communicate(timeout=STOP_TIMEOUT)
    return out or ""


def _kill(proc: subprocess.Popen | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    _signal_group(proc, signal.SIGKILL)
    try:
        proc.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        pass


def _pinger(dc, src: str, dst: str) -> subprocess.Popen:
    """`src` pings `dst` every PING_INTERVAL, with timestamps, until stopped (at most PING_DEADLINE s)."""
    argv = ["ping", "-D", "-n", "-i", str(PING_INTERVAL), "-W", "1", "-c", str(PING_COUNT), "-w", str(PING_DEADLINE),
            _ip(dc, dst)]  # fmt: skip
    return _spawn(dc, src, argv)


def reply_times(output: str) -> list[float]:
    """Epoch times of the echo replies in `ping -D` output."""
    return [float(m.group(1)) for m in REPLY.finditer(output)]


def ping_counts(output: str) -> dict:
    found = COUNTS.search(output)
    return {"sent": int(found.group(1)), "answered": int(found.group(2))} if found else {"sent": None, "answered": None}


def first_reply(dc, src: str, dst: str, timeout: float) -> float | None:
    """Epoch time of the first echo reply, `src` pinging `dst` every PING_INTERVAL for at most `timeout` s."""
    seconds = max(1, math.ceil(timeout))
    argv = ["ping", "-D", "-n", "-i", str(PING_INTERVAL), "-c", "1", "-w", str(seconds), _ip(dc, dst)]
    try:
        done = subprocess.run(in_namespace(_netns(dc, src), argv), capture_output=True, text=True,
                              timeout=seconds + STOP_TIMEOUT, stdin=subprocess.DEVNULL)  # fmt: skip
    except subprocess.TimeoutExpired:
        return None
    times = reply_times(done.stdout)
    return times[0] if times else None


def _pin_neighbour(dc, vm: str, peer: str) -> None:
    """A permanent neighbour entry in `vm` for `peer`: every packet to it goes out addressed to its MAC, and no
    ARP exchange (which a quarantine also stops) decides when pings flow again."""
    _, ip, mac = dc.layout.vms[peer]
    argv = ["ip", "neigh", "replace", ip, "lladdr", mac, "dev", dc.host(vm).defaultIntf().name, "nud", "permanent"]
    subprocess.run(in_namespace(_netns(dc, vm), argv), check=True, capture_output=True, timeout=STOP_TIMEOUT,
                   stdin=subprocess.DEVNULL)  # fmt: skip


# -- the bystanders' stream ----------------------------------------------------------------------
class Stream:
    """An iperf3 TCP stream from one VM to another, from start() until stop() (at most STREAM_LIMIT s).
    Output goes to files, so that a long run cannot fill a pipe."""

    def __init__(self, dc, client: str, server: str) -> None:
        self.dc, self.client_vm, self.server_vm = dc, client, server
        self.client: subprocess.Popen | None = None
        self.server: subprocess.Popen | None = None
        self._server_out = None
        self._client_out = None
        self._files: list = []

    def _file(self):
        handle = tempfile.TemporaryFile(mode="w+")
        self._files.append(handle)
        return handle

    def start(self) -> None:
        ip = _ip(self.dc, self.server_vm)
        self._server_out = self._file()
        self.server = _spawn(self.dc, self.server_vm, ["iperf3", "-s", "-1", "-B", ip, "-p", str(STREAM_PORT), "-i", "1",
                                                       "-f", "m", "--forceflush"], stdout=self._server_out)  # fmt: skip
        failure = ""
        for _ in range(STREAM_ATTEMPTS):  # the server may not listen yet: the client is refused and exits
            time.sleep(0.3)
            self._client_out = self._file()
            self.client = _spawn(self.dc, self.client_vm, ["iperf3", "-c", ip, "-p", str(STREAM_PORT), "-t",
                                                           str(STREAM_LIMIT), "-i", "1", "-f", "m", "--forceflush"],
                                 stdout=self._client_out)  # fmt: skip
            time.sleep(0.5)
            if self.client.poll() is None:
                return
            self._client_out.seek(0)
            failure = " ".join(self._client_out.read().split())[-200:]
        raise RuntimeError(f"iperf3 {self.client_vm} -> {self.server_vm} did not start: {failure}")

    def stop(self) -> dict:
        """Stop the stream: Mbit/s received over its life, over its first STREAM_ALONE s (no trial yet) and after,
        and its slowest whole 1 s interval after."""
        for proc in (self.client, self.server):
            if proc is not None:
                _stop(proc)
        text = ""
        for handle in (self._server_out, self._client_out):
            if handle is not None:
                handle.seek(0)
                text = handle.read()
                if INTERVAL.search(text):
                    break  # the server's intervals (bytes received), else the client's (bytes sent)
        for handle in self._files:
            handle.close()
        return stream_figures(text)

    def kill(self) -> None:
        _kill(self.client)
        _kill(self.server)


def stream_figures(iperf_output: str) -> dict:
    intervals = [(float(a), float(b), float(rate)) for a, b, rate, tail in INTERVAL.findall(iperf_output)
                 if "sender" not in tail and "receiver" not in tail and float(b) > float(a)]  # fmt: skip
    if not intervals:
        return {"mbps": None, "error": "no iperf3 intervals: " + " ".join(iperf_output.split())[-200:]}

    def mean(chosen) -> float | None:
        seconds = sum(b - a for a, b, _ in chosen)
        return round(sum((b - a) * rate for a, b, rate in chosen) / seconds, 1) if seconds else None

    alone = [i for i in intervals if i[1] <= STREAM_ALONE + 0.01]
    during = [i for i in intervals if i[1] > STREAM_ALONE + 0.01]
    whole = [rate for a, b, rate in during if b - a > 0.9]
    return {
        "mbps": mean(intervals),
        "alone_mbps": mean(alone),
        "during_mbps": mean(during),
        "slowest_interval_mbps": min(whole) if whole else None,
        "seconds": round(intervals[-1][1], 1),
    }


# -- the trials -------------------------------------------------------------------------------------
def _quarantine(dc) -> None:
    rest_call(dc.rest_url, "POST", "/v1/quarantine", {"vm": TARGET, "reason": REASON}, expect=201)


def _release(dc, src: str) -> float | None:
    """Release the target; seconds from the DELETE's answer to `src`'s first echo reply from it (None: none
    within RELEASE_WAIT)."""
    rest_call(dc.rest_url, "DELETE", f"/v1/quarantine/{TARGET}", expect=204)
    released = time.time()
    answered = first_reply(dc, src, TARGET, RELEASE_WAIT)
    return None if answered is None else round(answered - released, 6)


def latency_trial(dc) -> dict:
    """The pinger pings the target; the target is quarantined, then released: when the last reply came."""
    pinger = _pinger(dc, PINGER, TARGET)
    try:
        time.sleep(PING_LEAD)
        sent = time.time()
        _quarantine(dc)
        returned = time.time()
        try:
            time.sleep(PING_TAIL)
            out = _stop(pinger)
            stopped = time.time()
        finally:
            released_to_reply = _release(dc, PINGER)
    finally:
        _kill(pinger)
    replies = reply_times(out)
    trial = {
        "call_seconds": round(returned - sent, 6),
        "replies_before_call": sum(1 for t in replies if t < sent),
        "replies_after_returned": sum(1 for t in replies if t > returned),
        **ping_counts(out),
        "release_to_reply": released_to_reply,
    }
    if not trial["replies_before_call"]:
        trial["invalid"] = f"no reply in the {PING_LEAD} s before the call"
        return trial
    last = max(replies)
    trial["after_returned"] = round(last - returned, 6)
    trial["after_sent"] = round(last - sent, 6)
    if last - returned > KEPT_ANSWERED:
        trial["kept_answered"] = f"replies went on until {last - returned:.3f} s after the call returned " \
                                 f"(the pinger stopped {stopped - returned:.3f} s after it)"
    return trial


def _location(dc) -> str | None:
    """The dpid (16 hex digits) where the controller places the quarantined target, None if nowhere or no answer."""
    try:
        record = rest_get(dc.rest_url, f"/v1/quarantine/{TARGET}", 2)
    except (OSError, ValueError):
        return None
    return (record.get("location") or {}).get("dpid")


def move(dc, vm: str, to_hv: str) -> float:
    """Migrate `vm` to `to_hv` (DataCentre.move_vm); return when it was plugged in (epoch)."""
    return dc.move_vm(vm, to_hv)


def migration_trial(dc, to_hv: str) -> dict:
    """The quarantined target moves to `to_hv` while the watcher pings it: how soon the controller places it there."""
    want = f"{dc.layout.switches[to_hv]:016x}"
    trial: dict = {"from": dc.layout.vms[TARGET][0], "to": to_hv, "located_before": _location(dc)}
    watcher = _pinger(dc, WATCHER, TARGET)
    announce = None
    located = None
    try:
        time.sleep(MIGRATION_LEAD)
        plugged = move(dc, TARGET, to_hv)
        announce = _spawn(dc, TARGET, ["ping", *ANNOUNCE, _ip(dc, WATCHER)])
        trial["announce_after_plugged"] = round(time.time() - plugged, 6)
        polls = 0
        while time.time() - plugged < LOCATION_TIMEOUT:
            polls += 1
            if _location(dc) == want:
                located = time.time()
                break
            time.sleep(LOCATION_POLL)
        trial["polls"] = polls
        time.sleep(MIGRATION_TAIL)
        watched = _stop(watcher)
        try:
            announced, _ = announce.communicate(timeout=STOP_TIMEOUT + 2)
        except subprocess.TimeoutExpired:
            announced = _stop(announce)
    finally:
        _kill(watcher)
        _kill(announce)
    trial["plugged_to_located"] = None if located is None else round(located - plugged, 6)
    trial["to_target"] = ping_counts(watched)
    trial["from_target"] = ping_counts(announced or "")
    return trial


def _migrations(dc) -> tuple[list[dict], float | None]:
    """Quarantine the target, move it back and forth, release it: the trials, and seconds from the release to
    the watcher's first reply from it at its last place."""
    trials: list[dict] = []
    _quarantine(dc)
    try:
        for _ in range(MIGRATION_TRIALS):
            here = dc.layout.vms[TARGET][0]
            trials.append(migration_trial(dc, next(hv for hv in HYPERVISORS if hv != here)))
    finally:
        try:
            # The announce left the target resolving the watcher's address (ARP retried once a second): pinned,
            # the release figure measures the controller, as between the latency trials, not that retry.
            _pin_neighbour(dc, TARGET, WATCHER)
        finally:
            released_to_reply = _release(dc, WATCHER)
    return trials, released_to_reply


def _inventory(dc) -> None:
    for name, (_, ip, mac) in dc.layout.vms.items():
        rest_call(dc.rest_url, "PUT", f"/v1/vms/{name}", {"macs": [mac], "ips": [ip], "labels": {"tier": name}},
                  expect=201)  # fmt: skip


def _keep_log(src: str, label: str) -> str:
    """Copy the controller log to bench/out/logs (not committed); its path, relative to the repository."""
    dest = LOG_DIR / f"{label}.log"
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dest)
    except OSError:
        return ""
    return str(dest.relative_to(REPO))


def run_datacentre(rep: int) -> dict:
    """One repetition in a fresh data centre. Partial figures survive a failure (with `error`)."""
    started = time.monotonic()
    result: dict = {"latency": [], "migration": []}
    try:
        with running(Layout(*LAYOUT), tunnels=False) as dc:
            ctl = dc.controller_proc
            try:
                dc.wait_for_fabric(timeout=60)
                _inventory(dc)
                for vm, peer in ((PINGER, TARGET), (TARGET, PINGER), (WATCHER, TARGET)):
                    _pin_neighbour(dc, vm, peer)
                for src, dst in ((PINGER, TARGET), (WATCHER, TARGET), STREAM):
                    if first_reply(dc, src, dst, READY_TIMEOUT) is None:
                        raise RuntimeError(f"{src} never reached {dst} within {READY_TIMEOUT:g} s")
                stream = Stream(dc, *STREAM)
                try:
                    stream.start()
                    time.sleep(STREAM_ALONE)
                    for _ in range(LATENCY_TRIALS):
                        result["latency"].append(latency_trial(dc))
                    result["migration"], result["released_after_moves"] = _migrations(dc)
                finally:
                    try:
                        result["stream"] = stream.stop()
                    finally:
                        stream.kill()
            finally:
                result["log"] = _keep_log(ctl.log_path, f"quarantine-{rep}")
                count, lines = log_problems(ctl.log_path)
                result["log_problems"] = {"count": count, "lines": lines}
    except (RuntimeError, TimeoutError, OSError, ValueError, KeyError, subprocess.SubprocessError) as exc:
        result["error"] = repr(exc)
    result["wall_seconds"] = time.monotonic() - started
    result["summary"] = summary(result)
    return result


def summary(result: dict) -> str:
    bits = []
    valid = [t for t in result.get("latency", []) if "after_returned" in t]
    if valid:
        after = [t["after_returned"] for t in valid]
        bits.append(f"last reply {1000 * statistics.median(after):.1f} ms after the call returned (median of "
                    f"{len(valid)}), worst {1000 * max(after):.1f} ms")
    located = [t["plugged_to_located"] for t in result.get("migration", []) if t.get("plugged_to_located") is not None]
    if located:
        answered = sum(t["to_target"]["answered"] or 0 for t in result["migration"])
        bits.append(f"moved to placed {1000 * statistics.median(located):.0f} ms (median of {len(located)}), "
                    f"{answered} pings to it answered")
    mbps = (result.get("stream") or {}).get("mbps")
    bits.append(f"stream {'failed' if mbps is None else f'{mbps:.0f} Mbit/s'}")
    if result.get("error"):
        bits.append(f"error {result['error']}")
    return ", ".join(bits)
