"""The hypervisor as a VM inventory source: VMs that Open vSwitch publishes in Interface external_ids.

A hypervisor (libvirt, or whatever plugs VM ports) describes the VM behind a port in the
port's Interface row:

    ovs-vsctl set Interface vnet0 external_ids:vm-id=web1 \\
        external_ids:attached-mac=02:00:00:00:00:01 \\
        external_ids:goldilocks-labels=tier=web,tenant=blue \\
        external_ids:goldilocks-ips=10.0.0.1

- `vm-id` (required): the VM's name. libvirt sets it to the domain's UUID, a valid name.
- `attached-mac` (required): the VM's MAC on this port. libvirt sets it too.
- `goldilocks-labels` (optional): `key=value` pairs separated by commas; `key=` is an empty value.
- `goldilocks-ips` (optional): IPv4 addresses separated by commas.

Several interfaces with the same vm-id are one VM with several NICs: its MACs and IPs are the
union, and labels given on more than one of them must agree.

Reading is a pure function from `ovs-vsctl --format=json` output to VMs and errors
(`parse_interfaces`); merging into the inventory is a pure function of the current state and
who owns which VM (`merge`); `OvsdbInventory` is the thin part that runs ovs-vsctl in a green
thread and applies the merge through `app.apply_policy` with actor "ovsdb". The rules are in
docs/api.md, "Sources of the inventory"."""

from __future__ import annotations

import json
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from apps.context import PolicyState
from apps.inventory import VM, InventoryError, check_name, vm_from_json
from controller import audit
from controller.store import SOURCE_OVSDB

LOG = logging.getLogger("goldilocks.ovsdb_inventory")

VM_ID, ATTACHED_MAC = "vm-id", "attached-mac"
IFACE_ID = "iface-id"  # OpenStack and OVN name the logical port behind an interface with it
# Any of these in an Interface's external_ids declares it a VM port: it never becomes inter-switch.
VM_PORT_KEYS = (VM_ID, IFACE_ID, ATTACHED_MAC)
LABELS_KEY, IPS_KEY = "goldilocks-labels", "goldilocks-ips"
ACTOR = "ovsdb"

READ_TIMEOUT = 3.0  # seconds; ovs-vsctl gives up after 2 on its own (--timeout=2)
READ_COMMAND = ("ovs-vsctl", "--timeout=2", "--format=json", "--columns=name,external_ids,ofport", "list", "Interface")
PORT_EVENT_DELAY = 0.2  # after a port is added or deleted: lets a burst of port events share one read
RETRY_AFTER_FAILURE = 60.0  # seconds between reads while OVSDB cannot be read

# vm_from_json names its fields after the REST body; an error here names the external_ids key.
_KEY_OF_FIELD = {"name": VM_ID, "macs": ATTACHED_MAC, "ips": IPS_KEY, "labels": LABELS_KEY}


class OvsdbUnavailable(RuntimeError):
    """ovs-vsctl ran but could not give us the Interface table (no database, timeout, bad output)."""


@dataclass(frozen=True, order=True)
class PublishError:
    """One interface's external_ids cannot be used; `key` is the external_ids key at fault."""

    interface: str
    key: str
    message: str

    def __str__(self) -> str:
        return f"interface {self.interface}: external_ids:{self.key}: {self.message}"


@dataclass(frozen=True)
class Published:
    """What OVS publishes. `broken` names VMs published with unusable data: those are neither
    added nor changed nor removed, so a typo on a port never deletes the VM behind it."""

    vms: Mapping[str, VM] = field(default_factory=dict)
    interfaces: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # VM name -> its interfaces
    broken: frozenset[str] = frozenset()
    errors: tuple[PublishError, ...] = ()
    # Every interface the hypervisor declares as a VM port (any of VM_PORT_KEYS), ours or not.
    vm_interfaces: frozenset[str] = frozenset()


# -- parsing: ovs-vsctl JSON -> VMs ----------------------------------------------------------------
def _datum(value: object) -> object:
    """An OVSDB JSON datum as Python: ["map", [[k, v]...]] -> dict, ["set", [...]] -> list,
    ["uuid", u] -> u, atoms as they are."""
    if isinstance(value, list) and len(value) == 2 and isinstance(value[0], str):
        kind, body = value
        if kind == "map" and isinstance(body, list):
            return {_datum(k): _datum(v) for k, v in body}
        if kind == "set" and isinstance(body, list):
            return [_datum(v) for v in body]
        if kind in ("uuid", "named-uuid"):
            return body
    return value


def interface_rows(text: str) -> list[dict]:
    """The rows of `ovs-vsctl --format=json list Interface` as dicts of column -> value."""
    try:
        table = json.loads(text)
        headings, data = table["headings"], table["data"]
        return [{h: _datum(v) for h, v in zip(headings, row, strict=True)} for row in data]
    except (ValueError, TypeError, KeyError) as exc:
        raise OvsdbUnavailable(f"ovs-vsctl gave output that is not its JSON table format: {exc}") from None


def parse_labels(text: str) -> dict[str, str]:
    """`tier=web,tenant=blue` -> {"tier": "web", "tenant": "blue"}; keys and values are checked
    later, as for the API. Spaces around items are ignored; `key=` is an empty value."""
    labels: dict[str, str] = {}
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        key, sep, value = item.partition("=")
        if not sep:
            raise InventoryError("labels", f"{item!r} is not key=value")
        key = key.strip()
        if key in labels:
            raise InventoryError(f"labels.{key}", "given twice")
        labels[key] = value.strip()
    return labels


def parse_ips(text: str) -> list[str]:
    return [ip.strip() for ip in text.split(",") if ip.strip()]


def _publish_error(interface: str, exc: InventoryError) -> PublishError:
    root, _, label = exc.field.partition(".")
    detail = str(exc).partition(": ")[2]
    return PublishError(interface, _KEY_OF_FIELD.get(root, VM_ID), f"label {label}: {detail}" if label else detail)


def parse_interfaces(text: str) -> Published:
    """The VMs that the Interface table publishes, validated as the API validates a VM.
    Raises OvsdbUnavailable when the text is not ovs-vsctl's JSON table (an unusable read must
    never look like "no VMs")."""
    return parse_rows(interface_rows(text))


def parse_rows(rows: Iterable[Mapping]) -> Published:
    """The VMs that Interface rows (name, external_ids) publish: from the local ovs-vsctl, or as the
    hypervisors' agents report them."""
    errors: list[PublishError] = []
    broken: set[str] = set()
    parts: dict[str, list[tuple[str, VM]]] = defaultdict(list)  # VM name -> (interface, its share)
    vm_interfaces: set[str] = set()
    for row in rows:
        interface = str(row.get("name", "?"))
        ids = row.get("external_ids")
        if not isinstance(ids, dict):
            continue
        if any(key in ids for key in VM_PORT_KEYS):
            vm_interfaces.add(interface)
        vm_id = ids.get(VM_ID)
        if vm_id is None:
            # attached-mac alone is common (OpenStack sets it with iface-id): not for us. Our
            # own keys without a vm-id are a mistake worth saying.
            for key in (LABELS_KEY, IPS_KEY):
                if key in ids:
                    errors.append(PublishError(interface, VM_ID, f"missing; {key} needs {VM_ID} and {ATTACHED_MAC}"))
                    break
            continue
        try:
            check_name(vm_id)
        except InventoryError as exc:
            errors.append(_publish_error(interface, exc))
            continue
        if ATTACHED_MAC not in ids:
            errors.append(PublishError(interface, ATTACHED_MAC, f"missing; VM {vm_id} needs the MAC on this port"))
            broken.add(vm_id)
            continue
        try:
            labels, ips = parse_labels(ids.get(LABELS_KEY, "")), parse_ips(ids.get(IPS_KEY, ""))
            parts[vm_id].append((interface, vm_from_json(vm_id, {"macs": [ids[ATTACHED_MAC]], "ips": ips, "labels": labels})))
        except InventoryError as exc:
            errors.append(_publish_error(interface, exc))
            broken.add(vm_id)

    vms: dict[str, VM] = {}
    for name, shares in parts.items():
        labels: dict[str, tuple[str, str]] = {}  # key -> (value, interface that gave it)
        for interface, share in shares:
            for key, value in share.labels:
                given, by = labels.setdefault(key, (value, interface))
                if given != value:
                    message = f"label {key}={value} but interface {by} says {key}={given}"
                    errors.append(PublishError(interface, LABELS_KEY, message))
                    broken.add(name)
        vms[name] = VM(
            name,
            tuple(sorted({m for _, share in shares for m in share.macs})),
            tuple(sorted({ip for _, share in shares for ip in share.ips})),
            tuple(sorted((k, v) for k, (v, _) in labels.items())),
        )

    # An address published for two VMs is ambiguous: neither VM gets it from us.
    claims: dict[str, list[tuple[str, str, str]]] = defaultdict(list)  # address -> (VM, interface, key)
    for name, shares in parts.items():
        for interface, share in shares:
            for key, addresses in ((ATTACHED_MAC, share.macs), (IPS_KEY, share.ips)):
                for address in addresses:
                    if all(vm != name for vm, _, _ in claims[address]):
                        claims[address].append((name, interface, key))
    for address, claimants in claims.items():
        if len(claimants) > 1:
            for name, interface, key in claimants:
                others = ", ".join(f"VM {o} (interface {i})" for o, i, _ in claimants if o != name)
                errors.append(PublishError(interface, key, f"{address} is also published for {others}"))
                broken.add(name)

    return Published(
        vms={n: vm for n, vm in sorted(vms.items()) if n not in broken},
        interfaces={n: tuple(sorted(i for i, _ in shares)) for n, shares in sorted(parts.items())},
        broken=frozenset(broken),
        errors=tuple(sorted(set(errors))),
        vm_interfaces=frozenset(vm_interfaces),
    )


# -- merging: published VMs -> a new inventory -----------------------------------------------------
@dataclass(frozen=True)
class Change:
    action: str  # vm.create, vm.replace or vm.delete, as in the audit log
    vm: VM


@dataclass(frozen=True)
class MergePlan:
    state: PolicyState
    changes: tuple[Change, ...] = ()
    conflicts: tuple[str, ...] = ()  # published VMs left out: an address another VM holds
    not_owned: tuple[str, ...] = ()  # published names that the API or the inventory file defines

    @property
    def created(self) -> list[str]:
        return [c.vm.name for c in self.changes if c.action == "vm.create"]


def merge(state: PolicyState, sources: Mapping[str, str], published: Published) -> MergePlan:
    """The inventory with what OVS publishes merged in:
    - a VM of that name defined by the API or the inventory file wins and is left alone;
    - a published VM is added when no VM has its name, and updated when OVS owns it;
    - a VM that OVS owns and no longer publishes is removed (a broken entry keeps it, and so does
      a quarantine: a VM in quarantine is only removed once released);
    - a VM whose MAC or IP another VM holds is left out whole, never half applied."""
    owned = {name for name, source in sources.items() if source == SOURCE_OVSDB and name in state.vms}
    changes: list[Change] = []
    for name in sorted(owned - published.vms.keys() - published.broken - state.quarantine.keys()):
        changes.append(Change("vm.delete", state.vms[name]))
        state = state.without_vm(name)
    not_owned = tuple(name for name in published.vms if name in state.vms and name not in owned)
    pending = [vm for name, vm in published.vms.items() if name not in not_owned and state.vms.get(name) != vm]
    refused: dict[str, InventoryError] = {}
    # Passes until nothing more fits: a VM taking an address that another one gives up in the
    # same read is not refused just because it sorts first.
    while pending:
        left = []
        for vm in pending:
            try:
                after = state.with_vm(vm)
            except InventoryError as exc:
                left.append(vm)
                refused[vm.name] = exc
                continue
            changes.append(Change("vm.replace" if vm.name in state.vms else "vm.create", vm))
            refused.pop(vm.name, None)
            state = after
        if len(left) == len(pending):
            break
        pending = left
    conflicts = tuple(f"VM {name}: {exc}" for name, exc in sorted(refused.items()))
    return MergePlan(state, tuple(changes), conflicts, not_owned)


# -- reading OVSDB ----------------------------------------------------------------------------------
def read_interfaces(timeout: float = READ_TIMEOUT, command: tuple[str, ...] = READ_COMMAND) -> str:
    """The Interface table as ovs-vsctl JSON. Runs in a green subprocess, so other green threads
    keep running while it waits. FileNotFoundError when ovs-vsctl is not installed."""
    from eventlet.green import subprocess as green_subprocess
    from ryu.lib import hub

    proc = green_subprocess.Popen(command, stdout=green_subprocess.PIPE, stderr=green_subprocess.PIPE)
    try:
        with hub.Timeout(timeout):
            out, err = proc.communicate()
    except hub.Timeout:
        proc.kill()
        proc.wait()
        raise OvsdbUnavailable(f"ovs-vsctl did not answer within {timeout:g} s") from None
    if proc.returncode != 0:
        raise OvsdbUnavailable(err.decode(errors="replace").strip() or f"ovs-vsctl exited with status {proc.returncode}")
    return out.decode(errors="replace")


class OvsdbInventory:
    """Keeps the inventory in step with what the local OVSDB publishes: at start, soon after a port
    is added or deleted, and every `interval` seconds (a read that finds nothing new writes nothing)."""

    def __init__(
        self,
        app,
        enabled: bool,
        interval: float = 5.0,
        read: Callable[[], str] = read_interfaces,
        spawn: Callable | None = None,  # default: ryu.lib.hub.spawn
        sleep: Callable[[float], None] | None = None,  # default: ryu.lib.hub.sleep
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.app = app
        self.enabled = enabled
        self.interval = interval
        self._read = read
        self._spawn, self._sleep = spawn, sleep
        self._clock = clock
        self._next_read = 0.0
        self._running = False
        self._again = False
        self._failing = False
        self._last: tuple | None = None  # (published, policy, sources) of the last merge
        self._reported: set[str] = set()  # problems logged after the last read, not repeated

    # -- hooks for the controller ----------------------------------------------------------------
    def ports_changed(self) -> None:
        """A port was added or deleted: read again soon."""
        self.request(PORT_EVENT_DELAY)

    def tick(self, now: float) -> None:
        if now >= self._next_read:
            self.request()

    def request(self, delay: float = 0.0) -> None:
        """Read OVSDB in a green thread; requests made while one is pending share it."""
        if not self.enabled and not self._agents_enrolled():
            return
        if self._running:
            self._again = True
            return
        self._running = True
        self._next_read = self._clock() + self.interval
        if self._spawn is None:
            from ryu.lib import hub

            self._spawn, self._sleep = hub.spawn, self._sleep or hub.sleep
        self._spawn(self._worker, delay)

    def _worker(self, delay: float) -> None:
        try:
            if delay > 0:
                self._sleep(delay)
            self._again = True
            while self._again and self.enabled:
                self._again = False
                self.refresh()
        finally:
            self._running = False

    # -- the hypervisors' agents -----------------------------------------------------------------
    def _agents_enrolled(self) -> bool:
        agents = getattr(self.app, "agents", None)
        return agents is not None and bool(agents.agents)

    def agents_reported(self) -> None:
        """An agent reported a change in its bridge's interfaces: merge now."""
        self.refresh()

    # -- one read ----------------------------------------------------------------------------------
    def refresh(self) -> bool:
        """Read OVSDB and merge what it publishes; True if the inventory changed. A failed read
        changes nothing: VMs from OVS stay as they are until a read succeeds.

        Once agents are enrolled they are the hypervisors' truth: the union of the Interface rows
        they report is what OVSDB publishes, and the local ovs-vsctl (which only sees the
        controller's own host) is not read. Until an agent has reported since the start, nothing
        changes."""
        self._next_read = self._clock() + self.interval
        if self._agents_enrolled():
            rows = self.app.agents.reported_interfaces()
            return False if rows is None else self._merge(parse_rows(rows))
        if not self.enabled:
            return False
        try:
            text = self._read()
            published = parse_interfaces(text)
        except FileNotFoundError:
            self.enabled = False
            LOG.warning("ovs-vsctl is not installed: VMs published in OVS Interface external_ids are not read")
            return False
        except OvsdbUnavailable as exc:
            self._next_read = self._clock() + RETRY_AFTER_FAILURE
            if not self._failing:
                self._failing = True
                LOG.warning(
                    "cannot read OVSDB (%s): VMs it published stay as they are; trying again every %g s "
                    "(--no-ovsdb-inventory turns this source off)",
                    exc,
                    RETRY_AFTER_FAILURE,
                )
            return False
        except Exception:
            LOG.exception("reading the VMs OVSDB publishes failed")
            return False
        if self._failing:
            self._failing = False
            LOG.info("OVSDB can be read again")
        return self._merge(published)

    def _merge(self, published: Published) -> bool:
        try:
            self.app.set_declared_vm_interfaces(published.vm_interfaces)
        except Exception:
            LOG.exception("applying the VM ports OVSDB declares failed")
        try:
            return self.apply(published)
        except Exception:
            LOG.exception("merging the VMs OVSDB publishes failed; the inventory is unchanged")
            return False

    def apply(self, published: Published) -> bool:
        """Merge a read into the inventory: one transaction, one audit entry per VM (actor "ovsdb").
        Nothing here yields to other green threads, so no concurrent API change is lost."""
        app = self.app
        sources = app.store.vm_sources()
        last = self._last
        if last is not None and last[0] == published and last[1] is app.policy and last[2] == sources:
            return False
        plan = merge(app.policy, sources, published)
        self._report(published, plan)
        if plan.changes:

            def write_more() -> None:
                for change in plan.changes:
                    where = ", ".join(published.interfaces.get(change.vm.name, ())) or "gone"
                    summary = f"{audit.describe_vm(change.vm)}; interface {where}"
                    audit.record(app.store, ACTOR, change.action, change.vm.name, summary)
                app.store.set_vm_sources(plan.created, SOURCE_OVSDB)

            app.apply_policy(plan.state, write_more)
            for change in plan.changes:
                LOG.info("%s %s from OVSDB: %s", change.action, change.vm.name, audit.describe_vm(change.vm))
        self._last = (published, app.policy, app.store.vm_sources())
        return bool(plan.changes)

    def _report(self, published: Published, plan: MergePlan) -> None:
        """Log each problem once, when it first appears, not on every read that still finds it."""
        messages = {f"{e}; VM skipped": logging.WARNING for e in published.errors}
        messages.update({f"{c}; published by OVSDB, skipped": logging.WARNING for c in plan.conflicts})
        for name in plan.not_owned:
            messages[f"VM {name} is published by OVSDB but defined by the API or the inventory file, which win"] = logging.INFO
        for message, level in messages.items():
            if message not in self._reported:
                LOG.log(level, "%s", message)
        self._reported = set(messages)


def start(app) -> OvsdbInventory:
    """The source for a running controller: reads once now, then on port changes and ticks."""
    settings = app.settings
    source = OvsdbInventory(app, settings.ovsdb_inventory, settings.ovsdb_interval)
    if source.enabled:
        LOG.info("reading VMs from OVS Interface external_ids (%s, %s) every %g s", VM_ID, ATTACHED_MAC, source.interval)
        source.request()
    else:
        LOG.info("VMs in OVS Interface external_ids are not read (--no-ovsdb-inventory, or no ovs-vsctl)")
    return source
