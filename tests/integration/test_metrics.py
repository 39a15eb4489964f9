"""/metrics of a real controller process, read as Prometheus reads it (prometheus_client's parser):
the types are right, a switch's series exist while it is connected and are gone once it has
disconnected, every histogram's buckets, count and sum agree, and the process metrics are there."""

from __future__ import annotations

import math
import urllib.request

from mininet_scenarios.harness import ControllerProcess
from tests import prometheus_text
from tests.integration.helpers import emulated_switch, wait_until

DPID = 0x71
DPID_LABEL = f"{DPID:016x}"
PER_SWITCH = ("goldilocks_packet_ins_total", "goldilocks_flow_mods_total", "goldilocks_switch_flows_desired")


def scrape(ctl: ControllerProcess) -> tuple[str, str]:
    """(content type, body) of GET /metrics, with no token: the endpoint is open."""
    with urllib.request.urlopen(ctl.rest_url + "/metrics", timeout=10) as answer:
        return answer.headers["Content-Type"], answer.read().decode()


def body(ctl: ControllerProcess) -> str:
    return scrape(ctl)[1]


def switch_series(text: str) -> dict[str, list[dict]]:
    return {name: [s for s in prometheus_text.series(text, name) if s.get("dpid") == DPID_LABEL] for name in PER_SWITCH}


def check_histograms(families: dict) -> int:
    """Every histogram's buckets are cumulative and end at +Inf with its count; its sum is a number."""
    seen = 0
    for family in families.values():
        if family.type != "histogram":
            continue
        groups: dict[tuple, dict] = {}
        for sample in family.samples:
            key = tuple(sorted((k, v) for k, v in sample.labels.items() if k != "le"))
            group = groups.setdefault(key, {"buckets": []})
            if sample.name.endswith("_bucket"):
                group["buckets"].append((float(sample.labels["le"]), sample.value))
            else:
                group[sample.name.rsplit("_", 1)[1]] = sample.value
        for key, group in groups.items():
            buckets = sorted(group["buckets"])
            assert buckets and buckets[-1][0] == math.inf, f"{family.name}{key}: no +Inf bucket"
            counts = [count for _, count in buckets]
            assert counts == sorted(counts), f"{family.name}{key}: buckets are not cumulative: {buckets}"
            assert buckets[-1][1] == group["count"], f"{family.name}{key}: +Inf bucket {buckets[-1][1]} != count {group['count']}"
            assert group["sum"] >= 0 and (group["count"] > 0 or group["sum"] == 0), f"{family.name}{key}: sum {group['sum']}"
            seen += 1
    return seen


def test_metrics_of_a_running_controller_follow_its_switches(tmp_path):
    ctl = ControllerProcess(state_dir=str(tmp_path), extra_args=["--no-ovsdb-inventory"]).start()
    try:
        content_type, text = scrape(ctl)
        assert content_type.startswith("text/plain; version=") and "charset=utf-8" in content_type
        assert switch_series(text) == {name: [] for name in PER_SWITCH}, "no switch yet, no switch series"

        with emulated_switch(ctl.of_port, DPID) as switch:

            def converged() -> str | None:
                text = body(ctl)
                done = prometheus_text.value(text, "goldilocks_switch_converge_seconds_count") == 1
                return text if done and prometheus_text.value(text, "goldilocks_flow_mods_total", dpid=DPID_LABEL) else None

            text = wait_until(converged, 30)
            assert text, f"the switch did not converge: {ctl.log_tail()}"
            assert switch.counters.flow_mods > 0
            families = prometheus_text.families(text)
            types = {
                "goldilocks_switches_connected": "gauge",
                "goldilocks_packet_ins": "counter",
                "goldilocks_flow_mods": "counter",
                "goldilocks_encrypt_drops": "counter",
                "goldilocks_switch_converge_seconds": "histogram",
                "goldilocks_packet_in_to_flow_mod_seconds": "histogram",
                "goldilocks_reconcile_seconds": "histogram",
                "goldilocks_rest_requests": "counter",
                "goldilocks_tunnels_up": "gauge",
                "goldilocks_quarantined_vms": "gauge",
                "process_cpu_seconds": "counter",
                "process_resident_memory_bytes": "gauge",
            }
            assert {name: families[name].type for name in types} == types
            assert prometheus_text.value(text, "goldilocks_switches_connected") == 1
            for name, found in switch_series(text).items():
                assert found == [{"dpid": DPID_LABEL}], f"{name}: {found}"
            flow_mods = prometheus_text.value(text, "goldilocks_flow_mods_total", dpid=DPID_LABEL)
            assert flow_mods > 0 and flow_mods <= switch.counters.flow_mods
            assert prometheus_text.value(text, "goldilocks_switch_flows_desired", dpid=DPID_LABEL) > 0
            assert check_histograms(families) >= 3
            assert prometheus_text.value(text, "goldilocks_reconcile_seconds_count") >= 1
            assert prometheus_text.value(text, "process_cpu_seconds_total") > 0
            assert prometheus_text.value(text, "process_resident_memory_bytes") > 10 * 2**20
            scrapes = prometheus_text.value(text, "goldilocks_rest_requests_total", method="GET", route="/metrics", status="200")
            assert scrapes >= 1, "the scrapes before this one are counted"

        def disconnected() -> str | None:
            text = body(ctl)
            return text if prometheus_text.value(text, "goldilocks_switches_connected") == 0 else None

        text = wait_until(disconnected, 15)
        assert text, "the controller still counts the switch as connected"
        assert switch_series(text) == {name: [] for name in PER_SWITCH}, "the switch's series outlived its connection"
        assert DPID_LABEL not in text
        # What happened stays counted: convergence is a histogram of the controller, not of the switch.
        assert prometheus_text.value(text, "goldilocks_switch_converge_seconds_count") == 1
        check_histograms(prometheus_text.families(text))
    finally:
        ctl.stop()
