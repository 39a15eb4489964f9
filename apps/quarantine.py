"""Quarantine: a flagged VM cut off at the very top of the pipeline, before conntrack, on every
hypervisor, so open connections stop too and no VM, hypervisor or tunnel can reach it.

Every hypervisor holds, for each MAC of each quarantined VM, two entries at the top of the
ingress table: frames *from* it are dropped (a copy goes to the controller, metered on its own
meter, so that a VM that moved is learned where it now is and its old port freed), frames *to* it
are dropped. Its port is taken out of every flood, so not even a broadcast reaches it. A
quarantined VM carries the label `quarantined=true` for policies to refer to; releasing it
removes the label, and with it every trace of the quarantine."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from apps import pipeline
from apps.errors import FieldError
from apps.flows import FlowEntry, Output

APP = pipeline.APP_QUARANTINE
MODES = ("isolate",)
LABEL = ("quarantined", "true")
MAX_REASON = 500
TO_CONTROLLER = Output(pipeline.OFPP_CONTROLLER, pipeline.PACKET_IN_BYTES)


class QuarantineError(FieldError):
    """A quarantine request that cannot be honoured; names the field."""


@dataclass(frozen=True)
class Quarantine:
    """One quarantined VM: why, how, who and when, and the MACs it had then (kept dropped even if
    the VM leaves the inventory)."""

    vm: str
    reason: str
    mode: str
    actor: str
    at: float
    macs: tuple[str, ...]
    mirror_to: str | None = None

    def to_json(self) -> dict:
        return {
            "vm": self.vm,
            "reason": self.reason,
            "mode": self.mode,
            "mirror_to": self.mirror_to,
            "actor": self.actor,
            "at": self.at,
            "macs": list(self.macs),
        }

    @classmethod
    def from_json(cls, doc: Mapping) -> Quarantine:
        return cls(doc["vm"], doc["reason"], doc["mode"], doc["actor"], doc["at"], tuple(doc["macs"]), doc.get("mirror_to"))


def check_request(body: object) -> tuple[str, str, str, str | None]:
    """(vm, reason, mode, mirror_to) from a request body; QuarantineError names the field."""
    if not isinstance(body, dict):
        raise QuarantineError("body", "must be a JSON object")
    unknown = sorted(set(body) - {"vm", "reason", "mode", "mirror_to"})
    if unknown:
        raise QuarantineError(unknown[0], "unknown field (allowed: mirror_to, mode, reason, vm)")
    vm = body.get("vm")
    if not isinstance(vm, str) or not vm:
        raise QuarantineError("vm", "required: the name of a VM in the inventory")
    reason = body.get("reason", "")
    if not isinstance(reason, str) or not reason.strip() or len(reason) > MAX_REASON:
        raise QuarantineError("reason", f"required: why, in 1 to {MAX_REASON} characters")
    mode = body.get("mode", "isolate")
    if mode not in MODES:
        raise QuarantineError("mode", f"must be one of {', '.join(MODES)}")
    mirror_to = body.get("mirror_to")
    if mirror_to is not None:
        raise QuarantineError("mirror_to", "mirroring a quarantined VM's traffic is not available yet; give null")
    return vm, reason.strip(), mode, mirror_to


def quarantined_macs(quarantine: Mapping[str, Quarantine], vm_macs: Mapping[str, Iterable[str]]) -> frozenset[str]:
    """Every MAC to cut off: each quarantined VM's MACs when it was quarantined and its MACs now."""
    macs: set[str] = set()
    for name, record in quarantine.items():
        macs.update(record.macs)
        macs.update(vm_macs.get(name, ()))
    return frozenset(m.lower() for m in macs)


def quarantine_flows(macs: Iterable[str]) -> list[FlowEntry]:
    """The top of every hypervisor's ingress table: nothing from these MACs, nothing to them."""
    flows = []
    for mac in sorted(macs):
        flows.append(FlowEntry.make(pipeline.INGRESS, pipeline.PRIO_QUARANTINE, {"eth_src": mac}, (TO_CONTROLLER,), app=APP))
        flows.append(FlowEntry.make(pipeline.INGRESS, pipeline.PRIO_QUARANTINE, {"eth_dst": mac}, app=APP))
    return flows
