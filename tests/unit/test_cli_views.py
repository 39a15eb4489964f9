"""API documents as tables: ages, sizes, labels, and the docs' own examples shown as an operator reads them."""

from __future__ import annotations

from datetime import UTC, datetime

from controller.cli import views

NOW = datetime(2026, 11, 30, 10, 5, 0, tzinfo=UTC)


def test_human_ages():
    assert [views.human_seconds(s) for s in (0, 3.4, 59.9, 61, 599, 600, 3600, 5400, 86400, 90000)] == [
        "0s",
        "3s",
        "59s",
        "1m1s",
        "9m59s",
        "10m",
        "1h",
        "1h30m",
        "1d",
        "1d1h",
    ]
    assert views.ago(None) == "-" and views.ago(-5) == "0s ago"  # a skewed clock never reads "in the future"
    assert views.ago_iso("2026-11-30T10:04:57.118Z", NOW) == "2s ago"
    assert views.ago_iso("not a time", NOW) == "not a time"


def test_bytes_and_labels():
    assert [views.bytes_text(n) for n in (0, 1023, 1024, 20480, 5 * 2**30)] == ["0B", "1023B", "1.0KiB", "20.0KiB", "5.0GiB"]
    assert views.labels_text({"tier": "web", "env": ""}) == "env=,tier=web"
    assert views.labels_text({}) == "-"


def test_an_agent_from_the_docs_as_a_row():
    agent = {
        "hypervisor": "hv1",
        "index": 1,
        "connected": True,
        "enrolled": "2026-11-30T10:03:14.042Z",
        "certificate_serial": "761308e4",
        "bridge": "br0",
        "underlay": {"ip": "192.0.2.11", "mac": "02:aa:00:00:00:01", "port": "eth1"},
        "wg_public_key_fingerprint": "sha256:2bd4311bd534ac3f",
        "tunnel_address": "100.127.0.1/16",
        "wg_running": True,
        "last_report_age": 0.8,
        "identity_rotation": False,
    }
    table = views.agent_table([agent])
    assert table.rows == [["hv1", "1", "yes", "br0", "192.0.2.11", "100.127.0.1/16", "sha256:2bd4311bd534ac3f", "0s ago", "no"]]
    pairs = dict(views.agent_pairs(agent, NOW).items)
    assert (
        pairs["enrolled"] == "2026-11-30T10:03:14.042Z (1m45s ago)"
        and pairs["underlay"] == "ip 192.0.2.11 mac 02:aa:00:00:00:01 port eth1"
    )


def test_a_vm_row_names_its_switch_and_quarantine():
    vm = {
        "name": "web1",
        "macs": ["02:00:00:00:00:01"],
        "ips": ["10.0.0.1"],
        "labels": {"tier": "web"},
        "location": {"mac": "02:00:00:00:00:01", "ips": ["10.0.0.1"], "dpid": "0000000000000011", "port": 3},
        "source": "ovsdb",
    }
    table = views.vm_table([vm], {"0000000000000011": "hv1"}, {"web1"})
    assert table.rows == [["web1", "hv1:3", "02:00:00:00:00:01", "10.0.0.1", "tier=web", "yes", "ovsdb"]]
    assert views.vm_table([vm], {}, set()).rows[0][1] == "0000000000000011:3"  # a switch the topology does not name


def test_explain_of_an_encrypted_flow_from_the_docs():
    doc = {
        "src": {
            "query": "web1",
            "vm": "web1",
            "labels": {"tier": "web"},
            "host": {"mac": "m", "ips": [], "dpid": "11", "port": 1},
        },
        "dst": {"query": "db1", "vm": "db1", "labels": {"tier": "db"}, "host": None},
        "proto": "tcp",
        "dport": 5432,
        "reason": "rule",
        "rule": {
            "name": "web-to-db",
            "src": "tier=web",
            "dst": "tier=db",
            "services": ["tcp/5432"],
            "action": "encrypt",
            "position": 0,
        },
        "match": {
            "src_selector": "tier=web",
            "dst_selector": "tier=db",
            "service": "tcp/5432",
            "src_labels": {},
            "dst_labels": {},
        },
        "action": "encrypt",
        "effective_action": "allow",
        "quarantined": [],
        "remediation": None,
        "encryption": {
            "src_hypervisor": "hv1",
            "dst_hypervisor": "hv2",
            "tunnel": "hv1|hv2",
            "tunnel_state": "down",
            "path": "tunnel",
            "delivered": False,
            "why": "tunnel hv1|hv2 is down: dropped (fail closed)",
        },
        "default_action": "deny",
    }
    (pairs,) = views.explain_views(doc)
    shown = dict(pairs.items)
    assert shown["from"] == "web1 [tier=web] on 11:1" and shown["to"] == "db1 [tier=db] (not seen yet)"
    assert shown["service"] == "tcp/5432" and shown["decided by"] == "rule web-to-db (position 0)"
    assert shown["encryption"] == "tunnel, DROPPED: tunnel hv1|hv2 is down: dropped (fail closed)"
    default = dict(
        views.explain_views(
            {
                **doc,
                "rule": None,
                "match": None,
                "reason": "default",
                "encryption": None,
                "action": "deny",
                "effective_action": "deny",
                "proto": None,
                "dport": None,
            }
        )[0].items
    )
    assert default["decided by"] == "the default action (deny)" and default["service"] == "any" and "encryption" not in default


def test_status_counts_what_is_down():
    doc = {
        "health": {"status": "ok", "uptime_seconds": 7300, "switches_connected": 2, "switches_synced": 1, "links": 1, "hosts": 4},
        "switches": [
            {"dpid": "01", "name": "sp1", "role": "fabric", "connected": True},
            {"dpid": "02", "name": "hv1", "role": "hypervisor", "connected": True},
            {"dpid": "03", "name": "hv2", "role": "hypervisor", "connected": False},
        ],
        "agents": [{"hypervisor": "hv1", "connected": True}, {"hypervisor": "hv2", "connected": False}],
        "tunnels": {"tunnels": [{"state": "up"}, {"state": "down"}, {"state": "down"}], "encrypt_drops": 7},
        "policies": {"default_action": "deny", "policies": [{}]},
        "quarantine": [],
    }
    (pairs,) = views.status_views(doc, "http://ctl", NOW)
    shown = dict(pairs.items)
    assert shown["controller"] == "http://ctl: ok, up 2h1m"
    assert shown["switches"] == "2 connected, 1 synced (1 fabric, 2 hypervisor); not connected: hv2"
    assert shown["agents"] == "2 enrolled, 1 connected; not connected: hv2"
    assert shown["tunnels"] == "1 up, 0 pending, 2 down; encrypt drops 7"
    assert shown["policy"] == "1 rule, default deny" and shown["quarantine"] == "0 VMs"


def test_a_flow_table_reads_like_ovs_ofctl():
    doc = {
        "dpid": "0000000000000011",
        "flows": [
            {"cookie": "0x6c01", "table": 0, "priority": 1000, "match": {"eth_type": 35020},
             "actions": ["Output(port=4294967293)"], "goto": None, "write_metadata": None},
            {"cookie": "0x6c02", "table": 1, "priority": 5, "match": {"eth_src": "02:00:00:00:00:01", "metadata": [4, 15]},
             "actions": [], "goto": 2, "write_metadata": [1, 255]},
            {"cookie": "0x6c03", "table": 3, "priority": 0, "match": {}, "actions": [], "goto": None, "write_metadata": None},
        ],
        "refused": [{"cookie": "0x6c09", "table": 2, "priority": 7, "match": {"in_port": 1}, "error": "OFPBAC_BAD_OUT_PORT",
                     "attempts": 3, "since_seconds": 1.0, "retry_in_seconds": 2.0}],
    }  # fmt: skip
    flows, refused = views.flow_views(doc)
    assert flows.rows == [
        ["0", "1000", "0x6c01", "eth_type=35020", "Output(port=4294967293)"],
        ["1", "5", "0x6c02", "eth_src=02:00:00:00:00:01,metadata=4/15", "write_metadata:1/255; goto:2"],
        ["3", "0", "0x6c03", "*", "drop"],
    ]
    assert refused.rows == [["2", "7", "0x6c09", "in_port=1", "OFPBAC_BAD_OUT_PORT", "3"]]
