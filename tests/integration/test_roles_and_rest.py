"""Roles declared in the bridge's dp-desc override what the controller infers; REST speaks JSON."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

from mininet_scenarios.datacenter import DataCentre, Layout
from tests import prometheus_text


@pytest.fixture(scope="module")
def declared_dc():
    """One spine, one leaf, one hypervisor with a VM; the hypervisor and the spine declare the
    opposite of what their ports would suggest."""
    dc = DataCentre(Layout(1, 1, 1, 1), role_overrides={"hv1": "fabric", "sp1": "hypervisor"})
    try:
        dc.start()
        dc.wait_for_fabric(timeout=60)
        yield dc
    finally:
        dc.stop()


def _roles(dc) -> dict[str, str]:
    return {s["name"]: s["role"] for s in dc.topology()["switches"]}


def test_dp_desc_role_overrides_inference(declared_dc):
    dc = declared_dc
    dc.host("vm1").cmd("ping -c1 -W0.3 10.0.255.254")  # the VM makes itself known
    roles = _roles(dc)
    assert dc.learned_counts()["hosts"] == dc.built_counts()["hosts"] == 2  # the VM and the tunnel endpoint
    assert roles["hv1"] == "fabric", "a declared role=fabric must win over hosts on the ports"
    assert roles["sp1"] == "hypervisor"
    assert roles["lf1"] == "fabric"


def _request(url: str, method: str = "GET", token: str | None = None) -> tuple[int, str, str]:
    req = urllib.request.Request(url, method=method)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, resp.headers.get_content_type(), resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.headers.get_content_type(), err.read().decode()


def test_rest_health_metrics_and_errors(declared_dc):
    base = declared_dc.rest_url
    status, kind, body = _request(base + "/v1/health")
    assert (status, kind) == (200, "application/json")
    health = json.loads(body)
    assert health["status"] == "ok" and health["switches_connected"] == 3

    status, kind, body = _request(base + "/metrics")
    assert status == 200 and kind == "text/plain"
    assert prometheus_text.value(body, "goldilocks_switches_connected") == 3
    assert prometheus_text.value(body, "goldilocks_links") == 2
    assert prometheus_text.total(body, "goldilocks_packet_ins_total") > 0  # summed over the switches
    assert prometheus_text.total(body, "goldilocks_flow_mods_total") > 0
    assert len(prometheus_text.series(body, "goldilocks_flow_mods_total")) == 3, "one series per connected switch"
    assert prometheus_text.value(body, "goldilocks_reconcile_seconds_count") > 0

    for path, method, code in (
        ("/no/such/thing", "GET", 404),
        ("/v1/health", "POST", 405),
        ("/v1/switches/not-hex/flows", "GET", 400),
        ("/v1/switches/00000000000000ff/flows", "GET", 404),
    ):
        status, kind, body = _request(base + path, method, declared_dc.controller_proc.admin_token)
        assert status == code, f"{method} {path} gave {status}"
        assert kind == "application/json"
        assert "error" in json.loads(body) and set(json.loads(body)) <= {"error", "field"}
