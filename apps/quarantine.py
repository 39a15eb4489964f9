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
from apps.remediation import AllowRule, RemediationError, allow_list_json, parse_allow_list

APP = pipeline.APP_QUARANTINE
MODES = ("isolate", "remediate")
FIELDS = ("allow", "mirror_to", "mode", "reason", "vm")
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
    allow: tuple[AllowRule, ...] | None = None  # remediate: its own allow-list; None: the configured one

    def to_json(self) -> dict:
        return {
            "vm": self.vm,
            "reason": self.reason,
            "mode": self.mode,
            "mirror_to": self.mirror_to,
            "allow": None if self.allow is None else allow_list_json(self.allow),
            "actor": self.actor,
            "at": self.at,
            "macs": list(self.macs),
        }

    @classmethod
    def from_json(cls, doc: Mapping) -> Quarantine:
        allow = doc.get("allow")
        return cls(
            doc["vm"],
            doc["reason"],
            doc["mode"],
            doc["actor"],
            doc["at"],
            tuple(doc["macs"]),
            doc.get("mirror_to"),
            None if allow is None else parse_allow_list(allow),
        )


@dataclass(frozen=True)
class Request:
    vm: str
    reason: str
    mode: str
    mirror_to: str | None
    allow: tuple[AllowRule, ...] | None


def check_request(body: object) -> Request:
    """The request body, checked; QuarantineError names the field. Whether the VMs exist is for
    PolicyState.with_quarantine to say."""
    if not isinstance(body, dict):
        raise QuarantineError("body", "must be a JSON object")
    unknown = sorted(set(body) - set(FIELDS))
    if unknown:
        raise QuarantineError(unknown[0], f"unknown field (allowed: {', '.join(FIELDS)})")
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
    if mirror_to is not None and (not isinstance(mirror_to, str) or not mirror_to):
        raise QuarantineError("mirror_to", "the name of an analyzer VM in the inventory, or null")
    if mirror_to == vm:
        raise QuarantineError("mirror_to", "a VM cannot be its own analyzer")
    allow = body.get("allow")
    if allow is not None:
        if mode != "remediate":
            raise QuarantineError("allow", "an allow-list only goes with mode remediate")
        try:
            allow = parse_allow_list(allow)
        except RemediationError as exc:
            raise QuarantineError(exc.field, str(exc).partition(": ")[2]) from None
    return Request(vm, reason.strip(), mode, mirror_to, allow)


def record_macs(record: Quarantine, now: Iterable[str] = ()) -> frozenset[str]:
    """One quarantined VM's MACs to cut off: those it had when quarantined and those it has `now`."""
    return frozenset(m.lower() for m in (*record.macs, *now))


def quarantined_macs(quarantine: Mapping[str, Quarantine], vm_macs: Mapping[str, Iterable[str]]) -> frozenset[str]:
    """Every MAC to cut off: each quarantined VM's (record_macs)."""
    return frozenset().union(*(record_macs(record, vm_macs.get(name, ())) for name, record in quarantine.items()))


def quarantine_flows(macs: Iterable[str]) -> list[FlowEntry]:
    """The top of every hypervisor's ingress table: nothing from these MACs, nothing to them."""
    flows = []
    for mac in sorted(macs):
        flows.append(FlowEntry.make(pipeline.INGRESS, pipeline.PRIO_QUARANTINE, {"eth_src": mac}, (TO_CONTROLLER,), app=APP))
        flows.append(FlowEntry.make(pipeline.INGRESS, pipeline.PRIO_QUARANTINE, {"eth_dst": mac}, app=APP))
    return flows
