"""The scenario's --topology file: a user's own fabric (any graph) builds into a Layout, and a bad
file is refused with one line naming the file and the field, before Mininet starts."""

from __future__ import annotations

import copy
import json
import re

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from mininet_scenarios import datacenter
from mininet_scenarios.datacenter import Layout
from mininet_scenarios.topology_file import TopologyFileError, load_fabric

# Three spines in a triangle, a cross link between the leaves, two hypervisors, three VMs.
GOOD_YAML = """\
switches:
  - {name: sp1, role: fabric, dpid: 0x101}
  - {name: sp2, role: fabric, dpid: "0x102"}
  - {name: sp3, role: fabric, dpid: 0000000000000103}
  - {name: lf1, role: fabric}
  - {name: lf2, role: fabric}
  - {name: hv1, role: hypervisor}
  - {name: hv2, role: hypervisor, dpid: 1}
links:
  - [sp1, sp2]
  - [sp2, sp3]
  - {a: sp3, b: sp1}
  - [sp1, lf1]
  - [sp2, lf2]
  - [lf1, lf2]
  - [lf1, hv1]
  - {a: lf2, b: hv2}
vms:
  - {name: vm1, hypervisor: hv1, ip: 10.0.0.1, mac: "02:00:00:00:00:01"}
  - {name: vm2, hypervisor: hv1, ip: 10.0.0.2/24, mac: 12:00:00:00:00:02}
  - {name: vm3, hypervisor: hv2, ip: 10.0.1.3, mac: "02:00:00:00:00:0A"}
"""

GOOD = {
    "switches": [
        {"name": "sp1", "role": "fabric", "dpid": 0x101},
        {"name": "sp2", "role": "fabric", "dpid": "0x102"},
        {"name": "sp3", "role": "fabric", "dpid": "0000000000000103"},
        {"name": "lf1", "role": "fabric"},
        {"name": "lf2", "role": "fabric"},
        {"name": "hv1", "role": "hypervisor"},
        {"name": "hv2", "role": "hypervisor", "dpid": 1},
    ],
    "links": [
        ["sp1", "sp2"],
        ["sp2", "sp3"],
        {"a": "sp3", "b": "sp1"},
        ["sp1", "lf1"],
        ["sp2", "lf2"],
        ["lf1", "lf2"],
        ["lf1", "hv1"],
        {"a": "lf2", "b": "hv2"},
    ],
    "vms": [
        {"name": "vm1", "hypervisor": "hv1", "ip": "10.0.0.1", "mac": "02:00:00:00:00:01"},
        {"name": "vm2", "hypervisor": "hv1", "ip": "10.0.0.2/24", "mac": "12:00:00:00:00:02"},
        {"name": "vm3", "hypervisor": "hv2", "ip": "10.0.1.3", "mac": "02:00:00:00:00:0A"},
    ],
}


def write(tmp_path, name: str, text: str):
    path = tmp_path / name
    path.write_text(text)
    return path


def fields(layout: Layout) -> tuple:
    """What DataCentre builds from a layout."""
    return (
        layout.switches,
        layout.roles,
        layout.switch_links,
        layout.vms,
        {vm: layout.prefix_length(vm) for vm in layout.vms},
    )


def test_a_yaml_file_with_a_triangle_of_spines_and_a_cross_link_builds_its_layout(tmp_path):
    layout = Layout.from_file(write(tmp_path, "fabric.yaml", GOOD_YAML))
    # Unquoted 0000000000000103 is hex, not YAML 1.1 octal; switches without a dpid take the lowest free ones.
    assert layout.switches == {"sp1": 0x101, "sp2": 0x102, "sp3": 0x103, "lf1": 2, "lf2": 3, "hv1": 4, "hv2": 1}
    fabric = dict.fromkeys(["sp1", "sp2", "sp3", "lf1", "lf2"], "fabric")
    assert layout.roles == {**fabric, "hv1": "hypervisor", "hv2": "hypervisor"}
    assert ("sp3", "sp1") in layout.switch_links and ("lf1", "lf2") in layout.switch_links
    assert len(layout.switch_links) == 8
    # 12:00:00:00:00:02 unquoted stays a MAC (YAML 1.1 would read a base-60 number); MACs are lower-cased.
    assert layout.vms == {
        "vm1": ("hv1", "10.0.0.1", "02:00:00:00:00:01"),
        "vm2": ("hv1", "10.0.0.2", "12:00:00:00:00:02"),
        "vm3": ("hv2", "10.0.1.3", "02:00:00:00:00:0a"),
    }
    assert [layout.prefix_length(vm) for vm in layout.vms] == [16, 24, 16]


def test_json_and_yaml_describe_the_same_fabric(tmp_path):
    from_yaml = Layout.from_file(write(tmp_path, "fabric.yml", GOOD_YAML))
    from_json = Layout.from_file(write(tmp_path, "fabric.json", json.dumps(GOOD)))
    assert fields(from_json) == fields(from_yaml) == fields(Layout.from_document(GOOD))


def test_parallel_cables_and_a_switch_alone_are_allowed():
    doc = {"switches": [{"name": "a", "role": "fabric"}, {"name": "b", "role": "fabric"}, {"name": "c", "role": "fabric"}],
           "links": [["a", "b"], ["b", "a"]]}  # fmt: skip
    layout = Layout.from_document(doc)
    assert layout.switch_links == [("a", "b"), ("b", "a")] and layout.vms == {}


def test_yaml_values_are_plain_strings_unless_integers(tmp_path):
    """YAML 1.1 would read `no` as false and `on` as true; here they are names."""
    text = "switches:\n  - {name: no, role: hypervisor}\n  - {name: on, role: fabric}\nlinks:\n  - [no, on]\n"
    fabric = load_fabric(write(tmp_path, "words.yaml", text))
    assert [s.name for s in fabric.switches] == ["no", "on"] and fabric.links == (("no", "on"),)


@pytest.mark.parametrize("dpid", [257, "0x101", "0X101", "0000000000000101", "0x0000000000000101"])
def test_a_dpid_is_an_integer_or_hex(dpid):
    doc = {"switches": [{"name": "sp1", "role": "fabric", "dpid": dpid}]}
    assert Layout.from_document(doc).switches == {"sp1": 0x101}


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 3), st.integers(1, 3), st.integers(1, 3), st.integers(1, 3))
def test_every_leaf_spine_layout_reads_back_from_its_document(spines, leaves, hypervisors, vms):
    layout = Layout(spines, leaves, hypervisors, vms)
    doc = json.loads(json.dumps(layout.to_document()))
    assert fields(Layout.from_document(doc)) == fields(layout)


def with_change(change) -> dict:
    doc = copy.deepcopy(GOOD)
    change(doc)
    return doc


def set_in(path: tuple, value):
    def change(doc):
        target = doc
        for key in path[:-1]:
            target = target[key]
        if value is DELETE:
            del target[path[-1]]
        else:
            target[path[-1]] = value

    return change


DELETE = object()


def add(section: str, item):
    return lambda doc: doc.setdefault(section, []).append(item)


def every(*changes):
    def change(doc):
        for one in changes:
            one(doc)

    return change


REFUSALS = [
    # structure and keys
    (set_in(("vm",), []), "vm", "unknown key"),
    (set_in(("switches",), DELETE), "switches", "is missing"),
    (set_in(("switches",), []), "switches", "at least one switch"),
    (set_in(("switches",), {"sp1": "fabric"}), "switches", "must be a list"),
    (set_in(("switches", 0, "dipd"), 5), "switches[0].dipd", "unknown key (allowed: name, role, dpid)"),
    (set_in(("switches", 1, "role"), DELETE), "switches[1].role", "is missing"),
    (set_in(("switches", 1), "sp2"), "switches[1]", "must be a mapping"),
    (set_in(("vms", 0, "colour"), "red"), "vms[0].colour", "unknown key"),
    (set_in(("vms", 2, "mac"), DELETE), "vms[2].mac", "is missing"),
    (set_in(("links", 2, "c"), "lf1"), "links[2].c", "unknown key"),
    (set_in(("links", 0), ["sp1", "sp2", "sp3"]), "links[0]", "not a list of 3"),
    (set_in(("links", 0), "sp1-sp2"), "links[0]", "a link is [a, b]"),
    # switches
    (set_in(("switches", 0, "role"), "spine"), "switches[0].role", "'spine' is not a role"),
    (set_in(("switches", 4, "name"), "lf1"), "switches[4].name", "'lf1' is already the name of switches[3]"),
    (set_in(("switches", 1, "dpid"), 0x101), "switches[1].dpid", "0x101 is already the dpid of switches[0] (sp1)"),
    (set_in(("switches", 3, "dpid"), "0x103"), "switches[3].dpid", "already the dpid of switches[2] (sp3)"),
    (set_in(("switches", 0, "dpid"), "101"), "switches[0].dpid", "is not a dpid"),
    (set_in(("switches", 0, "dpid"), "0xfoo"), "switches[0].dpid", "is not a dpid"),
    (set_in(("switches", 0, "dpid"), True), "switches[0].dpid", "is not a dpid"),
    (set_in(("switches", 0, "dpid"), 0), "switches[0].dpid", "out of range"),
    (set_in(("switches", 0, "dpid"), 2**64), "switches[0].dpid", "out of range"),
    (set_in(("switches", 0, "name"), "sp-1"), "switches[0].name", "not a valid name"),
    (set_in(("switches", 0, "name"), "1sp"), "switches[0].name", "not a valid name"),
    (set_in(("switches", 0, "name"), 7), "switches[0].name", "must be a string"),
    (set_in(("switches", 0, "name"), "c0"), "switches[0].name", "controller"),
    # links
    (set_in(("links", 1, 1), "lf9"), "links[1][1]", "'lf9' is not a switch"),
    (set_in(("links", 2, "b"), "sp9"), "links[2].b", "'sp9' is not a switch"),
    (set_in(("links", 3), ["lf1", "lf1"]), "links[3]", "links 'lf1' to itself"),
    (set_in(("links", 2, "a"), 3), "links[2].a", "must be a switch name"),
    # VMs
    (set_in(("vms", 1, "hypervisor"), "hv9"), "vms[1].hypervisor", "'hv9' is not a switch"),
    (set_in(("vms", 1, "hypervisor"), "lf1"), "vms[1].hypervisor", "'lf1' has role fabric"),
    (set_in(("vms", 2, "name"), "vm1"), "vms[2].name", "'vm1' is already the name of vms[0]"),
    (set_in(("vms", 2, "name"), "hv2"), "vms[2].name", "'hv2' is already the name of switches[6]"),
    (set_in(("vms", 2, "ip"), "10.0.0.1/24"), "vms[2].ip", "10.0.0.1 is already the address of vms[0] (vm1)"),
    (set_in(("vms", 2, "mac"), "02:00:00:00:00:01"), "vms[2].mac", "already the MAC of vms[0] (vm1)"),
    (set_in(("vms", 2, "mac"), "12:00:00:00:00:02"), "vms[2].mac", "already the MAC of vms[1] (vm2)"),
    (set_in(("vms", 2, "mac"), "01:00:5e:00:00:01"), "vms[2].mac", "multicast"),
    (set_in(("vms", 2, "mac"), "ff:ff:ff:ff:ff:ff"), "vms[2].mac", "multicast"),
    (set_in(("vms", 2, "mac"), "00:00:00:00:00:00"), "vms[2].mac", "all-zero"),
    (set_in(("vms", 2, "mac"), "02:00:00:00:00"), "vms[2].mac", "not a MAC address"),
    (set_in(("vms", 2, "mac"), "02-00-00-00-00-03"), "vms[2].mac", "not a MAC address"),
    (set_in(("vms", 2, "mac"), "02:00:00:00:00:0g"), "vms[2].mac", "not a MAC address"),
    (set_in(("vms", 2, "ip"), "10.0.0.256"), "vms[2].ip", "not an IPv4 address"),
    (set_in(("vms", 2, "ip"), "10.0.0"), "vms[2].ip", "not an IPv4 address"),
    (set_in(("vms", 2, "ip"), 167772163), "vms[2].ip", "give it as a string"),
    (set_in(("vms", 2, "ip"), "fd00::3"), "vms[2].ip", "IPv6"),
    (set_in(("vms", 2, "ip"), "224.0.0.3"), "vms[2].ip", "multicast"),
    (set_in(("vms", 2, "ip"), "127.0.0.3"), "vms[2].ip", "loopback"),
    (set_in(("vms", 2, "ip"), "0.0.0.0"), "vms[2].ip", "unspecified"),
    (set_in(("vms", 2, "ip"), "240.0.0.3"), "vms[2].ip", "reserved"),
    (set_in(("vms", 2, "ip"), "10.0.0.3/33"), "vms[2].ip", "prefix length must be 1 to 31"),
    (set_in(("vms", 2, "ip"), "10.0.0.3/255.255.0.0"), "vms[2].ip", "is not a prefix length"),
    (set_in(("vms", 2, "ip"), "10.0.0.3/32"), "vms[2].ip", "prefix length must be 1 to 31"),
    (set_in(("vms", 2, "ip"), "10.0.0.0/24"), "vms[2].ip", "network address of 10.0.0.0/24"),
    (set_in(("vms", 2, "ip"), "10.0.255.255"), "vms[2].ip", "broadcast address of 10.0.0.0/16"),
    (set_in(("vms", 2, "name"), "vm-3"), "vms[2].name", "not a valid name"),
    # Linux interface names: at most 15 characters
    (set_in(("vms", 2, "name"), "vm345678901"), "vms[2].name", "'vm345678901-eth0' would pass Linux's 15-character limit"),
    (
        every(add("switches", {"name": "spine_long12", "role": "fabric"}), add("links", ["spine_long12", "sp1"]),
              add("links", ["sp2", "spine_long12"])),
        "switches[7].name",
        "'spine_long12' is too long: its port 'spine_long12-eth2' would pass Linux's 15-character limit",
    ),
]


@pytest.mark.parametrize("change, field, detail", REFUSALS, ids=[f"{i}:{r[1]}" for i, r in enumerate(REFUSALS)])
def test_a_bad_document_is_refused_naming_the_file_and_field(change, field, detail):
    with pytest.raises(TopologyFileError) as raised:
        Layout.from_document(with_change(change), "topology.yaml")
    message = str(raised.value)
    assert message.startswith(f"topology.yaml: {field}: "), message
    assert detail in message, message
    assert "\n" not in message


def test_names_fit_linux_interface_names_exactly():
    """Mininet numbers a switch's ports from 1: a 10-character switch with 9 ports ends at
    '<name>-eth9' (15 characters); a tenth port would be '<name>-eth10' (16). A hypervisor's
    ports include the one its tunnel endpoint is cabled to."""

    def star(ports: int, vm_name: str = "v") -> dict:
        hub = "abcdefghij"
        return {
            "switches": [{"name": hub, "role": "hypervisor"}] + [{"name": f"s{i}", "role": "fabric"} for i in range(ports - 1)],
            "links": [[hub, f"s{i}"] for i in range(ports - 1)],
            "vms": [{"name": vm_name, "hypervisor": hub, "ip": "10.0.0.1", "mac": "02:00:00:00:00:01"}],
        }

    Layout.from_document(star(8, vm_name="vm34567890"))  # 'vm34567890-eth0' is 15; 7 links, a VM, the endpoint
    with pytest.raises(TopologyFileError, match=r"switches\[0\]\.name: 'abcdefghij' is too long.*within 9 characters"):
        Layout.from_document(star(9))


@pytest.mark.parametrize(
    "vm, field, detail",
    [
        ({"name": "tep1", "hypervisor": "hv1", "ip": "10.0.0.1", "mac": "02:00:00:00:00:01"}, "vms[0].name", "tunnel endpoints"),
        ({"name": "vm1", "hypervisor": "hv1", "ip": "172.31.4.4", "mac": "02:00:00:00:00:01"}, "vms[0].ip", "underlay"),
    ],
)
def test_the_tunnel_endpoints_names_and_underlay_are_reserved(vm, field, detail):
    doc = {"switches": [{"name": "hv1", "role": "hypervisor"}], "vms": [vm]}
    with pytest.raises(TopologyFileError, match=rf"{re.escape(field)}: .*{detail}"):
        Layout.from_document(doc)


@pytest.mark.parametrize(
    "name, text, field, detail",
    [
        ("twice.yaml", "switches:\n  - {name: sp1, role: fabric, name: sp2}\n", "switches[0].name", "is given twice"),
        ("twice.json", '{"switches": [{"name": "sp1", "role": "fabric", "role": "hypervisor"}]}', "switches[0].role", "twice"),
        ("top.yaml", "switches: [{name: sp1, role: fabric}]\nlinks: []\nlinks: []\n", "links", "is given twice"),
        ("list.yaml", "- sp1\n", "file", "must be a mapping"),
        ("empty.yaml", "", "file", "is empty"),
        ("syntax.yaml", "switches: [{name: sp1\n", "file", "is not valid YAML"),
        ("syntax.json", "{'switches': []}", "file", "is not valid JSON"),
        ("json.topo", "switches: []\n", "file", "is not valid JSON"),  # only .yaml/.yml are YAML
    ],
)
def test_a_bad_file_is_refused_naming_the_file_and_field(tmp_path, name, text, field, detail):
    path = write(tmp_path, name, text)
    with pytest.raises(TopologyFileError) as raised:
        Layout.from_file(path)
    assert str(raised.value).startswith(f"{path}: {field}: ") and detail in str(raised.value), str(raised.value)
    assert "\n" not in str(raised.value)


def test_a_missing_file_is_refused(tmp_path):
    with pytest.raises(TopologyFileError, match=r"nothere\.yaml: file: cannot be read"):
        Layout.from_file(tmp_path / "nothere.yaml")


def test_yaml_merge_keys_are_not_duplicates(tmp_path):
    text = "switches:\n  - &sp {name: sp1, role: fabric}\n  - {<<: *sp, name: sp2}\n"
    layout = Layout.from_file(write(tmp_path, "merge.yaml", text))
    assert layout.roles == {"sp1": "fabric", "sp2": "fabric"}


# -- the command line -------------------------------------------------------------------------
def refuse_to_run(*args, **kwargs):
    raise AssertionError("the network must not start")


def test_a_bad_file_exits_2_with_one_line_before_anything_starts(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(datacenter, "running", refuse_to_run)
    doc = with_change(set_in(("vms", 1, "hypervisor"), "hv9"))
    path = write(tmp_path, "topology.yaml", yaml.safe_dump(doc))
    assert datacenter.main(["--topology", str(path), "--check"]) == 2
    err = capsys.readouterr().err
    assert err == f"error: {path}: vms[1].hypervisor: 'hv9' is not a switch\n"


def test_connect_late_must_name_a_switch_of_the_fabric(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(datacenter, "running", refuse_to_run)
    path = write(tmp_path, "fabric.yaml", GOOD_YAML)
    assert datacenter.main(["--topology", str(path), "--connect-late", "hv9=2"]) == 2
    assert capsys.readouterr().err == "error: --connect-late: 'hv9' is not a switch of this fabric\n"


@pytest.mark.parametrize("flag", ["--spines", "--leaves", "--hypervisors-per-leaf", "--vms-per-hypervisor"])
def test_topology_and_leaf_spine_flags_exclude_each_other(flag, capsys):
    with pytest.raises(SystemExit) as raised:
        datacenter.parse_args(["--topology", "fabric.yaml", flag, "2"])  # even at its default value
    assert raised.value.code == 2 and "--topology" in capsys.readouterr().err


def test_leaf_spine_flags_keep_their_defaults():
    args = datacenter.parse_args(["--spines", "3"])
    assert (args.spines, args.leaves, args.hypervisors_per_leaf, args.vms_per_hypervisor) == (3, 2, 2, 2)
    assert args.topology is None and args.connect_late == [] and args.info is None


@pytest.mark.parametrize("value", ["hv1", "hv1=", "=3", "hv1=-1", "hv1=soon", "hv1=nan", "hv1=inf"])
def test_connect_late_is_name_equals_seconds(value):
    with pytest.raises(SystemExit):
        datacenter.parse_args(["--connect-late", value])


def test_connect_late_parses_and_repeats():
    args = datacenter.parse_args(["--connect-late", "hv1=5", "--connect-late", "hv2=0.5"])
    assert args.connect_late == [("hv1", 5.0), ("hv2", 0.5)]
    with pytest.raises(SystemExit):
        datacenter.parse_args(["--connect-late", "hv1=5", "--connect-late", "hv1=6"])
