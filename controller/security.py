"""What the controller does with port security's evidence: a managed VM that sent from a MAC, an IP
or an ARP sender address that is not its own. The switch already dropped the frame; here it
becomes an alert (stored, audited with the frame's fields, counted) or a quarantine, as configured
per kind (--mac-spoofing, --ip-spoofing, --arp-spoofing)."""

from __future__ import annotations

import logging
import time

from apps import port_security
from apps.alerts import AlertRequest
from apps.quarantine import Quarantine
from controller import audit

LOG = logging.getLogger("goldilocks.security")

# MAC spoofing and an ARP message for another VM's address are deliberate: no healthy guest does
# either. A source IP missing from the inventory is more often an address the inventory does not
# list yet than an attack, and its frames are dropped anyway: an alert is enough.
DEFAULT_RESPONSES = {"mac-spoofing": "quarantine", "ip-spoofing": "alert", "arp-spoofing": "quarantine"}
RESPONSES = ("alert", "quarantine")
REPEAT_AFTER = 60.0  # the same kind from the same VM is recorded again at most this often
SOURCE = "goldilocks"


class SpoofGuard:
    def __init__(self, app, responses=None, clock=time.time) -> None:
        self.app = app
        self.responses = {**DEFAULT_RESPONSES, **dict(responses or {})}
        self.clock = clock
        self._last: dict[tuple[str, str], float] = {}
        self.seen: dict[tuple[str, str], int] = {}  # (kind, action) -> evidence frames

    def evidence(self, dpid: int, port: int, frame: bytes) -> str | None:
        """A frame port security dropped on (dpid, port); returns the action taken, if any."""
        app = self.app
        policy = app.policy
        # Only this port's hosts, by the host table's index: an evidence frame costs the same
        # whatever the size of the inventory and of the fabric.
        on_port = [app.topo.hosts[mac] for mac in app.topo.hosts.by_port.get((dpid, port), ())]
        by_mac = policy.vm_by_mac()
        vm_of_mac = {h.mac: by_mac[h.mac].name for h in on_port if h.mac in by_mac}
        owner = port_security.guarded_ports(on_port, vm_of_mac).get((dpid, port))
        if owner is None:
            return None  # the port changed hands meanwhile: nothing to say about it
        vm = policy.vms[owner]
        found = port_security.violation(frame, vm.macs, vm.ips)
        if found is None:
            return None
        kind, evidence = found
        now = self.clock()
        if owner in policy.quarantine:
            action = "already-quarantined"
        else:
            action = self.responses[kind]
        self.seen[(kind, action)] = self.seen.get((kind, action), 0) + 1
        if action != "quarantine" and now - self._last.get((owner, kind), -1e18) < REPEAT_AFTER:
            return None
        self._last[(owner, kind)] = now
        where = f"switch {dpid:016x} port {port}"
        signature = f"{kind}: {evidence}"
        LOG.warning("VM %s at %s: %s; %s", owner, where, signature, action)
        alert = AlertRequest(where, "high", SOURCE, signature)
        reason = f"{signature} at {where}"
        record_alert(app, now, owner, alert, action, SOURCE, f"{reason}; {action}", reason, SOURCE)
        return action


def record_alert(
    app, now: float, vm: str, alert: AlertRequest, action: str, actor: str, summary: str, reason: str, quarantined_by: str
) -> int:
    """Store an alert about `vm` and audit it (as `actor`, with `summary`); when `action` is
    "quarantine", quarantine the VM for `reason` in the same transaction, in the name of
    `quarantined_by`. Returns the alert's id."""
    store = app.store
    saved: list[int] = []

    def write_alert() -> None:
        saved.append(store.add_alert(now, vm, alert.target, alert.severity, alert.source, alert.signature, action))
        audit.record(store, actor, "vm.alert", vm, summary)

    if action == "quarantine":
        policy = app.policy
        by = quarantined_by
        record = Quarantine(vm, reason, "isolate", by, now, policy.vms[vm].macs)

        def write_more() -> None:
            write_alert()
            audit.record(store, by, "vm.quarantine", vm, f"isolate: {reason}")

        app.apply_policy(policy.with_quarantine(record), write_more=write_more)
    else:
        with store.transaction():
            write_alert()
    app.metrics.alert(alert.severity, action)
    return saved[0]
