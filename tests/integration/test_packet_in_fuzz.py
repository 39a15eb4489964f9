"""A VM that sends the controller 100,000 malformed or truncated frames cannot crash it, grow its
memory, teach it links or addresses that do not exist, or keep its neighbours from being learned.

The real controller process, and two emulated hypervisors cabled together (bench/ofswitch.py, the
emulator of the cold-converge benchmark: no Open vSwitch, no Mininet). A fuzzing VM on the first
hypervisor's port 1 sends, as packet-ins of every kind a switch sends up (table miss, ARP copy,
unanswered ARP, port-security evidence, quarantine follow-up, LLDP), seeded mutations of valid ARP,
LLDP (claiming to be the other hypervisor's uplink, and replaying real probes it was sent), IPv4,
IPv6 neighbour discovery, 802.1Q and QinQ frames, plus random bytes and frames shorter than an
Ethernet header. They are paced by what the controller has taken: it handles nearly all of them,
rather than shedding most at its intake. Meanwhile two new VMs join, one on each hypervisor.
"""

from __future__ import annotations

import asyncio
import collections
import time

from apps import pipeline
from apps.forwarding import MISS_COOKIE
from bench.ofswitch import OFPP_LOCAL, OFPR_ACTION, OFPR_NO_MATCH, EmulatedSwitch, Fabric, fuzz_frames, packet_in
from mininet_scenarios.harness import ControllerProcess, rest_get
from tests import prometheus_text

FRAMES = 100_000
SEED = 20261201
WINDOW = 400  # frames sent and not yet taken by the controller: below its intake's 512 per switch
RATE = 5_000  # frames per second at most
CAMPAIGN_LIMIT = 150.0  # seconds: the campaign gives up (and fails) after this
RSS_GROWTH_MAX_MIB = 40

HV1, HV2 = 0x1001, 0x1002
UPLINK1, UPLINK2 = 4, 3


def _cookie(app: int) -> int:
    return (pipeline.COOKIE_MAGIC << pipeline.COOKIE_MAGIC_SHIFT) | (app << pipeline.COOKIE_APP_SHIFT) | 0x1234


# (table, cookie, reason) of each kind of packet-in a switch sends up; the controller tells them apart
# by table and cookie (apps/forwarding.py punt_reason), whatever the frame holds.
PUNTS = [
    (pipeline.INGRESS, MISS_COOKIE, OFPR_NO_MATCH),
    (pipeline.INGRESS, MISS_COOKIE, OFPR_NO_MATCH),
    (pipeline.INGRESS, _cookie(pipeline.APP_TOPOLOGY), OFPR_ACTION),  # an ARP copy
    (pipeline.FORWARD, _cookie(pipeline.APP_TOPOLOGY), OFPR_ACTION),  # an unanswered ARP request
    (pipeline.INGRESS, _cookie(pipeline.APP_PORT_SECURITY), OFPR_ACTION),  # evidence
    (pipeline.INGRESS, _cookie(pipeline.APP_QUARANTINE), OFPR_ACTION),  # a quarantined VM's frame
]


class VM:
    def __init__(self, dpid: int, port: int, mac: str, ip: str) -> None:
        self.dpid, self.port, self.mac, self.ip = dpid, port, mac, ip
        self.mac_bytes = bytes.fromhex(mac.replace(":", ""))
        self.ip_bytes = bytes(int(b) for b in ip.split("."))


# Neighbours' addresses are far (in bits) from the fuzzer's, so no bit flip of its own lands on theirs.
FUZZER = VM(HV1, 1, "02:f0:0f:f0:0f:01", "10.1.0.66")
SAME_SWITCH = VM(HV1, 2, "02:00:00:00:00:0b", "192.168.7.11")
OTHER_SWITCH = VM(HV2, 1, "02:00:00:00:00:0c", "192.168.7.12")
JOINS_OTHER = VM(HV2, 2, "02:00:00:00:00:0d", "192.168.7.13")  # new during the campaign, on the other switch
JOINS_SAME = VM(HV1, 3, "02:00:00:00:00:0e", "192.168.7.14")  # new during the campaign, next to the fuzzer


def _fabric() -> Fabric:
    unanswered = _cookie(pipeline.APP_TOPOLOGY)
    fabric = Fabric(MISS_COOKIE, unanswered_cookie=unanswered)
    for dpid, uplink in ((HV1, UPLINK1), (HV2, UPLINK2)):
        ports = {p: (f"hv{dpid & 0xF}-eth{p}", bytes([0x0A, 0, 0, 0, dpid & 0xFF, p])) for p in range(1, uplink + 1)}
        fabric.add(EmulatedSwitch(dpid, {**ports, OFPP_LOCAL: (f"hv{dpid & 0xF}", bytes([0x0A, 0, 0, 0, dpid & 0xFF, 0xFE]))}))
    fabric.cable((HV1, UPLINK1), (HV2, UPLINK2))
    return fabric


def _rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def _metrics(controller: ControllerProcess) -> dict[str, float]:
    """Every goldilocks_ sample name, summed over its series (packet-ins are counted per switch)."""
    text = rest_get(controller.rest_url, "/metrics", timeout=30)
    names = {s.name for family in prometheus_text.families(text).values() for s in family.samples}
    return {name: prometheus_text.total(text, name) for name in names if name.startswith("goldilocks_")}


def _taken(m: dict[str, float]) -> float:
    """Packet-ins the controller took off the connections: handled, waiting, coalesced or shed."""
    return sum(
        m.get(f"goldilocks_{k}", 0.0)
        for k in ("packet_ins_total", "packet_ins_waiting", "packet_ins_coalesced_total", "packet_ins_shed_total")
    )


def _hosts(topo: dict) -> dict[str, dict]:
    return {h["mac"]: h for h in topo["hosts"]}


def _learned(topo: dict, vm: VM) -> bool:
    host = _hosts(topo).get(vm.mac)
    return host is not None and (int(host["dpid"], 16), host["port"], host["ips"]) == (vm.dpid, vm.port, [vm.ip])


def _answers(switch: EmulatedSwitch) -> set[str]:
    """The addresses the switch's ARP responders answer (arp_tpa of its entries at their priority)."""
    held = switch.held_matches(pipeline.FORWARD, pipeline.PRIO_ARP_RESPONDER)
    return {".".join(str(b) for b in fields[23]) for fields in held if 23 in fields}


async def _campaign(controller: ControllerProcess) -> dict:
    loop = asyncio.get_running_loop()

    async def call(fn, *args):
        return await loop.run_in_executor(None, fn, *args)

    fabric = _fabric()
    tasks = [asyncio.create_task(fabric.run_switch(s, "127.0.0.1", controller.of_port)) for s in fabric.switches.values()]

    async def learn(vms: list[VM], timeout: float, what: str) -> float:
        """Each VM asks for a neighbour's address every 0.5 s until the controller knows it."""
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            topo = await call(rest_get, controller.rest_url, "/v1/topology")
            if all(_learned(topo, vm) for vm in vms):
                return time.monotonic() - started
            for vm in vms:
                if not _learned(topo, vm):
                    fabric.play_arp(vm.dpid, vm.port, vm.mac_bytes, vm.ip_bytes, SAME_SWITCH.ip_bytes)
            await asyncio.sleep(0.5)
        raise AssertionError(f"{what}: not learned in {timeout} s: {_hosts(topo)}")

    try:
        started = time.monotonic()
        while True:
            topo = await call(rest_get, controller.rest_url, "/v1/topology")
            if len(topo["links"]) == 1 and all(s["connected"] for s in topo["switches"]) and len(topo["switches"]) == 2:
                break
            assert time.monotonic() - started < 30, f"the fabric was not learned: {topo}"
            await asyncio.sleep(0.2)
        link_before = topo["links"]
        await learn([FUZZER, SAME_SWITCH, OTHER_SWITCH], 30, "the first VMs")
        await asyncio.sleep(4.0)  # ports settle; the controller probes the VM ports now and then too
        baseline_rss = _rss_mib(controller.proc.pid)
        before = await call(_metrics, controller)
        captured = tuple(v for k, v in fabric.probes_to_vms.items() if k == (FUZZER.dpid, FUZZER.port))

        fuzzer_switch = fabric.switches[FUZZER.dpid]
        # More than FRAMES: a frame the emulator drops (its connection's backlog is full) is not counted.
        fuzz = (FUZZER.mac_bytes, FUZZER.ip_bytes, SAME_SWITCH.ip_bytes, (HV2, UPLINK2), captured)
        frames = fuzz_frames(SEED, 2 * FRAMES, *fuzz)
        kinds: collections.Counter = collections.Counter()
        sent = refused = 0
        taken = _taken(before)
        joined: dict[str, float] = {}
        joining: asyncio.Task | None = None
        peak_rss = baseline_rss

        async def watch() -> None:
            nonlocal taken, peak_rss
            while True:
                taken = _taken(await call(_metrics, controller))
                peak_rss = max(peak_rss, _rss_mib(controller.proc.pid))
                await asyncio.sleep(0.1)

        async def join() -> None:
            joined["other switch"] = await learn([JOINS_OTHER], 60, "a VM joining the other switch")
            joined["fuzzer's switch"] = await learn([JOINS_SAME], 60, "a VM joining the fuzzer's switch")

        watcher = asyncio.create_task(watch())
        campaign_started = time.monotonic()
        try:
            for n, (kind, frame) in enumerate(frames):
                if sent >= FRAMES:
                    break
                while sent - (taken - _taken(before)) > WINDOW or sent > RATE * (time.monotonic() - campaign_started):
                    assert controller.proc.poll() is None, f"the controller died: {controller.log_tail()}"
                    assert time.monotonic() - campaign_started < CAMPAIGN_LIMIT, f"only {sent} frames taken in {CAMPAIGN_LIMIT} s"
                    await asyncio.sleep(0.005)
                table, cookie, reason = PUNTS[n % len(PUNTS)]
                if fabric.send_packet_in(fuzzer_switch, packet_in(FUZZER.port, frame, table, cookie, reason)):
                    sent += 1
                    kinds[kind] += 1
                else:
                    refused += 1
                if sent == FRAMES // 2 and joining is None:
                    joining = asyncio.create_task(join())
                if n % 64 == 0:
                    await asyncio.sleep(0)
            while taken - _taken(before) < sent and time.monotonic() - campaign_started < CAMPAIGN_LIMIT:
                await asyncio.sleep(0.1)
            campaign_seconds = time.monotonic() - campaign_started
        finally:
            watcher.cancel()
        assert joining is not None
        await joining
        await asyncio.sleep(2.0)  # the last frames' compiles and flow-mods
        after = await call(_metrics, controller)
        topo = await call(rest_get, controller.rest_url, "/v1/topology")
        return {
            "fabric": fabric,
            "link_before": link_before,
            "topo": topo,
            "sent": sent,
            "refused_by_backlog": refused,
            "kinds": dict(kinds),
            "captured_probes": len(captured),
            "campaign_seconds": campaign_seconds,
            "joined_seconds": joined,
            "baseline_rss": baseline_rss,
            "peak_rss": peak_rss,
            "rss": _rss_mib(controller.proc.pid),
            "delta": {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after if k.endswith("_total")},
            "after": after,
        }
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def test_a_vm_fuzzing_the_packet_in_path_breaks_nothing():
    controller = ControllerProcess().start()
    try:
        result = asyncio.run(_campaign(controller))
        fabric, topo, delta = result["fabric"], result["topo"], result["delta"]
        print(
            f"fuzz: {result['sent']} frames in {result['campaign_seconds']:.1f} s ({result['kinds']}), "
            f"{result['captured_probes']} real probes replayed; controller handled {delta['goldilocks_packet_ins_total']:.0f}, "
            f"coalesced {delta.get('goldilocks_packet_ins_coalesced_total', 0):.0f}, "
            f"shed {delta.get('goldilocks_packet_ins_shed_total', 0):.0f}, "
            f"LLDP rejected {delta.get('goldilocks_lldp_rejected_total', 0):.0f}; "
            f"RSS {result['baseline_rss']:.1f} MiB -> {result['rss']:.1f} MiB (peak {result['peak_rss']:.1f}); "
            f"new VMs learned in {result['joined_seconds']}"
        )
        assert result["sent"] >= FRAMES, result

        # It is up, and answers.
        assert controller.proc.poll() is None, controller.log_tail()
        assert rest_get(controller.rest_url, "/v1/health")["status"] == "ok"
        assert delta["goldilocks_packet_ins_total"] >= 0.9 * FRAMES, "the controller handled the frames, not shed them"

        # Its memory is bounded.
        growth = result["rss"] - result["baseline_rss"]
        assert growth < RSS_GROWTH_MAX_MIB, f"RSS grew by {growth:.1f} MiB"

        # The spoofed LLDP made no link, and moved nobody.
        assert topo["links"] == result["link_before"], topo["links"]
        hosts = _hosts(topo)
        for vm in (SAME_SWITCH, OTHER_SWITCH, JOINS_OTHER, JOINS_SAME):
            assert _learned(topo, vm), f"{vm.mac}: {hosts.get(vm.mac)}"
        claimed = collections.Counter(ip for h in hosts.values() for ip in h["ips"])
        for vm in (SAME_SWITCH, OTHER_SWITCH, JOINS_OTHER, JOINS_SAME):
            assert claimed[vm.ip] == 1, f"{vm.ip} is claimed by more than its VM"

        # The new VMs are admitted by their switches, and their neighbours' ARP is answered by the
        # switches themselves; nobody is answered for an address no host can have.
        hv1, hv2 = fabric.switches[HV1], fabric.switches[HV2]
        assert (JOINS_OTHER.port, JOINS_OTHER.mac_bytes) in hv2.known
        assert (JOINS_SAME.port, JOINS_SAME.mac_bytes) in hv1.known
        for switch in (hv1, hv2):
            answers = _answers(switch)
            assert {SAME_SWITCH.ip, OTHER_SWITCH.ip, JOINS_OTHER.ip, JOINS_SAME.ip} <= answers, answers
            bogus = sorted(ip for ip in answers if not _unicast(ip))
            assert not bogus, f"switch {switch.dpid:x} answers ARP for {bogus}"

        # No error storm, no traceback.
        with open(controller.log_path, errors="replace") as log:
            lines = log.read().splitlines()
        tracebacks = [n for n, line in enumerate(lines) if "Traceback" in line]
        errors = [line for line in lines if " ERROR " in line or line.startswith("ERROR")]
        warnings = [line for line in lines if "WARNING" in line]
        print(f"log: {len(lines)} lines, {len(errors)} errors, {len(warnings)} warnings, {len(tracebacks)} tracebacks")
        assert not tracebacks, "\n".join(lines[tracebacks[0] : tracebacks[0] + 30])
        assert len(errors) <= 5, errors[:10]
    finally:
        controller.stop()


def _unicast(ip: str) -> bool:
    first = int(ip.split(".")[0])
    return 0 < first < 224 and first != 127
