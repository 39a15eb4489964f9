"""Packet-in handling of Goldilocks, Ryu's simple_switch_13 and Faucet under one generator: emulated switches.

The generator is bench/ofswitch.py's emulated OpenFlow 1.3 switches (no Mininet, no Open vSwitch):
SWITCHES switches with PORTS ports each and no cables between them, the same for every controller
(Faucet gets a generated faucet.yaml naming those dpids and ports). Port 1 of each switch has a
*gateway* host; every other port gets new hosts. A new host's first frame is an IPv4/UDP datagram
to its switch's gateway, punted to the controller as the switch running that controller's pipeline
would punt it (`Punt`: table, cookie, reason, and the VLAN tag Faucet's pipeline pushed first).

The *answer* is, for every controller, the first flow-mod that adds an entry matching exactly that
host's MAC as eth_src on its in_port: the entry that admits it, after which its frames stop coming to
the controller. Per controller that is:
- Goldilocks: the ingress (table 0) entry `in_port, eth_src` of the host it learned;
- simple_switch_13: its learning flow, table 0 `in_port, eth_src, eth_dst` (it installs one only
  once the destination is known: hence the gateway, learned in the warm-up);
- Faucet: its eth_src table entry `in_port, vlan_vid, eth_src`.
Latency runs from the packet-in written to the controller's socket to that flow-mod read from it, on
one clock. A host not answered within RETRY seconds sends its frame again, as a real host retries
(a controller may drop packet-ins it cannot keep up with), at most TRIES times; its latency still
counts from its first frame.

Each rate step gets a fresh controller and fresh switches: warm-up (every switch connected and
synced, every gateway known), then new hosts at the offered rate for STEP_SECONDS, then up to
DRAIN_SECONDS for the last answers. *Answered per second*: the hosts answered, divided by the time from
the first frame to the last answer. Saturation is an offered rate far above what any of them answers.

    .venv/bin/python -m bench.peers packet-in goldilocks --rate 200      # one step, prints one JSON line
    .venv/bin/python -m bench.peers packet-in faucet                       # the whole ladder
"""

from __future__ import annotations

import asyncio
import json
import struct
import sys
import time
from collections import deque
from dataclasses import dataclass, field

from bench.ofswitch import OFPP_LOCAL, OFPR_ACTION, OFPR_NO_MATCH, EmulatedSwitch, Fabric, _source, packet_in

CONTROLLERS = ("goldilocks", "simple_switch_13", "faucet")
SWITCHES = 8
PORTS = 64  # port 1: the gateway; 2: the warm-up's host; 3..PORTS: new hosts
RATES = (100, 200, 400, 800)  # offered new hosts per second, the ladder
SATURATION = 10_000  # offered new hosts per second, above what any of them answers here (6,100/s at most)
STEP_SECONDS = 3.0
SATURATION_SECONDS = 1.0
DRAIN_SECONDS = 10.0
RETRY = 1.0
TRIES = 3
WARMUP_TIMEOUT = 30.0
DPID_BASE = 0xE000
FAUCET_COOKIE = 0x5ADC15C0  # Faucet's default dp cookie: every flow it installs carries it
FAUCET_ETH_SRC_TABLE = 1  # its pipeline here: vlan (0), eth_src (1), eth_dst, flood
# Faucet learns at most 256 hosts per VLAN on a switch unless told otherwise; the saturation step
# brings SATURATION * SATURATION_SECONDS / SWITCHES (1,250) to each: raised, and said so in the report.
FAUCET_MAX_HOSTS = 4096


@dataclass(frozen=True)
class Punt:
    """How a switch running a controller's pipeline sends a new host's frame up."""

    table: int
    cookie: int
    reason: int
    vlan: int | None = None  # the tag the pipeline pushed before the punt

    def frame(self, frame: bytes) -> bytes:
        if self.vlan is None:
            return frame
        return frame[:12] + struct.pack("!HH", 0x8100, self.vlan) + frame[12:]  # TCI: priority 0, the VID


def gateway_mac(dpid: int) -> bytes:
    return b"\x02\xaa" + dpid.to_bytes(4, "big")


def host_mac(n: int) -> bytes:
    return b"\x02\xbb" + n.to_bytes(4, "big")


def udp_frame(src: bytes, dst: bytes, n: int) -> bytes:
    """A host's IPv4/UDP datagram to its gateway (addresses from its number)."""
    ip_src = bytes([10, 128 + (n >> 16 & 0x3F), n >> 8 & 0xFF, n & 0xFF])
    payload = struct.pack("!HHHH", 40000, 9, 8, 0)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 1, 0, 64, 17, 0, ip_src, bytes([10, 0, 0, 1])) + payload
    return dst + src + b"\x08\x00" + ip


def arp_announcement(mac: bytes, ip: bytes) -> bytes:
    """A gratuitous ARP request (broadcast): how the gateway makes itself known."""
    body = struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1) + mac + ip + b"\x00" * 6 + ip
    return b"\xff" * 6 + mac + b"\x08\x06" + body


@dataclass
class Stopwatch:
    """New hosts waiting for their answer: (dpid, port, MAC) -> first frame's time; and the answers."""

    waiting: dict[tuple[int, int, bytes], float] = field(default_factory=dict)
    answered: dict[tuple[int, int, bytes], float] = field(default_factory=dict)  # -> latency (s)
    last_answer: float | None = None
    admitted: set[tuple[int, int, bytes]] = field(default_factory=set)  # every (dpid, port, MAC) admitted

    def flow_mod(self, dpid: int, body: bytes) -> None:
        command = body[17]
        if command > 2:  # only ADD, MODIFY, MODIFY_STRICT can admit
            return
        match_len = struct.unpack_from("!H", body, 42)[0]
        source = _source(body[44 : 40 + match_len])
        if source is None:
            return
        key = (dpid, source[0], source[1])
        self.admitted.add(key)
        sent = self.waiting.pop(key, None)
        if sent is not None:
            now = time.monotonic()
            self.answered[key] = now - sent
            self.last_answer = now


@dataclass
class TimedSwitch(EmulatedSwitch):
    """An emulated switch that also tells the stopwatch about every flow-mod it is sent."""

    stopwatch: Stopwatch | None = None

    def flow_mod(self, body: bytes) -> None:
        super().flow_mod(body)
        if self.stopwatch is not None:
            self.stopwatch.flow_mod(self.dpid, body)


def switch_ports(switches: int = SWITCHES, ports: int = PORTS) -> dict[str, tuple[int, list[int]]]:
    """The emulated switches: name -> (dpid, port numbers)."""
    return {f"em{k + 1}": (DPID_BASE + k + 1, list(range(1, ports + 1))) for k in range(switches)}


def build(stopwatch: Stopwatch, switches: int = SWITCHES, ports: int = PORTS) -> Fabric:
    fabric = Fabric(miss_cookie=0, reconnect=False)
    for name, (dpid, numbers) in switch_ports(switches, ports).items():
        port_map = {p: (f"{name}-eth{p}", b"\x0a" + dpid.to_bytes(3, "big") + p.to_bytes(2, "big")) for p in numbers}
        port_map[OFPP_LOCAL] = (name, b"\x0a" + dpid.to_bytes(3, "big") + b"\xff\xfe")
        fabric.add(TimedSwitch(dpid, port_map, stopwatch=stopwatch))
    return fabric


# -- the controllers ------------------------------------------------------------------------------
class Peer:
    """One controller under test: start, stop, where it listens, its process, how a switch punts to it."""

    name: str
    punt: Punt
    answer: str  # the flow-mod that answers a new host, in words

    def __init__(self, name: str, switches: int = SWITCHES, ports: int = PORTS) -> None:
        self.name = name
        self.process = None
        if name == "goldilocks":
            from apps.forwarding import MISS_COOKIE
            from mininet_scenarios.harness import ControllerProcess

            self.process = ControllerProcess()
            self.punt = Punt(0, MISS_COOKIE, OFPR_NO_MATCH)
            self.answer = "table 0 (ingress) add, match in_port + eth_src"
        elif name == "simple_switch_13":
            from bench.measure import RyuSimpleSwitch

            self.process = RyuSimpleSwitch()
            self.punt = Punt(0, 0, OFPR_NO_MATCH)
            self.answer = "table 0 add, match in_port + eth_src + eth_dst (output to the gateway's port)"
        elif name == "faucet":
            from bench.measure import FaucetProcess
            from mininet_scenarios.faucet_config import VLAN_VID, dump, for_switches

            self.process = FaucetProcess(config=dump(for_switches(switch_ports(switches, ports), FAUCET_MAX_HOSTS)))
            self.punt = Punt(FAUCET_ETH_SRC_TABLE, FAUCET_COOKIE, OFPR_ACTION, VLAN_VID)
            self.answer = f"table {FAUCET_ETH_SRC_TABLE} (eth_src) add, match in_port + vlan_vid + eth_src"
        else:
            raise ValueError(f"unknown controller {name!r}: one of {', '.join(CONTROLLERS)}")

    def start(self) -> None:
        self.process.start()

    def stop(self) -> None:
        self.process.stop()

    @property
    def of_port(self) -> int:
        return self.process.of_port

    @property
    def pid(self) -> int:
        return self.process.proc.pid

    def log_tail(self) -> str:
        return self.process.log_tail(15)


def _cpu_seconds(pid: int) -> float:
    import os

    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def quantile(values: list[float], q: float) -> float | None:
    """The q-quantile, nearest rank (no interpolation: a value that was measured)."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(round(q * len(ordered) + 0.5)) - 1))]


# -- one step -------------------------------------------------------------------------------------
async def _warm_up(fabric: Fabric, stopwatch: Stopwatch, peer: Peer, timeout: float) -> float:
    """Every switch connected and sent flows; its gateway announced and a first host (port 2,
    MAC 0) admitted there: the controller is ready for new hosts. Returns the seconds it took."""
    started = time.monotonic()
    deadline = started + timeout
    probes = {dpid: (dpid, 2, host_mac(0)) for dpid in fabric.switches}
    while time.monotonic() < deadline:
        for dpid, switch in fabric.switches.items():
            if switch.writer is None or not switch.counters.flow_mods:
                continue
            gw = gateway_mac(dpid)
            fabric.send_packet_in(switch, packet_in(1, peer.punt.frame(arp_announcement(gw, bytes([10, 0, 0, 1]))),
                                                    peer.punt.table, peer.punt.cookie, peer.punt.reason))
            if probes[dpid] not in stopwatch.admitted:
                fabric.send_packet_in(switch, packet_in(2, peer.punt.frame(udp_frame(host_mac(0), gw, 0)),
                                                        peer.punt.table, peer.punt.cookie, peer.punt.reason))
        await asyncio.sleep(0.5)
        if all(p in stopwatch.admitted for p in probes.values()):
            await asyncio.sleep(1.0)  # let the warm-up's own work finish before the clock starts
            return time.monotonic() - started
    missing = [f"{d:x}" for d, p in probes.items() if p not in stopwatch.admitted]
    connected = sum(1 for s in fabric.switches.values() if s.writer is not None)
    raise TimeoutError(f"{peer.name}: not ready after {timeout:.0f} s: {connected}/{len(fabric.switches)} switches "
                       f"connected, first host not admitted on {missing}")


async def _step(peer: Peer, rate: float, seconds: float, switches: int, ports: int) -> dict:
    stopwatch = Stopwatch()
    fabric = build(stopwatch, switches, ports)
    tasks = [asyncio.create_task(fabric.run_switch(s, "127.0.0.1", peer.of_port)) for s in fabric.switches.values()]
    try:
        warm = await _warm_up(fabric, stopwatch, peer, WARMUP_TIMEOUT)
        dpids = sorted(fabric.switches)
        count = int(rate * seconds)
        hosts = []
        for n in range(1, count + 1):
            dpid = dpids[n % len(dpids)]
            port = 3 + (n // len(dpids)) % (ports - 2)  # ports 3..PORTS (1: gateway, 2: the warm-up's host)
            hosts.append((dpid, port, host_mac(n), n))
        tries: dict[tuple[int, int, bytes], int] = {}
        due: deque = deque()
        cpu_before = _cpu_seconds(peer.pid)
        generator_cpu_before = time.process_time()
        dropped_before = fabric.counters.packet_ins_dropped
        flow_mods_before, packet_outs_before = fabric.counters.flow_mods, fabric.counters.packet_outs
        punt = peer.punt

        def send(dpid: int, port: int, mac: bytes, n: int) -> None:
            frame = punt.frame(udp_frame(mac, gateway_mac(dpid), n))
            fabric.send_packet_in(fabric.switches[dpid], packet_in(port, frame, punt.table, punt.cookie, punt.reason))

        hosts_by_key = {h[:3]: h[3] for h in hosts}
        started = time.monotonic()
        sent = 0
        retries = 0
        while sent < count:
            target = min(count, int((time.monotonic() - started) * rate) + 1)
            while sent < target:
                dpid, port, mac, n = hosts[sent]
                key = (dpid, port, mac)
                now = time.monotonic()
                stopwatch.waiting[key] = now
                tries[key] = 1
                due.append((now, key))
                send(dpid, port, mac, n)
                sent += 1
            retries += _retry(stopwatch, due, tries, hosts_by_key, send)
            await asyncio.sleep(0.002)
        last_sent = time.monotonic()
        while stopwatch.waiting and time.monotonic() - last_sent < DRAIN_SECONDS:
            retries += _retry(stopwatch, due, tries, hosts_by_key, send)
            await asyncio.sleep(0.01)
        cpu = _cpu_seconds(peer.pid) - cpu_before
        generator_cpu = time.process_time() - generator_cpu_before
        latencies = list(stopwatch.answered.values())
        span = (stopwatch.last_answer - started) if stopwatch.last_answer else None
        disconnected = sum(1 for s in fabric.switches.values() if s.writer is None)
        return {
            "controller": peer.name,
            "offered_per_second": rate,
            "seconds": seconds,
            "hosts": count,
            "sent_seconds": round(last_sent - started, 3),
            "answered": len(latencies),
            "unanswered": len(stopwatch.waiting),
            "answered_per_second": round(len(latencies) / span, 1) if span else None,
            "p50": quantile(latencies, 0.5),
            "p90": quantile(latencies, 0.9),
            "p99": quantile(latencies, 0.99),
            "max": max(latencies, default=None),
            "retries": retries,
            # Everything the controller sent the switches meanwhile, LLDP probes and audits included.
            "flow_mods": fabric.counters.flow_mods - flow_mods_before,
            "packet_outs": fabric.counters.packet_outs - packet_outs_before,
            "packet_ins_dropped_by_switches": fabric.counters.packet_ins_dropped - dropped_before,
            "controller_cpu_seconds": round(cpu, 2),
            "generator_cpu_seconds": round(generator_cpu, 2),  # the emulated switches, this process
            "warm_up_seconds": round(warm, 2),
            "switches_disconnected": disconnected,
            "answer": peer.answer,
        }
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _retry(stopwatch: Stopwatch, due: deque, tries: dict, numbers: dict, send) -> int:
    """Hosts unanswered for RETRY seconds send their frame again (at most TRIES in all). `due` holds
    (time of the last try, host) in the order they were tried."""
    now = time.monotonic()
    again = 0
    while due and now - due[0][0] >= RETRY:
        _, key = due.popleft()
        if key in stopwatch.waiting and tries[key] < TRIES:
            tries[key] += 1
            due.append((now, key))
            send(*key, numbers[key])
            again += 1
    return again


def measure_step(name: str, rate: float, seconds: float = STEP_SECONDS, switches: int = SWITCHES,
                 ports: int = PORTS) -> dict:
    """One step with a fresh controller and fresh switches; a failure is recorded, not raised."""
    peer = Peer(name, switches, ports)
    started = time.monotonic()
    try:
        peer.start()
        result = asyncio.run(_step(peer, rate, seconds, switches, ports))
    except Exception as exc:  # noqa: BLE001 - a benchmark records failures and goes on
        result = {"controller": name, "offered_per_second": rate, "error": repr(exc), "log_tail": peer.log_tail()}
    finally:
        peer.stop()
    result["wall_seconds"] = round(time.monotonic() - started, 1)
    return result


def ladder(name: str, rates=RATES, saturation: float = SATURATION, log=print) -> list[dict]:
    steps = []
    for rate, seconds in [*((r, STEP_SECONDS) for r in rates), (saturation, SATURATION_SECONDS)]:
        step = measure_step(name, rate, seconds)
        step["saturation"] = rate == saturation
        log(f"packet-in {name} {rate}/s: " + (f"FAILED {step['error']}" if "error" in step else
            f"answered {step['answered']}/{step['hosts']}, {step['answered_per_second']}/s, p50 "
            f"{_ms(step['p50'])} p90 {_ms(step['p90'])} p99 {_ms(step['p99'])} ms, retries {step['retries']}"))
        steps.append(step)
    return steps


def _ms(value: float | None) -> str:
    return "–" if value is None else f"{value * 1000:.1f}"


def settings() -> dict:
    return {"switches": SWITCHES, "ports": PORTS, "rates": list(RATES), "saturation": SATURATION,
            "step_seconds": STEP_SECONDS, "saturation_seconds": SATURATION_SECONDS, "drain_seconds": DRAIN_SECONDS,
            "retry": RETRY, "tries": TRIES}


def main(argv=None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m bench.peers", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    pkt = sub.add_parser("packet-in", help="the packet-in ladder (or one --rate) for one controller")
    pkt.add_argument("controller", choices=CONTROLLERS)
    pkt.add_argument("--rate", type=float, help="one step at this offered rate (new hosts per second)")
    pkt.add_argument("--seconds", type=float, default=STEP_SECONDS)
    args = parser.parse_args(argv)
    if args.rate is not None:
        if not 0 < args.rate <= 20_000 or not 0 < args.seconds <= 30:
            parser.error("--rate must be in (0, 20000] and --seconds in (0, 30]")
        print(json.dumps(measure_step(args.controller, args.rate, args.seconds)))
    else:
        print(json.dumps(ladder(args.controller, log=lambda m: print(m, file=sys.stderr, flush=True))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
