"""REST writes under load: the real controller process, emulated hypervisors connecting and disconnecting
all the while (bench/ofswitch.py), and VMs created one by one over HTTP up to VMS (20,000): first by one
client, each request after the last answer, then by CLIENTS clients at once (a fresh controller each).

Measured, per run:
- writes/s at 1,000, 10,000 and 20,000 VMs: the writes are cut into windows of WINDOW answers (in the
  order they were answered) and each window's rate is WINDOW over its duration; the figure at N VMs is
  the median of the windows in the last 1,000 writes before N;
- the latency of a write (request sent to answer read) p50 and p99, over the whole run and near each
  mark; and of GET /v1/health, asked every 0.1 s by another client meanwhile (what a load balancer's
  health check would see);
- every request gets an answer (a write that gets none, or not a 201, is counted as an error);
- the emulated switches' churn: every CHURN_PERIOD one hypervisor disconnects or one reconnects, a
  quarter of them disconnected at any time, so the controller handles switches coming and going
  (handshakes, table read-backs, reconciles, compiles) during the writes;
- the controller's CPU seconds (its /proc entry);
- after the concurrent run, at full size and still churning, what the operator's tools cost: a
  /metrics scrape and a GET /v1/fabric (the web view's document: time and size, and a poll answered
  304), `goldilocks status` end to end; and the health check's latency while VIEWS web views poll
  /v1/fabric every 0.5 s as the page does, against the same probe with no view open (measured
  just before, in the same run).

    .venv/bin/python -m bench.rest_load [--vms 20000] [--clients 4] [--hypervisors 40]   # prints one JSON line
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import random
import statistics
import threading
import time
from email.message import Message

from bench.converge import _proc_stats, build, exit_on_term, json_from_child

VMS = 20_000
MARKS = (1_000, 10_000, 20_000)
WINDOW = 200  # answers per window
MARK_SPAN = 1_000  # the windows of the last this many writes before a mark make its figure
CLIENTS = 4
HYPERVISORS = 40
CHURN_PERIOD = 0.25  # seconds between two switches connecting or disconnecting
HEALTH_PERIOD = 0.1
VIEWS = 10  # web views polling /v1/fabric at once
VIEW_PERIOD = 0.5  # the page's poll period (controller/ui/app.js)
PROBE_SECONDS = 10.0


def vm_body(i: int) -> bytes:
    """VM i: its own MAC and IPv4 address, one of 50 label sets."""
    mac = f"02:01:{i >> 16 & 0xFF:02x}:{i >> 8 & 0xFF:02x}:{i & 0xFF:02x}:01"
    ip = f"10.{100 + (i >> 16 & 0xFF)}.{i >> 8 & 0xFF}.{i & 0xFF}"
    return json.dumps({"macs": [mac], "ips": [ip], "labels": {"app": f"a{i % 50}", "tier": "web"}}).encode()


def quantiles(values: list[float]) -> dict:
    if not values:
        return {"p50": None, "p99": None, "count": 0}
    ordered = sorted(values)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    return {"p50": round(pick(0.5) * 1000, 2), "p99": round(pick(0.99) * 1000, 2), "count": len(values)}


class Client:
    """One keep-alive HTTP connection; a connection the server closed between requests is opened again."""

    def __init__(self, port: int, token: str) -> None:
        self.port, self.headers = port, {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        self.conn: http.client.HTTPConnection | None = None
        self.reconnects = 0

    def call(self, method: str, path: str, body: bytes | None = None) -> int:
        for attempt in (1, 2):
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
            try:
                self.conn.request(method, path, body, self.headers)
                response = self.conn.getresponse()
                response.read()
                return response.status
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                # Closed while idle (the listener's keep-alive limit): no request reached the handler.
                self.conn.close()
                self.conn = None
                self.reconnects += 1
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")


class Churn:
    """The emulated fabric on its own event loop; one hypervisor disconnects or reconnects every CHURN_PERIOD."""

    def __init__(self, hypervisors: int, of_port: int, seed: int) -> None:
        self.fabric, _ = build(hypervisors)
        self.of_port, self.rng = of_port, random.Random(seed)
        self.connects = self.disconnects = 0
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    async def _main(self) -> None:
        fabric = self.fabric
        tasks = {d: asyncio.create_task(fabric.run_switch(s, "127.0.0.1", self.of_port)) for d, s in fabric.switches.items()}
        hypervisors = sorted(d for d in fabric.switches if d < 0x20000)
        down: list[int] = []
        await asyncio.sleep(3.0)  # the fabric connects before the churn starts
        while not self.stopped.is_set():
            await asyncio.sleep(CHURN_PERIOD)
            if down and (len(down) >= len(hypervisors) // 4 or self.rng.random() < 0.5):
                dpid = down.pop(self.rng.randrange(len(down)))
                tasks[dpid] = asyncio.create_task(fabric.run_switch(fabric.switches[dpid], "127.0.0.1", self.of_port))
                self.connects += 1
            else:
                dpid = self.rng.choice([d for d in hypervisors if d not in down])
                tasks[dpid].cancel()  # its connection closes, as when a hypervisor's OVS restarts
                down.append(dpid)
                self.disconnects += 1
        for task in tasks.values():
            task.cancel()

    def start(self) -> Churn:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join(10)


def _health_loop(port: int, stop: threading.Event, latencies: list[float], failures: list[str]) -> None:
    client = Client(port, "")
    client.headers = {}
    while not stop.is_set():
        started = time.perf_counter()
        try:
            status = client.call("GET", "/v1/health")
        except OSError as exc:
            failures.append(repr(exc))
            client.conn = None
        else:
            latencies.append(time.perf_counter() - started)
            if status != 200:
                failures.append(f"status {status}")
        stop.wait(HEALTH_PERIOD)


def _timed_get(port: int, token: str, path: str, headers: dict | None = None) -> tuple[int, float, int, Message]:
    """(status, seconds, body bytes, headers) of one GET on a new connection."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        started = time.perf_counter()
        conn.request("GET", path, headers={"Authorization": f"Bearer {token}", **(headers or {})})
        response = conn.getresponse()
        body = response.read()
        return response.status, time.perf_counter() - started, len(body), response.headers  # case-insensitive
    finally:
        conn.close()


def _median_ms(values: list[float]) -> float | None:
    return round(statistics.median(values) * 1000, 1) if values else None


def operator_costs(controller, token: str) -> dict:
    """What a scrape, the web view and the CLI cost the controller at this size (see the module's doc)."""
    import os
    import subprocess
    import sys

    port = controller.rest_port
    scrapes = [_timed_get(port, token, "/metrics") for _ in range(7)]
    fabrics = []
    for _ in range(7):
        fabrics.append(_timed_get(port, token, "/v1/fabric"))
        time.sleep(VIEW_PERIOD)  # a rebuild is rate-limited: ask as a view would
    polls = []  # a poll right after a full answer: 304 unless the churn changed the fabric in between
    for _ in range(10):
        etag = _timed_get(port, token, "/v1/fabric")[3].get("ETag", "")
        polls.append(_timed_get(port, token, "/v1/fabric", {"If-None-Match": etag}))
    cli = os.path.join(os.path.dirname(sys.executable), "goldilocks")
    env = dict(os.environ, GOLDILOCKS_URL=controller.rest_url, GOLDILOCKS_TOKEN=token)
    status_runs = []
    for _ in range(5):
        started = time.perf_counter()
        ran = subprocess.run([cli, "status"], env=env, capture_output=True, timeout=60)
        status_runs.append((ran.returncode, time.perf_counter() - started))

    def health_while(views: int) -> tuple[list[float], int]:
        stop, latencies, failures = threading.Event(), [], []
        view_errors = [0]

        def view() -> None:
            """One open web view: GET /v1/fabric every VIEW_PERIOD with the last ETag, on one keep-alive connection."""
            conn, tag = None, ""
            while not stop.is_set():
                try:
                    conn = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=60)
                    conn.request("GET", "/v1/fabric", headers={"Authorization": f"Bearer {token}", "If-None-Match": tag})
                    response = conn.getresponse()
                    response.read()
                    if response.status == 200:
                        tag = response.getheader("ETag", "")
                    elif response.status != 304:
                        view_errors[0] += 1
                except (OSError, http.client.HTTPException):
                    view_errors[0] += 1
                    conn = None
                stop.wait(VIEW_PERIOD)
            if conn is not None:
                conn.close()

        threads = [threading.Thread(target=view, daemon=True) for _ in range(views)]
        prober = threading.Thread(target=_health_loop, args=(port, stop, latencies, failures), daemon=True)
        for thread in [*threads, prober]:
            thread.start()
        time.sleep(PROBE_SECONDS)
        stop.set()
        for thread in [*threads, prober]:
            thread.join(30)
        return latencies, len(failures) + view_errors[0]

    without, _ = health_while(0)
    with_views, errors = health_while(VIEWS)
    base, loaded = quantiles(without), quantiles(with_views)
    return {
        "metrics_scrape_ms": _median_ms([s for _, s, _, _ in scrapes]),
        "metrics_bytes": scrapes[-1][2],
        "fabric_get_ms": _median_ms([s for _, s, _, _ in fabrics]),
        "fabric_bytes": fabrics[-1][2],
        "fabric_304_ms": _median_ms([s for status, s, _, _ in polls if status == 304]),
        "fabric_304s": sum(1 for status, _, _, _ in polls if status == 304),
        "cli_status_ms": _median_ms([s for rc, s in status_runs if rc == 0]),
        "cli_status_failures": sum(1 for rc, _ in status_runs if rc != 0),
        "views": VIEWS,
        "health_without_views_ms": base,
        "health_with_views_ms": loaded,
        "health_p50_ratio": round(loaded["p50"] / base["p50"], 2) if base["p50"] and loaded["p50"] else None,
        "errors": errors,
    }


def run_writes(vms: int, clients: int, hypervisors: int, seed: int = 1, operator: bool = False) -> dict:
    """A fresh controller and fabric; `clients` clients create VMs 0..vms-1 between them, one request
    each at a time. With `operator`, then measure the operator's tools at that size."""
    from mininet_scenarios.harness import ControllerProcess

    controller = ControllerProcess().start()
    churn = Churn(hypervisors, controller.of_port, seed).start()
    try:
        time.sleep(5.0)  # connected, and churning
        token = controller.admin_token
        cpu_before, _ = _proc_stats(controller.proc.pid)
        lock = threading.Lock()
        numbers = iter(range(vms))
        answered: list[float] = []  # when each write was answered, in order
        latency: list[tuple[int, float]] = []  # (answers before it, seconds)
        errors: list[str] = []
        reconnects = [0]

        def writer() -> None:
            client = Client(controller.rest_port, token)
            while True:
                with lock:
                    i = next(numbers, None)
                if i is None:
                    break
                started = time.perf_counter()
                try:
                    status = client.call("PUT", f"/v1/vms/vm{i}", vm_body(i))
                except OSError as exc:
                    status, client.conn = repr(exc), None
                done = time.perf_counter()
                with lock:
                    latency.append((len(answered), done - started))
                    answered.append(done)
                    if status != 201:
                        errors.append(f"vm{i}: {status}")
            reconnects[0] += client.reconnects

        health: list[float] = []
        health_failures: list[str] = []
        stop = threading.Event()
        prober = threading.Thread(target=_health_loop, args=(controller.rest_port, stop, health, health_failures), daemon=True)
        prober.start()
        started = time.perf_counter()
        threads = [threading.Thread(target=writer) for _ in range(clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        seconds = time.perf_counter() - started
        stop.set()
        prober.join(10)
        cpu_after, peak_mib = _proc_stats(controller.proc.pid)
        stored = json.loads(_get(controller, "/v1/health"))
        tools = operator_costs(controller, token) if operator else None
    finally:
        churn.stop()
        controller.stop()
    rates = []  # (answers at the window's end, writes/s)
    for end in range(WINDOW, len(answered) + 1, WINDOW):
        begin = answered[end - WINDOW - 1] if end > WINDOW else started
        rates.append((end, WINDOW / (answered[end - 1] - begin)))
    at = {}
    for mark in MARKS:
        if mark > vms:
            continue
        window_rates = [r for end, r in rates if mark - MARK_SPAN < end <= mark]
        near = [s for before, s in latency if mark - MARK_SPAN <= before < mark]
        at[str(mark)] = {"writes_per_second": round(statistics.median(window_rates)) if window_rates else None,
                         "write_latency_ms": quantiles(near)}  # fmt: skip
    return {
        "clients": clients,
        "vms": vms,
        "writes": len(answered),
        "errors": len(errors),
        "error_samples": errors[:5],
        "seconds": round(seconds, 1),
        "writes_per_second_overall": round(len(answered) / seconds),
        "at": at,
        "write_latency_ms": quantiles([s for _, s in latency]),
        "health_latency_ms": quantiles(health),
        "health_failures": len(health_failures),
        "client_reconnects": reconnects[0],
        "switch_connects": churn.connects,
        "switch_disconnects": churn.disconnects,
        "switches_connected_at_end": stored.get("switches_connected"),
        "controller_cpu_seconds": round(cpu_after - cpu_before, 1),
        "controller_peak_rss_mib": peak_mib,
        **({"operator": tools} if tools else {}),
    }


def _get(controller, path: str) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", controller.rest_port, timeout=60)
    try:
        conn.request("GET", path)
        return conn.getresponse().read().decode()
    finally:
        conn.close()


def measure(vms: int = VMS, clients: int = CLIENTS, hypervisors: int = HYPERVISORS) -> dict:
    return {
        "vms": vms,
        "hypervisors": hypervisors,
        "churn_period_seconds": CHURN_PERIOD,
        "window": WINDOW,
        "runs": [run_writes(vms, 1, hypervisors), run_writes(vms, clients, hypervisors, operator=True)],
    }


def run_all(log=print, timeout: float = 1800.0) -> dict:
    """In a fresh interpreter (the controllers are its children), given up after `timeout` seconds."""
    log("REST writes under switch churn ...")
    result = json_from_child(["bench.rest_load"], timeout)
    if "error" in result:
        return result
    for run in result["runs"]:
        figures = ", ".join(f"{k}: {v['writes_per_second']}/s" for k, v in run["at"].items())
        log(f"REST writes, {run['clients']} client(s): {figures}; {run['errors']} errors")
    return result


if __name__ == "__main__":
    import signal

    parser = argparse.ArgumentParser(prog="python -m bench.rest_load", description=__doc__.split("\n\n")[0])
    parser.add_argument("--vms", type=int, default=VMS, help=f"VMs created per run (default {VMS})")
    parser.add_argument("--clients", type=int, default=CLIENTS, help=f"clients of the concurrent run (default {CLIENTS})")
    parser.add_argument("--hypervisors", type=int, default=HYPERVISORS, help=f"emulated hypervisors (default {HYPERVISORS})")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, exit_on_term)
    print(json.dumps(measure(args.vms, args.clients, args.hypervisors)))
