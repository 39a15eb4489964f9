"""Read a user's own fabric for the Mininet scenario from a JSON or YAML topology file, strictly.

    switches:
      - {name: sp1, role: fabric, dpid: 0x101}
      - {name: sp2, role: fabric}
      - {name: lf1, role: fabric}
      - {name: hv1, role: hypervisor}
    links:
      - [sp1, lf1]
      - {a: sp2, b: lf1}
      - [sp1, sp2]
      - [lf1, hv1]
    vms:
      - {name: vm1, hypervisor: hv1, ip: 10.0.0.1, mac: "02:00:00:00:00:01"}
      - {name: vm2, hypervisor: hv1, ip: 10.0.0.2/24, mac: "02:00:00:00:00:02"}

- `switches` (required, at least one): `name` and `role` are required. The role is `fabric` or
  `hypervisor`. `dpid` is optional: an integer, a "0x"-prefixed hex string or 16 hex digits
  ("0000000000000101"), 1 to 2**64-1. A switch without one gets the lowest unused dpid counting
  from 1, in file order.
- `links` (optional): inter-switch cables, each `[a, b]` or `{a: ..., b: ...}`. Any graph is
  allowed: loops, cross links between spines, triangles, and parallel cables.
- `vms` (optional): `name`, `hypervisor` (a switch whose role is hypervisor), `ip` and `mac`, all
  required. The IP is IPv4, with prefix length 16 unless it is given in CIDR form ("10.0.0.2/24").
  The MAC must be unicast.
- Names start with a letter and hold letters, digits and `_`. Mininet names a switch's ports
  `<switch>-eth<port>` and a VM's interface `<vm>-eth0`, and Linux interface names have at most
  15 characters, so a switch name plus `-eth` plus its highest port number must fit in 15, and a
  VM name in 10. `c0` is taken by the scenario's controller.

YAML is read as plain data: values are strings, integers (decimal, or hex with 0x) or null, never
booleans, floats, dates or octal, so `mac: 12:00:00:00:00:01` stays a string. A key given twice in
one mapping is refused. An error names the file and the field, counting list items from 0:
`topology.yaml: vms[3].hypervisor: 'hv9' is not a switch`."""

from __future__ import annotations

import ipaddress
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

ROLES = ("fabric", "hypervisor")
DEFAULT_PREFIX_LENGTH = 16
CONTROLLER_NODE = "c0"  # the Mininet node name of the scenario's controller
IFNAME_MAX = 15  # Linux IFNAMSIZ - 1
NAME_PATTERN = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
# Every hypervisor gets a tunnel-endpoint host named tep<n> on the underlay network below.
ENDPOINT_NAME = re.compile(r"tep\d+")
UNDERLAY_NETWORK = ipaddress.IPv4Network("172.31.0.0/16")
MAC_PATTERN = re.compile(r"[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}")
MAX_DPID = 2**64 - 1

TOP_KEYS = ("switches", "links", "vms")
SWITCH_KEYS = ("name", "role", "dpid")
LINK_KEYS = ("a", "b")
VM_KEYS = ("name", "hypervisor", "ip", "mac")


class TopologyFileError(ValueError):
    """The topology file cannot be built; the message names the file and the field."""

    def __init__(self, source: str, field: str, message: str) -> None:
        super().__init__(f"{source}: {field}: {message}")
        self.source, self.field = source, field


@dataclass(frozen=True)
class SwitchSpec:
    name: str
    role: str
    dpid: int


@dataclass(frozen=True)
class VmSpec:
    name: str
    hypervisor: str
    ip: str  # the address alone, as VMs are pinged
    prefix_length: int
    mac: str  # lower case


@dataclass(frozen=True)
class Fabric:
    """A validated topology file, in file order."""

    switches: tuple[SwitchSpec, ...]
    links: tuple[tuple[str, str], ...]
    vms: tuple[VmSpec, ...]


# -- reading the document ---------------------------------------------------------------------
class _Mapping(dict):
    """A mapping as read from the file, remembering keys given more than once (the last one
    wins in the dict) so that the check can blame the right field."""

    repeated: tuple[str, ...] = ()


def _mapping_of(pairs: list[tuple[object, object]]) -> _Mapping:
    mapping = _Mapping()
    repeated = []
    for key, value in pairs:
        if key in mapping:
            repeated.append(key)
        mapping[key] = value
    mapping.repeated = tuple(repeated)
    return mapping


class _PlainDataLoader(yaml.SafeLoader):
    """YAML 1.1 would turn `no` into false, `0101` into octal 65 and `12:00:00:00:00:01` into a
    base-60 integer; here a plain value is a string unless it is a decimal or 0x integer or null."""


_PlainDataLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag.endswith((":null", ":merge"))]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_PlainDataLoader.add_implicit_resolver(
    "tag:yaml.org,2002:int", re.compile(r"^(?:[-+]?(?:0|[1-9][0-9_]*)|0x[0-9a-fA-F_]+)$"), list("-+0123456789")
)


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> _Mapping:
    explicit = [key for key, _ in node.value if key.tag != "tag:yaml.org,2002:merge"]
    loader.flatten_mapping(node)  # merged keys (<<) come first, so the mapping's own keys override them
    pairs = []
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            hash(key)
        except TypeError:
            raise yaml.constructor.ConstructorError(None, None, "a key must be a plain value", key_node.start_mark) from None
        pairs.append((key, loader.construct_object(value_node, deep=True)))
    mapping = _mapping_of(pairs)
    own = [loader.construct_object(key, deep=True) for key in explicit]
    mapping.repeated = tuple(key for i, key in enumerate(own) if key in own[:i])
    return mapping


_PlainDataLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def is_yaml(path: str | os.PathLike) -> bool:
    return str(path).lower().endswith((".yaml", ".yml"))


def read_document(path: str | os.PathLike) -> object:
    """The file's document: YAML for *.yaml and *.yml, JSON otherwise."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise TopologyFileError(source, "file", f"cannot be read: {exc}") from None
    try:
        if is_yaml(path):
            return yaml.load(text, Loader=_PlainDataLoader)  # a SafeLoader: builds plain data only
        return json.loads(text, object_pairs_hook=_mapping_of)
    except (ValueError, yaml.YAMLError) as exc:
        kind = "YAML" if is_yaml(path) else "JSON"
        raise TopologyFileError(source, "file", f"is not valid {kind}: {_one_line(exc)}") from None


def _one_line(exc: Exception) -> str:
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        return f"{exc.problem} at line {mark.line + 1} column {mark.column + 1}"
    return " ".join(str(exc).split())


def load_fabric(path: str | os.PathLike) -> Fabric:
    """Read and check a topology file; TopologyFileError names the file and the field."""
    return parse_fabric(read_document(path), str(path))


# -- values -------------------------------------------------------------------------------------
def parse_dpid(value: object) -> int:
    """An integer, "0x..." or 16 hex digits; ValueError says why not."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"{value!r} is not a dpid: give an integer, a 0x-prefixed hex string or 16 hex digits")
    if isinstance(value, str):
        text = value.strip()
        if re.fullmatch(r"0[xX][0-9a-fA-F]+", text):
            number = int(text[2:], 16)
        elif re.fullmatch(r"[0-9a-fA-F]{16}", text):
            number = int(text, 16)
        else:
            raise ValueError(f"{value!r} is not a dpid: give an integer, a 0x-prefixed hex string or 16 hex digits")
    else:
        number = value
    if not 1 <= number <= MAX_DPID:
        raise ValueError(f"{value!r} is out of range: a dpid is 1 to 0xffffffffffffffff (Open vSwitch refuses 0)")
    return number


def parse_mac(value: object) -> str:
    """A unicast MAC in lower case; ValueError says why not."""
    if not isinstance(value, str) or not MAC_PATTERN.fullmatch(value):
        raise ValueError(f"{value!r} is not a MAC address like 02:00:00:00:00:01")
    mac = value.lower()
    if int(mac[:2], 16) & 1:
        raise ValueError(f"{value!r} is a multicast address (the low bit of its first byte is set); a VM needs a unicast MAC")
    if mac == "00:00:00:00:00:00":
        raise ValueError(f"{value!r} is the all-zero address; a VM needs a unicast MAC")
    return mac


def parse_ip(value: object) -> tuple[str, int]:
    """(address, prefix length) of a VM's IPv4 address, /16 unless given in CIDR form; ValueError says why not."""
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not an IPv4 address: give it as a string like 10.0.0.1 or 10.0.0.1/24")
    address_text, slash, prefix_text = value.partition("/")
    try:
        address = ipaddress.ip_address(address_text)
    except ValueError:
        raise ValueError(f"{value!r} is not an IPv4 address like 10.0.0.1 or 10.0.0.1/24") from None
    if address.version != 4:
        raise ValueError(f"{value!r} is IPv6; the scenario gives VMs IPv4 addresses")
    if not slash:
        prefix_length = DEFAULT_PREFIX_LENGTH
    elif prefix_text.isdigit() and prefix_text.isascii():
        prefix_length = int(prefix_text)
    else:
        raise ValueError(f"{value!r}: {prefix_text!r} is not a prefix length (10.0.0.1/24 has prefix length 24)")
    if not 1 <= prefix_length <= 31:
        raise ValueError(f"{value!r}: the prefix length must be 1 to 31, or the VM has no neighbours")
    network = ipaddress.ip_network(f"{address}/{prefix_length}", strict=False)
    for unusable, what in (
        (address.is_unspecified, "the unspecified address"),
        (address.is_loopback, "a loopback address"),
        (address.is_multicast, "a multicast address"),
        (address.is_reserved, "a reserved address (240.0.0.0/4)"),
    ):
        if unusable:
            raise ValueError(f"{value!r} is {what}; a VM needs a unicast address")
    if network.prefixlen <= 30 and address in (network.network_address, network.broadcast_address):
        which = "network" if address == network.network_address else "broadcast"
        raise ValueError(f"{value!r} is the {which} address of {network}")
    return str(address), network.prefixlen


# -- checking the document ----------------------------------------------------------------------
class _Checker:
    """Walks the document once, raising TopologyFileError at the first problem."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, field: str, message: str) -> TopologyFileError:
        return TopologyFileError(self.source, field, message)

    def mapping(self, value: object, field: str, keys: tuple[str, ...], required: tuple[str, ...], what: str) -> dict:
        if not isinstance(value, dict):
            raise self.fail(field, f"must be a mapping with {', '.join(keys)} ({what}), not {_kind(value)}")
        repeated = getattr(value, "repeated", ())
        if repeated:
            raise self.fail(_join(field, repeated[0]), "is given twice")
        for key in value:
            if key not in keys:
                raise self.fail(_join(field, key), f"unknown key (allowed: {', '.join(keys)})")
        for key in required:
            if key not in value:
                raise self.fail(_join(field, key), "is missing")
        return value

    def sequence(self, value: object, field: str, what: str) -> list:
        if value is None:
            return []
        if not isinstance(value, list):
            raise self.fail(field, f"must be a list of {what}, not {_kind(value)}")
        return value

    def name(self, value: object, field: str) -> str:
        if not isinstance(value, str):
            raise self.fail(field, f"must be a string, not {_kind(value)}")
        if not NAME_PATTERN.fullmatch(value):
            raise self.fail(field, f"{value!r} is not a valid name: start with a letter, then letters, digits or _")
        if value == CONTROLLER_NODE:
            raise self.fail(field, f"{value!r} is the name of the scenario's controller node")
        if ENDPOINT_NAME.fullmatch(value):
            raise self.fail(field, f"{value!r}: names tep<number> are the scenario's tunnel endpoints")
        return value


def _join(field: str, key: object) -> str:
    return f"{field}.{key}" if field else str(key)


def _kind(value: object) -> str:
    if value is None:
        return "null"
    return {dict: "a mapping", _Mapping: "a mapping", list: "a list", str: "a string", bool: "true/false"}.get(
        type(value), "a number" if isinstance(value, int | float) else type(value).__name__
    )


def parse_fabric(doc: object, source: str = "<document>") -> Fabric:
    """Check a document (as read from JSON or YAML) and return its fabric; TopologyFileError
    names `source` and the field."""
    check = _Checker(source)
    if doc is None:
        raise check.fail("file", "is empty: it must be a mapping with switches, links and vms")
    if not isinstance(doc, dict):
        raise check.fail("file", f"must be a mapping with switches, links and vms, not {_kind(doc)}")
    check.mapping(doc, "", TOP_KEYS, ("switches",), "the fabric")
    switches = _switches(check, doc["switches"])
    links = _links(check, doc.get("links"), switches)
    vms = _vms(check, doc.get("vms"), switches)
    _check_interface_names(check, switches, links, vms)
    return Fabric(tuple(spec for _, spec in switches.values()), tuple(links), tuple(vms))


def _switches(check: _Checker, value: object) -> dict[str, tuple[int, SwitchSpec]]:
    """name -> (index in the file, spec)."""
    items = check.sequence(value, "switches", "switches")
    if not items:
        raise check.fail("switches", "must list at least one switch")
    seen: dict[str, int] = {}
    given: dict[int, int] = {}  # dpid -> index of the switch that gave it
    rows = []
    for i, item in enumerate(items):
        field = f"switches[{i}]"
        body = check.mapping(item, field, SWITCH_KEYS, ("name", "role"), "a switch")
        name = check.name(body["name"], f"{field}.name")
        if name in seen:
            raise check.fail(f"{field}.name", f"{name!r} is already the name of switches[{seen[name]}]")
        seen[name] = i
        role = body["role"]
        if role not in ROLES:
            raise check.fail(f"{field}.role", f"{role!r} is not a role: give fabric or hypervisor")
        dpid = None
        if body.get("dpid") is not None:
            try:
                dpid = parse_dpid(body["dpid"])
            except ValueError as exc:
                raise check.fail(f"{field}.dpid", str(exc)) from None
            if dpid in given:
                other = given[dpid]
                raise check.fail(f"{field}.dpid", f"{dpid:#x} is already the dpid of switches[{other}] ({items[other]['name']})")
            given[dpid] = i
        rows.append((name, role, dpid))
    free = (n for n in range(1, MAX_DPID) if n not in given)
    return {name: (i, SwitchSpec(name, role, dpid or next(free))) for i, (name, role, dpid) in enumerate(rows)}


def _links(check: _Checker, value: object, switches: dict[str, tuple[int, SwitchSpec]]) -> list[tuple[str, str]]:
    links = []
    for i, item in enumerate(check.sequence(value, "links", "links")):
        field = f"links[{i}]"
        if isinstance(item, list):
            if len(item) != 2:
                raise check.fail(field, f"a link is [a, b] or {{a: ..., b: ...}}, not a list of {len(item)}")
            ends = [(f"{field}[{n}]", end) for n, end in enumerate(item)]
        elif isinstance(item, dict):
            body = check.mapping(item, field, LINK_KEYS, LINK_KEYS, "a link")
            ends = [(f"{field}.{key}", body[key]) for key in LINK_KEYS]
        else:
            raise check.fail(field, f"a link is [a, b] or {{a: ..., b: ...}}, not {_kind(item)}")
        for end_field, end in ends:
            if not isinstance(end, str):
                raise check.fail(end_field, f"must be a switch name, not {_kind(end)}")
            if end not in switches:
                raise check.fail(end_field, f"{end!r} is not a switch")
        a, b = (end for _, end in ends)
        if a == b:
            raise check.fail(field, f"links {a!r} to itself")
        links.append((a, b))
    return links


def _vms(check: _Checker, value: object, switches: dict[str, tuple[int, SwitchSpec]]) -> list[VmSpec]:
    vms: list[VmSpec] = []
    names: dict[str, int] = {}
    ips: dict[str, int] = {}
    macs: dict[str, int] = {}
    for i, item in enumerate(check.sequence(value, "vms", "VMs")):
        field = f"vms[{i}]"
        body = check.mapping(item, field, VM_KEYS, VM_KEYS, "a VM")
        name = check.name(body["name"], f"{field}.name")
        if name in names:
            raise check.fail(f"{field}.name", f"{name!r} is already the name of vms[{names[name]}]")
        if name in switches:
            raise check.fail(f"{field}.name", f"{name!r} is already the name of switches[{switches[name][0]}]")
        names[name] = i
        hypervisor = body["hypervisor"]
        if not isinstance(hypervisor, str):
            raise check.fail(f"{field}.hypervisor", f"must be a switch name, not {_kind(hypervisor)}")
        if hypervisor not in switches:
            raise check.fail(f"{field}.hypervisor", f"{hypervisor!r} is not a switch")
        if switches[hypervisor][1].role != "hypervisor":
            raise check.fail(
                f"{field}.hypervisor", f"{hypervisor!r} has role fabric; a VM attaches only to a switch with role hypervisor"
            )
        try:
            ip, prefix_length = parse_ip(body["ip"])
        except ValueError as exc:
            raise check.fail(f"{field}.ip", str(exc)) from None
        if ipaddress.IPv4Address(ip) in UNDERLAY_NETWORK:
            raise check.fail(f"{field}.ip", f"{ip} is in {UNDERLAY_NETWORK}, the tunnel endpoints' underlay network")
        if ip in ips:
            raise check.fail(f"{field}.ip", f"{ip} is already the address of vms[{ips[ip]}] ({vms[ips[ip]].name})")
        ips[ip] = i
        try:
            mac = parse_mac(body["mac"])
        except ValueError as exc:
            raise check.fail(f"{field}.mac", str(exc)) from None
        if mac in macs:
            raise check.fail(f"{field}.mac", f"{mac} is already the MAC of vms[{macs[mac]}] ({vms[macs[mac]].name})")
        macs[mac] = i
        vms.append(VmSpec(name, hypervisor, ip, prefix_length, mac))
    return vms


def _check_interface_names(
    check: _Checker, switches: dict[str, tuple[int, SwitchSpec]], links: list[tuple[str, str]], vms: list[VmSpec]
) -> None:
    """Mininet numbers a switch's ports from 1, one per cable or VM, and names them <switch>-eth<port>."""
    ports = dict.fromkeys(switches, 0)
    for a, b in links:
        ports[a] += 1
        ports[b] += 1
    for vm in vms:
        ports[vm.hypervisor] += 1
    for name, (_, spec) in switches.items():
        if spec.role == "hypervisor":
            ports[name] += 1  # its tunnel endpoint
    for name, (i, _) in switches.items():
        longest = f"{name}-eth{ports[name]}" if ports[name] else name
        if len(longest) > IFNAME_MAX:
            raise check.fail(
                f"switches[{i}].name",
                f"{name!r} is too long: its port {longest!r} would pass Linux's {IFNAME_MAX}-character limit on interface"
                f" names (with {ports[name]} ports, keep the name within {IFNAME_MAX - len(longest) + len(name)} characters)",
            )
    for i, vm in enumerate(vms):
        intf = f"{vm.name}-eth0"
        if len(intf) > IFNAME_MAX:
            raise check.fail(
                f"vms[{i}].name",
                f"{vm.name!r} is too long: its interface {intf!r} would pass Linux's {IFNAME_MAX}-character limit"
                f" on interface names (keep VM names within {IFNAME_MAX - len('-eth0')} characters)",
            )
