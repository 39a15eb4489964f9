"""The controller under load (issue 10): more than 10,000 REST writes from concurrent clients (creates,
label changes, deletes, and a few refused ones) to a real controller process while emulated hypervisors
(bench/ofswitch.py) connect and disconnect. Every request gets an answer and every 2xx shows in
GET /v1/vms; then the controller is SIGKILLed in the middle of the writes and restarted on the same
state dir: every acknowledged write is there, with its audit entry, nothing refused left a trace, and
the writes that were in flight at the kill are there whole or not at all."""

from __future__ import annotations

import http.client
import json
import random
import signal
import threading
import time

import pytest

from bench.rest_load import Churn
from mininet_scenarios.harness import ControllerProcess

CLIENTS = 4
BEFORE_KILL = 2_300  # writes per client, all answered
AFTER_KILL_MAX = 600  # more per client; the controller is killed on the way
KILL_AFTER = 1_000  # acknowledged writes (all clients together) after which the kill comes
VM_ACTIONS = ("vm.create", "vm.replace", "vm.labels", "vm.delete")


class Lost(Exception):
    """A request that got no answer."""


class Writer:
    """One client: its own VMs (its own MACs and addresses), a seeded mix of writes, and what the
    controller must hold of them: name -> (MACs, IPs, labels), changed only by a 2xx."""

    def __init__(self, number: int, port: int, token: str) -> None:
        self.number, self.port, self.token = number, port, token
        self.rng = random.Random(number)
        self.expected: dict[str, tuple] = {}
        self.created = 0
        self.acknowledged = 0
        self.refused = 0
        self.statuses: dict[int, int] = {}
        self.in_flight: tuple[str, tuple | None, tuple | None] | None = None  # (name, before, after) of an unanswered write
        self.conn: http.client.HTTPConnection | None = None

    def call(self, method: str, path: str, body: dict | None = None) -> int:
        if self.conn is None:
            self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        headers = {"Authorization": f"Bearer {self.token}"}
        data = None
        if body is not None:
            headers["Content-Type"] = "application/json"
            data = json.dumps(body).encode()
        try:
            self.conn.request(method, path, data, headers)
            response = self.conn.getresponse()
            response.read()
        except OSError as exc:
            self.conn.close()
            self.conn = None
            raise Lost(f"{method} {path}: {exc!r}") from exc
        self.statuses[response.status] = self.statuses.get(response.status, 0) + 1
        return response.status

    def vm(self, j: int, labels: dict) -> tuple:
        k = self.number
        return ((f"02:{k + 0x10:02x}:00:00:{j >> 8:02x}:{j & 0xFF:02x}",), (f"10.{k + 1}.{j >> 8}.{j & 0xFF}",), labels)

    def step(self) -> None:
        """One write, checked against its expected answer; the model follows the 2xx only."""
        names = sorted(self.expected)
        roll = self.rng.random()
        if roll < 0.02 and names:  # refused: a new VM with an address another of ours holds
            taken = self.expected[self.rng.choice(names)]
            name = f"c{self.number}-x{self.created}"
            status = self._write("PUT", name, {"macs": list(taken[0]), "ips": [], "labels": {}}, None)
            assert status == 409, (name, status)
            self.refused += 1
            return
        if roll < 0.5 or len(names) < 20:
            j = self.created
            self.created += 1
            name = f"c{self.number}-{j}"
            after = self.vm(j, {"tier": self.rng.choice(["web", "db", "app"]), "owner": f"c{self.number}"})
            body = {"macs": list(after[0]), "ips": list(after[1]), "labels": after[2]}
            expect = 201
            method, path = "PUT", name
        elif roll < 0.85:
            name = self.rng.choice(names)
            macs, ips, labels = self.expected[name]
            after = (macs, ips, {**labels, "gen": str(self.acknowledged)})
            body, expect, method, path = {"set": {"gen": str(self.acknowledged)}}, 200, "PATCH", f"{name}/labels"
        else:
            name = self.rng.choice(names)
            after, body, expect, method, path = None, None, 204, "DELETE", name
        status = self._write(method, path, body, (name, self.expected.get(name), after))
        assert status == expect, (method, path, status)
        if after is None:
            del self.expected[name]
        else:
            self.expected[name] = after
        self.acknowledged += 1

    def _write(self, method: str, path: str, body: dict | None, change) -> int:
        self.in_flight = change
        status = self.call(method, f"/v1/vms/{path}", body)
        self.in_flight = None
        return status


def held(ctl: ControllerProcess) -> dict[str, tuple]:
    status, doc = get(ctl, "/v1/vms")
    assert status == 200, status
    return {vm["name"]: (tuple(vm["macs"]), tuple(vm["ips"]), vm["labels"]) for vm in doc["vms"]}


def get(ctl: ControllerProcess, path: str) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", ctl.rest_port, timeout=30)
    try:
        conn.request("GET", path, headers={"Authorization": f"Bearer {ctl.admin_token}"})
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def vm_audit_entries(ctl: ControllerProcess) -> int:
    count, before = 0, None
    while True:
        status, page = get(ctl, "/v1/audit?limit=1000" + (f"&before={before}" if before else ""))
        assert status == 200, status
        count += sum(1 for e in page["entries"] if e["action"] in VM_ACTIONS)
        before = page["next_before"]
        if before is None:
            return count


def run_clients(writers: list[Writer], steps: int, stop_on_lost: bool) -> list[str]:
    """Each writer does `steps` writes in its own thread; returns what went wrong (a lost answer is
    an error unless `stop_on_lost`, when the writer just stops)."""
    problems: list[str] = []

    def run(writer: Writer) -> None:
        try:
            for _ in range(steps):
                writer.step()
        except Lost as exc:
            if not stop_on_lost:
                problems.append(f"client {writer.number}: no answer to {exc}")
        except AssertionError as exc:
            problems.append(f"client {writer.number}: unexpected answer {exc}")

    threads = [threading.Thread(target=run, args=(w,)) for w in writers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(150)
    return problems + [f"client {w.number} still running" for w, t in zip(writers, threads, strict=True) if t.is_alive()]


@pytest.mark.timeout(170)
def test_ten_thousand_writes_under_switch_churn_and_a_sigkill_lose_nothing(tmp_path):
    ctl = ControllerProcess(state_dir=str(tmp_path), extra_args=["--no-ovsdb-inventory"]).start()
    churn = None
    try:
        churn = Churn(hypervisors=30, of_port=ctl.of_port, seed=7).start()
        time.sleep(4.0)  # the fabric is up, and churning from now on
        writers = [Writer(k, ctl.rest_port, ctl.admin_token) for k in range(CLIENTS)]

        problems = run_clients(writers, BEFORE_KILL, stop_on_lost=False)
        assert not problems, problems[:5]
        assert sum(w.acknowledged for w in writers) + sum(w.refused for w in writers) == CLIENTS * BEFORE_KILL
        expected = {name: vm for w in writers for name, vm in w.expected.items()}
        assert held(ctl) == expected, "every acknowledged write shows in GET /v1/vms, and nothing else"
        assert churn.connects + churn.disconnects >= 10, "switches came and went during the writes"

        # More writes, and a SIGKILL in their middle.
        acknowledged_before = sum(w.acknowledged for w in writers)

        def kill_midway() -> None:
            deadline = time.monotonic() + 60
            while sum(w.acknowledged for w in writers) < acknowledged_before + KILL_AFTER and time.monotonic() < deadline:
                time.sleep(0.005)
            ctl.kill(signal.SIGKILL)

        killer = threading.Thread(target=kill_midway)
        killer.start()
        problems = run_clients(writers, AFTER_KILL_MAX, stop_on_lost=True)
        killer.join(70)
        assert not problems, problems[:5]
        total = sum(w.acknowledged + w.refused for w in writers)
        assert total >= 10_000, f"only {total} writes answered"

        ctl.start()  # the same state dir, as after a crash
        now = held(ctl)
        unsure = {w.in_flight[0]: w.in_flight for w in writers if w.in_flight is not None}
        for name, (_, before, after) in unsure.items():
            assert now.get(name) in (before, after), f"{name}, in flight at the kill, is half there: {now.get(name)}"
        sure = {name: vm for w in writers for name, vm in w.expected.items() if name not in unsure}
        assert {n: vm for n, vm in now.items() if n not in unsure} == sure, "every acknowledged write survived the SIGKILL"
        acknowledged = sum(w.acknowledged for w in writers)
        assert acknowledged <= vm_audit_entries(ctl) <= acknowledged + len(unsure), "each acknowledged write has its audit entry"
    finally:
        if churn is not None:
            churn.stop()
        ctl.stop()
