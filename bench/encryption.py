"""The encryption benchmark: encrypted VM-to-VM throughput against plain OVS and raw wireguard-go, rule-to-first-
encrypted-packet time, and pings lost per PSK and per identity rotation.

Two kinds of run, one of each per repetition (bench/run.py orchestrates them):
- `run_datacentre`: a fresh Goldilocks data centre, `Layout(1, 2, 1, 1)` (vm1 on hv1, vm2 on hv2), measured
  in clear, then with an `encrypt` rule (through VXLAN over wireguard-go), then under key rotations.
- `run_raw`: two bare namespaces joined by a jumbo veth, wireguard-go between them and a VXLAN device over
  it, no OVS: what wireguard-go alone, and VXLAN over it, can carry on this machine.

Every command is bounded in time; the raw test bed holds the machine-wide Mininet lock for its whole life
and removes everything it made, in `finally`, even after a crash of an earlier run.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from agent.netns import DataplaneError, SubprocessRunner, in_namespace
from agent.wireguard import SOCKET_DIR, PeerSpec, WireGuard, wireguard_go_pids
from crypto import wgkeys
from mininet_scenarios import encryption_check
from mininet_scenarios.datacenter import Layout, MininetLock, running
from mininet_scenarios.harness import rest_call, rest_get

LAYOUT = (1, 2, 1, 1)  # 1 spine, 2 leaves, 1 hypervisor each, 1 VM each: vm1 on hv1, vm2 on hv2
IPERF_SECONDS = 3
IPERF_PORT = 5201
PING_INTERVAL = 0.01  # 100 pps
PSK_ROTATIONS, PSK_INTERVAL = 8, 1.0
IDENTITY_ROTATIONS, IDENTITY_INTERVAL = 4, 2.0
IDENTITY_HYPERVISORS = ("hv1", "hv2")  # alternated
ROTATION_LEAD = 1.0  # seconds of pings before the first rotation
PSK_TAIL = 2.0  # seconds of pings after the last PSK rotation
# After the last identity rotation: longer than WireGuard's 5 s handshake retry (REKEY_TIMEOUT), so that a
# flow that stalls until a retried handshake has recovered before the pings stop, and its losses count.
IDENTITY_TAIL = 6.0
BASELINE_SECONDS = 3.0  # the same pings with no rotation: what the flow loses anyway
GAP_SHOWN = 0.1  # seconds between two replies worth listing (at 100 pps, 10 pings)
TOOLS = ("wireguard-go", "wg", "tcpdump", "nsenter", "setsid", "iperf3", "ping")

# The raw test bed. Names are unique machine-wide (wireguard-go's sockets are one path for every
# namespace) and at most 15 characters; other benches and tests use glt*, glwg*, glvx*.
SIDES = ("a", "b")
NUMBER = {"a": 1, "b": 2}
RAW_WG_MTU = 8920  # what the agent gives its wg interface (agent.wireguard.WireGuard's default)
RAW_UNDERLAY_MTU = 9000
RAW_VXLAN_MTU = 1500
RAW_VNI = 4243
# A VM's TCP segments (MTU 1500: IP packets of at most 1500 bytes) over raw wg, to set against the
# jumbo segments the wg MTU allows: what the encrypted VM path carries, minus VXLAN and OVS.
VM_MSS = 1460
# Raw test bed runs: (key in the results, destination, iperf3 options).
RAW_PATHS = (("raw_wireguard", "wg", ()), ("raw_wireguard_vm_mss", "wg", ("-M", str(VM_MSS))),
             ("vxlan_over_wireguard", "vxlan", ()))  # fmt: skip
COMMAND_TIMEOUT = 20.0


def settings() -> dict:
    """What the report needs to describe the runs."""
    return {
        "layout": list(LAYOUT),
        "iperf_seconds": IPERF_SECONDS,
        "ping_interval": PING_INTERVAL,
        "psk_rotations": PSK_ROTATIONS,
        "psk_interval": PSK_INTERVAL,
        "identity_rotations": IDENTITY_ROTATIONS,
        "identity_interval": IDENTITY_INTERVAL,
        "identity_hypervisors": list(IDENTITY_HYPERVISORS),
        "rotation_lead": ROTATION_LEAD,
        "psk_tail": PSK_TAIL,
        "identity_tail": IDENTITY_TAIL,
        "baseline_seconds": BASELINE_SECONDS,
        "raw_wg_mtu": RAW_WG_MTU,
        "raw_underlay_mtu": RAW_UNDERLAY_MTU,
        "raw_vxlan_mtu": RAW_VXLAN_MTU,
        "vm_mss": VM_MSS,
    }


def missing_tools() -> list[str]:
    return [tool for tool in TOOLS if shutil.which(tool) is None]


# -- traffic between two network namespaces ----------------------------------------------------------
def iperf3(server_ns: str, client_ns: str, server_ip: str, seconds: int = IPERF_SECONDS, extra: tuple[str, ...] = ()) -> dict:
    """TCP from the namespace at path `client_ns` to `server_ip` in `server_ns`: Mbit/s received, or an error.
    iperf3 3.12 exits 0 when refused (the server may not listen yet): the JSON's `error` says so."""
    server = subprocess.Popen(
        in_namespace(server_ns, ["timeout", str(seconds + 30), "iperf3", "-s", "-1", "-B", server_ip, "-p", str(IPERF_PORT)]),
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    client = ["iperf3", "-c", server_ip, "-p", str(IPERF_PORT), "-t", str(seconds), "-J", *extra]
    error = "no attempt"
    try:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                done = subprocess.run(in_namespace(client_ns, client), capture_output=True, text=True,
                                      timeout=seconds + 15, stdin=subprocess.DEVNULL)  # fmt: skip
            except subprocess.TimeoutExpired:
                return {"mbps": None, "error": f"iperf3 did not finish within {seconds + 15} s"}
            try:
                report = json.loads(done.stdout)
            except ValueError:
                report = {"error": f"no JSON (exit {done.returncode}): {' '.join(done.stderr.split())[-200:]}"}
            if "error" not in report:
                received = report["end"]["sum_received"]
                return {
                    "mbps": received["bits_per_second"] / 1e6,
                    "bytes": received["bytes"],
                    "retransmits": report["end"].get("sum_sent", {}).get("retransmits"),
                }
            error = report["error"]
            if "refused" not in error:
                break
            time.sleep(0.2)
        return {"mbps": None, "error": error}
    finally:
        _kill_group(server)


def _kill_group(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        pass


def _ping_once(netns: str, ip: str) -> bool:
    try:
        done = subprocess.run(in_namespace(netns, ["ping", "-n", "-c1", "-W1", ip]), capture_output=True, timeout=5,
                              stdin=subprocess.DEVNULL)  # fmt: skip
    except subprocess.TimeoutExpired:
        return False
    return done.returncode == 0


def wait_for_ping(netns: str, ip: str, timeout: float) -> float | None:
    """Seconds until a ping from `netns` to `ip` is answered (None: not within `timeout`)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if _ping_once(netns, ip):
            return time.monotonic() - started
        time.sleep(0.1)
    return None


def ping_summary(output: str, started: float | None = None) -> dict:
    """Sent, answered and lost echo requests, and the largest time between two replies, from `ping -D -n` output.
    With `started` (epoch seconds), also every gap of more than GAP_SHOWN between replies: [seconds after
    `started` of the reply before it, length]."""
    found = re.search(r"(\d+) packets transmitted, (\d+) received", output)
    sent, answered = (int(found.group(1)), int(found.group(2))) if found else (None, None)
    times = [float(m.group(1)) for m in re.finditer(r"^\[(\d+\.\d+)\] \d+ bytes from", output, re.M)]
    gaps = [(a, b - a) for a, b in zip(times, times[1:], strict=False)]
    summary = {"sent": sent, "answered": answered, "lost": None if sent is None else sent - answered,
               "largest_gap_seconds": round(max(g for _, g in gaps), 4) if gaps else None}  # fmt: skip
    if started is not None:
        summary["gaps"] = [[round(at - started, 3), round(length, 3)] for at, length in gaps if length > GAP_SHOWN][:10]
    return summary


REPLY = re.compile(r"^\[(\d+\.\d+)\] \d+ bytes from .*icmp_seq=(\d+) .*time=([\d.]+) ms", re.M)


def lost_send_times(output: str, sent: int | None, started: float) -> dict[int, float]:
    """When (seconds after `started`, epoch) each unanswered request of `ping -D -n` output went out. An
    answered one went out at its reply's time minus its round trip (a reply held back while a tunnel waits
    for its handshake included); an unanswered one is placed between the answered ones around it."""
    sent_at: dict[int, float] = {}
    for m in REPLY.finditer(output):
        sent_at.setdefault(int(m.group(2)), float(m.group(1)) - float(m.group(3)) / 1000 - started)
    known = sorted(sent_at)
    times = {}
    for seq in range(1, (sent or 0) + 1):
        if seq in sent_at:
            continue
        before = max((k for k in known if k < seq), default=None)
        after = min((k for k in known if k > seq), default=None)
        if before is not None and after is not None:
            times[seq] = sent_at[before] + (sent_at[after] - sent_at[before]) * (seq - before) / (after - before)
        elif before is not None:
            times[seq] = sent_at[before] + (seq - before) * PING_INTERVAL
        elif after is not None:
            times[seq] = sent_at[after] - (after - seq) * PING_INTERVAL
        else:
            times[seq] = (seq - 1) * PING_INTERVAL
    return times


def lost_runs(lost: dict[int, float]) -> list[list]:
    """Unbroken runs of lost requests: [sent from (s), sent until (s), how many], at most 10."""
    runs: list[list] = []
    previous = None
    for seq in sorted(lost):
        if previous is not None and seq == previous + 1:
            runs[-1][1], runs[-1][2] = round(lost[seq], 3), runs[-1][2] + 1
        else:
            runs.append([round(lost[seq], 3), round(lost[seq], 3), 1])
        previous = seq
    return runs[:10]


def lost_by_window(sent_times, starts: list[float]) -> list[int]:
    """Lost requests counted by the window they were sent in: before starts[0], then from each start to the
    next (the last window runs to the end)."""
    counts = [0] * (len(starts) + 1)
    for sent_at in sent_times:
        counts[sum(1 for start in starts if sent_at >= start)] += 1
    return counts


# -- the data centre: plain, encrypted, rule to first encrypted packet, rotations ---------------------------
def _vm_netns(dc, vm: str) -> str:
    return f"/proc/{dc.host(vm).pid}/ns/net"


def _wireguard_bytes(dc, hv: str) -> int | None:
    """Bytes the hypervisor's wireguard-go sent and received, all peers (None when it cannot be read)."""
    try:
        out = subprocess.run(["wg", "show", dc.endpoints[hv].wg_interface, "transfer"], capture_output=True, text=True,
                             timeout=5, check=True).stdout  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return sum(int(rx) + int(tx) for _, rx, tx in (line.split("\t") for line in out.splitlines() if line.count("\t") == 2))


def _tunnel(dc) -> dict:
    (only,) = rest_get(dc.rest_url, "/v1/tunnels")["tunnels"]
    return only


def _agent_fingerprints(dc) -> dict[str, str]:
    return {a["hypervisor"]: a["wg_public_key_fingerprint"] for a in rest_get(dc.rest_url, "/v1/agents")["agents"]}


def _rotations_under_ping(dc, roles, count: int, interval: float, tail: float, rotate, settled=None) -> dict:
    """Ping pci -> db at 100 pps; call rotate(i) `count` times, `interval` apart, from ROTATION_LEAD
    seconds in; stop pinging `tail` seconds after the last. Returns the ping summary, what
    each rotate() returned and, with `settled`, how long after the last rotation it first held
    (polled while the pings go on; None if it never did)."""
    span = ROTATION_LEAD + (count - 1) * interval + tail
    pings = int(round(span / PING_INTERVAL))
    argv = ["ping", "-D", "-n", "-i", str(PING_INTERVAL), "-W", "1", "-c", str(pings), dc.layout.vms[roles.db][1]]
    started_epoch = time.time()
    pinger = subprocess.Popen(in_namespace(_vm_netns(dc, roles.pci), argv), stdout=subprocess.PIPE, text=True,
                              stdin=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    returned, requested_at = [], []
    try:
        started = time.monotonic()
        for i in range(count):
            time.sleep(max(0.0, started + ROTATION_LEAD + i * interval - time.monotonic()))
            requested_at.append(round(time.time() - started_epoch, 3))
            returned.append(rotate(i))
        last = time.monotonic()
        settled_after = None
        while settled is not None and settled_after is None and pinger.poll() is None:
            if settled():
                settled_after = round(time.monotonic() - last, 3)
            else:
                time.sleep(0.1)
        out, _ = pinger.communicate(timeout=span * 2 + 20)
    finally:
        _kill_group(pinger)
    summary = ping_summary(out, started_epoch)
    # Which rotation each lost ping followed: [before the first, after the 1st, after the 2nd, ...].
    lost_at = lost_send_times(out, summary["sent"], started_epoch)
    windows = lost_by_window(lost_at.values(), requested_at)
    summary["lost_runs"] = lost_runs(lost_at)
    return {"ping": summary, "requests": returned, "requested_at": requested_at, "lost_before_first": windows[0],
            "lost_after_each": windows[1:], "pings_planned": pings, "settled_after_last": settled_after}  # fmt: skip


def _baseline(dc, roles) -> dict:
    """The rotations' pings with no rotation."""
    pings = int(round(BASELINE_SECONDS / PING_INTERVAL))
    argv = ["ping", "-D", "-n", "-i", str(PING_INTERVAL), "-W", "1", "-c", str(pings), dc.layout.vms[roles.db][1]]
    try:
        done = subprocess.run(in_namespace(_vm_netns(dc, roles.pci), argv), capture_output=True, text=True,
                              timeout=BASELINE_SECONDS * 2 + 20, stdin=subprocess.DEVNULL)  # fmt: skip
    except subprocess.TimeoutExpired:
        return {"error": "ping did not finish"}
    return ping_summary(done.stdout)


def _psk_rotations(dc, roles) -> dict:
    fingerprints = [_tunnel(dc)["psk_fingerprint"]]

    def rotate(_: int) -> int:
        rotated = rest_call(dc.rest_url, "POST", "/v1/keys/rotate", expect=200)["rotated"]
        fingerprints.append(_tunnel(dc)["psk_fingerprint"])
        return rotated

    result = _rotations_under_ping(dc, roles, PSK_ROTATIONS, PSK_INTERVAL, PSK_TAIL, rotate)
    result["rotations"] = PSK_ROTATIONS
    result["distinct_psks"] = len(set(fingerprints))  # 1 + rotations when each made a new key
    return result


def _identity_rotations(dc, roles) -> dict:
    before_count = rest_get(dc.rest_url, "/v1/tunnels")["identity_rotations"]
    before_keys = _agent_fingerprints(dc)

    def rotate(i: int) -> str:
        hv = IDENTITY_HYPERVISORS[i % len(IDENTITY_HYPERVISORS)]
        rest_call(dc.rest_url, "POST", f"/v1/agents/{hv}/rotate-identity", expect=202)
        return hv

    def completed() -> int:
        return rest_get(dc.rest_url, "/v1/tunnels")["identity_rotations"] - before_count

    # Completed = the agent switched to its new key (the controller's counter). A rotation that
    # completes only after the pings stop would have its losses uncounted: the report flags it.
    result = _rotations_under_ping(dc, roles, IDENTITY_ROTATIONS, IDENTITY_INTERVAL, IDENTITY_TAIL, rotate,
                                   settled=lambda: completed() >= IDENTITY_ROTATIONS)  # fmt: skip
    deadline = time.monotonic() + 10
    while (done := completed()) < IDENTITY_ROTATIONS and time.monotonic() < deadline:
        time.sleep(0.2)
    after_keys = _agent_fingerprints(dc)
    result["rotations"] = IDENTITY_ROTATIONS
    result["completed"] = done
    result["keys_changed"] = sorted(hv for hv in before_keys if after_keys.get(hv) != before_keys[hv])
    return result


def run_datacentre() -> dict:
    """One repetition in a fresh data centre. Partial figures survive a failure (with `error`)."""
    started = time.monotonic()
    result: dict = {}
    try:
        with running(Layout(*LAYOUT)) as dc:
            dc.wait_for_fabric(timeout=60)
            roles = encryption_check.pick_roles(dc)  # vm1 (sensitivity=pci) -> vm2 (tier=db)
            result["flow"] = f"{roles.pci} -> {roles.db}"
            pci_ns, db_ns, db_ip = _vm_netns(dc, roles.pci), _vm_netns(dc, roles.db), dc.layout.vms[roles.db][1]
            if wait_for_ping(pci_ns, db_ip, 30) is None:
                raise RuntimeError(f"{roles.pci} never reached {roles.db} in clear")
            result["plain"] = iperf3(db_ns, pci_ns, db_ip)
            result.update(encryption_check.rule_to_encrypted_traffic(dc, roles))
            if wait_for_ping(pci_ns, db_ip, 10) is None:
                raise RuntimeError(f"{roles.pci} never reached {roles.db} through the tunnel")
            source_hv = dc.layout.vms[roles.pci][0]
            wg_before = _wireguard_bytes(dc, source_hv)
            result["encrypted"] = iperf3(db_ns, pci_ns, db_ip)
            wg_after = _wireguard_bytes(dc, source_hv)
            if wg_before is not None and wg_after is not None:
                result["encrypted"]["wireguard_bytes"] = wg_after - wg_before  # >= the TCP bytes when all was encrypted
            result["explain"] = encryption_check.explain(dc, roles.pci, roles.db)["encryption"]
            result["baseline"] = _baseline(dc, roles)
            result["psk"] = _psk_rotations(dc, roles)
            result["identity"] = _identity_rotations(dc, roles)
    except (RuntimeError, TimeoutError, OSError, ValueError, KeyError, subprocess.SubprocessError) as exc:
        result["error"] = repr(exc)
    result["wall_seconds"] = time.monotonic() - started
    result["summary"] = datacentre_summary(result)
    return result


def datacentre_summary(result: dict) -> str:
    def mbps(key: str) -> str:
        value = (result.get(key) or {}).get("mbps")
        return "failed" if value is None else f"{value:.0f}"

    bits = [f"plain {mbps('plain')} Mbit/s", f"encrypted {mbps('encrypted')} Mbit/s"]
    if result.get("rule_to_first_encrypted_packet_seconds") is not None:
        bits.append(f"rule to first encrypted packet {result['rule_to_first_encrypted_packet_seconds']} s")
    for key in ("psk", "identity"):
        ping = (result.get(key) or {}).get("ping") or {}
        if ping.get("lost") is not None:
            bits.append(f"{key} rotations lost {ping['lost']} of {ping['sent']} pings")
    if result.get("error"):
        bits.append(f"error {result['error']}")
    return ", ".join(bits)


# -- the raw test bed: wireguard-go, and VXLAN over it, between two namespaces -------------------------------
def _netns(side: str) -> str:
    return f"glb-{side}"


def _wg_name(side: str) -> str:
    return f"glbwg{side}"


def _vxlan_name(side: str) -> str:
    return f"glbvx{side}"


def _underlay_name(side: str) -> str:
    return f"glbul{side}"


def _underlay_ip(side: str) -> str:
    return f"192.168.250.{NUMBER[side]}"


def _wg_ip(side: str) -> str:
    return f"100.126.0.{NUMBER[side]}"


def _vxlan_ip(side: str) -> str:
    return f"10.250.0.{NUMBER[side]}"


def _netns_path(side: str) -> str:
    return f"/run/netns/{_netns(side)}"


def _sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=COMMAND_TIMEOUT, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"`{' '.join(argv)}` did not finish within {COMMAND_TIMEOUT:g} s") from None
    if check and done.returncode:
        raise RuntimeError(f"`{' '.join(argv)}` exited {done.returncode}: {' '.join(done.stderr.split())}")
    return done


def _clean_raw_bed() -> None:
    """Remove whatever the raw test bed makes; each step tolerates its thing being gone."""
    for side in SIDES:
        if Path(_netns_path(side)).exists():
            try:  # deleting the wg interface makes wireguard-go exit; stop() kills it if not
                WireGuard(_wg_name(side), run=SubprocessRunner(_netns_path(side))).stop()
            except DataplaneError:
                pass
    for side in SIDES:
        deadline = time.monotonic() + 3
        while wireguard_go_pids(_wg_name(side)) and time.monotonic() < deadline:
            time.sleep(0.05)
        for pid in wireguard_go_pids(_wg_name(side)):  # serving our interface name: ours
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        Path(f"{SOCKET_DIR}/{_wg_name(side)}.sock").unlink(missing_ok=True)
        if Path(_netns_path(side)).exists():
            # Whatever still runs in our namespace (an iperf3 server) would keep it alive unnamed.
            for pid in _sh("ip", "netns", "pids", _netns(side), check=False).stdout.split():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
            _sh("ip", "netns", "del", _netns(side), check=False)  # takes the veth end and the VXLAN device
        for link in (_underlay_name(side), _vxlan_name(side), _wg_name(side)):  # never in the root namespace, unless half-built
            _sh("ip", "link", "del", "dev", link, check=False)


def _build_raw_bed() -> None:
    for side in SIDES:
        _sh("ip", "netns", "add", _netns(side))
    _sh("ip", "link", "add", _underlay_name("a"), "netns", _netns("a"), "type", "veth",
        "peer", "name", _underlay_name("b"), "netns", _netns("b"))  # fmt: skip
    for side in SIDES:
        ns = _netns(side)
        _sh("ip", "-n", ns, "link", "set", "lo", "up")
        _sh("ip", "-n", ns, "link", "set", _underlay_name(side), "mtu", str(RAW_UNDERLAY_MTU), "up")
        _sh("ip", "-n", ns, "addr", "add", f"{_underlay_ip(side)}/24", "dev", _underlay_name(side))
    keys = {side: wgkeys.generate_private_key() for side in SIDES}
    psk = wgkeys.generate_psk()
    for side in SIDES:
        other = "b" if side == "a" else "a"
        wireguard = WireGuard(_wg_name(side), mtu=RAW_WG_MTU, run=SubprocessRunner(_netns_path(side)))
        wireguard.ensure_up(keys[side], f"{_wg_ip(side)}/24")
        public = wgkeys.encode(wgkeys.public_key(keys[other]))
        wireguard.apply_peers({public: PeerSpec(public, psk, f"{_underlay_ip(other)}:51820", f"{_wg_ip(other)}/32")})
    for side in SIDES:
        ns, other, vxlan = _netns(side), "b" if side == "a" else "a", _vxlan_name(side)
        _sh("ip", "-n", ns, "link", "add", vxlan, "type", "vxlan", "id", str(RAW_VNI), "local", _wg_ip(side),
            "remote", _wg_ip(other), "dstport", "4789", "nolearning")  # fmt: skip
        _sh("ip", "-n", ns, "link", "set", vxlan, "mtu", str(RAW_VXLAN_MTU), "up")
        _sh("ip", "-n", ns, "addr", "add", f"{_vxlan_ip(side)}/24", "dev", vxlan)


@contextmanager
def raw_tunnel_bed() -> Iterator[None]:
    """glb-a and glb-b, a veth at MTU 9000 between them, wireguard-go (glbwga, glbwgb) over it, and a VXLAN
    device (glbvxa, glbvxb) over wg. Holds the Mininet lock throughout: Mininet runs share these names'
    machine-wide resources (wireguard-go's socket directory) and the CPU."""
    lock = MininetLock()
    lock.acquire()
    try:
        _clean_raw_bed()  # what a killed earlier run left
        try:
            _build_raw_bed()
            yield
        finally:
            _clean_raw_bed()
    finally:
        lock.release()


def run_raw() -> dict:
    """One repetition: iperf3 over the wg addresses, then over the VXLAN addresses, in a fresh test bed."""
    started = time.monotonic()
    result: dict = {}
    try:
        with raw_tunnel_bed():
            a, b = _netns_path("a"), _netns_path("b")
            for key, where, options in RAW_PATHS:
                ip = _wg_ip("b") if where == "wg" else _vxlan_ip("b")
                if wait_for_ping(a, ip, 10) is None:
                    result[key] = {"mbps": None, "error": f"{ip} never answered a ping"}
                    continue
                result[key] = iperf3(b, a, ip, extra=options)
    except (RuntimeError, OSError, DataplaneError, subprocess.SubprocessError) as exc:
        result["error"] = repr(exc)
    result["wall_seconds"] = time.monotonic() - started
    bits = [f"{key} {'failed' if (v := (result.get(key) or {}).get('mbps')) is None else f'{v:.0f}'} Mbit/s"
            for key, _, _ in RAW_PATHS]  # fmt: skip
    result["summary"] = ", ".join(bits + ([f"error {result['error']}"] if "error" in result else []))
    return result
