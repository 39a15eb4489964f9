"""/metrics on prometheus_client: what a scrape holds, that series of what is gone disappear, that
a scrape never walks the flow tables, and that docs/metrics.md and the Grafana dashboard cannot
drift from the registry."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from controller import metrics_docs
from controller.metrics import Metrics
from crypto import wgkeys
from tests import prometheus_text
from tests.api_stub import make_api
from tests.unit.test_api_agents import Clock, connect, enroll, paired, report

DOCS = Path(__file__).resolve().parents[2] / "docs"


def scrape(metrics: Metrics) -> str:
    text = metrics.exposition().decode()
    list(text_string_to_metric_families(text))  # the library's own parser takes it
    return text


@pytest.fixture
def api(tmp_path):
    app, client = make_api(tmp_path)
    app.agents.clock = Clock()
    return app, client


# -- what happens: histograms and per-switch counters -------------------------------------------------
def test_learning_latency_is_a_histogram_whose_buckets_count_and_sum_agree():
    metrics = Metrics()
    for seconds in (0.0004, 0.003, 0.003, 0.2, 45.0):
        metrics.observe_learning(seconds)
    family = prometheus_text.families(scrape(metrics))["goldilocks_packet_in_to_flow_mod_seconds"]
    assert family.type == "histogram"
    buckets = {float(s.labels["le"]): s.value for s in family.samples if s.name.endswith("_bucket")}
    assert buckets[0.0005] == 1 and buckets[0.005] == 3 and buckets[0.3] == 4 and buckets[30.0] == 4
    assert buckets[float("inf")] == 5
    counts = [buckets[le] for le in sorted(buckets)]
    assert counts == sorted(counts), "buckets are cumulative"
    by_name = {s.name: s.value for s in family.samples if not s.name.endswith("_bucket")}
    assert by_name["goldilocks_packet_in_to_flow_mod_seconds_count"] == 5
    assert by_name["goldilocks_packet_in_to_flow_mod_seconds_sum"] == pytest.approx(45.2064)


def test_convergence_and_compile_times_are_histograms_and_the_last_compile_a_gauge():
    metrics = Metrics()
    metrics.observe_convergence(3.5)
    metrics.observe_reconcile(0.02)
    metrics.observe_reconcile(0.7)
    text = scrape(metrics)
    found = prometheus_text.families(text)
    assert found["goldilocks_switch_converge_seconds"].type == "histogram"
    assert found["goldilocks_reconcile_seconds"].type == "histogram"
    assert prometheus_text.value(text, "goldilocks_switch_converge_seconds_bucket", le="5.0") == 1
    assert prometheus_text.value(text, "goldilocks_reconcile_seconds_count") == 2
    assert "goldilocks_reconcile_seconds_last" not in found  # read from the app's state: only with watch()


def test_packet_ins_and_flow_mods_are_counted_per_switch_and_end_with_its_connection(api):
    app, client = api
    app.datapaths = {1: object(), 0xAB: object()}
    for dpid in app.datapaths:
        app.metrics.switch_connected(dpid)
    for _ in range(3):
        app.metrics.packet_in(1)
    app.metrics.packet_in(0xAB)
    app.metrics.flow_mods(0xAB, 40)
    text = client.call("GET", "/metrics").text
    assert prometheus_text.families(text)["goldilocks_packet_ins"].type == "counter"
    assert prometheus_text.value(text, "goldilocks_packet_ins_total", dpid="0000000000000001") == 3
    assert prometheus_text.value(text, "goldilocks_packet_ins_total", dpid="00000000000000ab") == 1
    assert prometheus_text.value(text, "goldilocks_flow_mods_total", dpid="00000000000000ab") == 40
    assert prometheus_text.value(text, "goldilocks_flow_mods_total", dpid="0000000000000001") == 0
    assert prometheus_text.total(text, "goldilocks_packet_ins_total") == 4

    del app.datapaths[0xAB]
    app.metrics.switch_gone(0xAB)
    text = client.call("GET", "/metrics").text
    assert {s["dpid"] for s in prometheus_text.series(text, "goldilocks_packet_ins_total")} == {"0000000000000001"}
    assert "00000000000000ab" not in text


def test_encrypt_drops_are_per_connected_switch_and_summed_for_the_tunnels_view(api):
    app, client = api
    app.datapaths = {2: object()}
    app.metrics.switch_connected(2)
    app.metrics.encrypt_drops_by_switch.update({2: 7, 9: 1})  # 9: a reply from a switch gone since
    text = client.call("GET", "/metrics").text
    assert prometheus_text.series(text, "goldilocks_encrypt_drops_total") == [{"dpid": "0000000000000002"}]
    assert prometheus_text.value(text, "goldilocks_encrypt_drops_total", dpid="0000000000000002") == 7


def test_rest_requests_are_counted_by_route_template_never_the_raw_path(api):
    app, client = api
    assert client.call("PUT", "/v1/vms/secret-name-1", {"macs": ["02:00:00:00:00:31"]}).status in (200, 201)
    assert client.call("GET", "/v1/vms/secret-name-1").status == 200
    assert client.call("GET", "/v1/vms/secret-name-2").status == 404
    assert client.call("GET", "/v1/vms", token="glk_wrong").status == 401
    text = client.call("GET", "/metrics").text
    assert "secret-name" not in text
    assert prometheus_text.value(text, "goldilocks_rest_requests_total", method="GET", route="/v1/vms/{name}", status="200") == 1
    assert prometheus_text.value(text, "goldilocks_rest_requests_total", method="GET", route="/v1/vms/{name}", status="404") == 1
    assert prometheus_text.value(text, "goldilocks_rest_requests_total", method="GET", route="/v1/vms", status="401") == 1
    assert prometheus_text.value(text, "goldilocks_rest_request_seconds_count", method="GET", route="/v1/vms/{name}") == 2


def test_two_controllers_in_one_process_keep_their_own_registries():
    one, two = Metrics(), Metrics()
    one.observe_reconcile(1.0)
    assert prometheus_text.value(scrape(one), "goldilocks_reconcile_seconds_count") == 1
    assert prometheus_text.value(scrape(two), "goldilocks_reconcile_seconds_count") == 0


def test_process_metrics_are_served(api):
    _, client = api
    answer = client.call("GET", "/metrics")
    assert answer.headers["content-type"].startswith("text/plain; version=")
    found = prometheus_text.families(answer.text)
    assert found["process_cpu_seconds"].type == "counter"
    assert found["process_resident_memory_bytes"].type == "gauge" and found["process_resident_memory_bytes"].samples[0].value > 0


# -- what is: state read at scrape time ------------------------------------------------------------
def test_tunnels_report_their_state_handshake_age_and_key_age_and_vanish_with_the_pair(api):
    app, client = api
    clock = app.agents.clock
    paired(app, client)
    text = client.call("GET", "/metrics").text
    assert prometheus_text.value(text, "goldilocks_tunnel_up", tunnel="hv1|hv2") == 0
    assert prometheus_text.series(text, "goldilocks_tunnel_handshake_age_seconds") == [], "no handshake yet"
    clock.now += 30
    report(app, "hv1", "hv2", handshake=clock.now - 5)
    report(app, "hv2", "hv1", handshake=clock.now - 5)
    clock.now += 2
    text = client.call("GET", "/metrics").text
    assert prometheus_text.value(text, "goldilocks_tunnel_up", tunnel="hv1|hv2") == 1
    assert prometheus_text.value(text, "goldilocks_tunnels_up") == 1
    assert prometheus_text.value(text, "goldilocks_tunnel_handshake_age_seconds", tunnel="hv1|hv2") == pytest.approx(2.0)
    assert prometheus_text.value(text, "goldilocks_tunnel_psk_age_seconds", tunnel="hv1|hv2") == pytest.approx(32.0)
    app.agents.rotate_psks()
    text = client.call("GET", "/metrics").text
    assert prometheus_text.value(text, "goldilocks_tunnel_psk_age_seconds", tunnel="hv1|hv2") == 0
    assert prometheus_text.value(text, "goldilocks_psk_rotations_total") == 1

    app.agents.revoke("hv2")
    text = client.call("GET", "/metrics").text
    assert "hv1|hv2" not in text and 'agent="hv2"' not in text
    assert prometheus_text.value(text, "goldilocks_agent_connected", agent="hv1") == 1


def test_an_agents_wireguard_key_age_survives_a_restart_and_starts_again_at_a_rotation(api, tmp_path):
    app, client = api
    clock = app.agents.clock
    cert = enroll(app, client, "hv1")
    connect(app, "hv1", cert)
    clock.now += 100
    text = client.call("GET", "/metrics").text
    assert prometheus_text.value(text, "goldilocks_agent_wireguard_key_age_seconds", agent="hv1") == 100
    assert prometheus_text.value(text, "goldilocks_agent_certificate_age_seconds", agent="hv1") == 100

    restarted, restarted_client = make_api(tmp_path)  # the same state directory: a controller restart
    restarted.agents.clock = clock
    text = restarted_client.call("GET", "/metrics").text
    assert prometheus_text.value(text, "goldilocks_agent_wireguard_key_age_seconds", agent="hv1") == 100
    assert prometheus_text.value(text, "goldilocks_agent_connected", agent="hv1") == 0

    rotation = app.agents.rotate_identity("hv1")
    new_key = wgkeys.encode(wgkeys.public_key(wgkeys.generate_private_key()))
    app.agents.new_identity("hv1", {"type": "identity", "rotation": rotation, "public_key": new_key})
    clock.now += 7
    text = client.call("GET", "/metrics").text
    assert prometheus_text.value(text, "goldilocks_agent_wireguard_key_age_seconds", agent="hv1") == 7


def test_quarantined_vms_are_counted_by_mode(api):
    app, client = api
    for name, mac in (("web1", "02:00:00:00:00:41"), ("web2", "02:00:00:00:00:42")):
        assert client.call("PUT", f"/v1/vms/{name}", {"macs": [mac]}).status in (200, 201)
    assert client.call("POST", "/v1/quarantine", {"vm": "web1", "reason": "x"}).status == 201
    assert client.call("POST", "/v1/quarantine", {"vm": "web2", "reason": "y", "mode": "remediate"}).status == 201
    text = client.call("GET", "/metrics").text
    assert prometheus_text.value(text, "goldilocks_quarantined_vms", mode="isolate") == 1
    assert prometheus_text.value(text, "goldilocks_quarantined_vms", mode="remediate") == 1
    client.call("DELETE", "/v1/quarantine/web1")
    text = client.call("GET", "/metrics").text
    assert prometheus_text.value(text, "goldilocks_quarantined_vms", mode="isolate") == 0
    assert prometheus_text.value(text, "goldilocks_quarantines_total", mode="isolate") == 1, "a counter does not go down"


class _NoWalking(dict):
    """A switch's desired table that refuses to be walked: a scrape may ask its size only."""

    def __iter__(self):
        raise AssertionError("a scrape walked a flow table")

    values = items = keys = __iter__


def test_a_scrape_never_walks_the_flow_tables():
    app = metrics_docs.example_app()
    app.desired = {1: _NoWalking({n: None for n in range(1000)})}
    text = scrape(app.metrics)
    assert prometheus_text.value(text, "goldilocks_switch_flows_desired", dpid="0000000000000001") == 1000


# -- the docs and the dashboard cannot drift ---------------------------------------------------------------
def test_docs_metrics_md_is_what_the_registry_exposes():
    assert (DOCS / "metrics.md").read_text(encoding="utf-8") == metrics_docs.render(), (
        "docs/metrics.md is stale: run `python -m controller.metrics_docs`"
    )


def test_the_example_controller_shows_every_family_with_samples():
    """Otherwise a labelled family would be documented without its labels."""
    empty = [f.name for f in metrics_docs.example_app().metrics.registry.collect() if not f.samples]
    assert not empty, f"give metrics_docs.example_app() something for {empty}"


PROMQL_WORDS = {
    "sum", "max", "min", "avg", "count", "rate", "irate", "increase", "histogram_quantile", "by", "without",
    "le", "dpid", "mode", "status", "tunnel", "agent", "instance", "on", "ignoring",
}  # fmt: skip


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads: identifiers left once strings, label matchers,
    ranges, grouping clauses, numbers and function names are taken out."""
    expr = re.sub(r'"[^"]*"', "", expr)
    expr = re.sub(r"\{[^}]*\}", "", expr)
    expr = re.sub(r"\[[^\]]*\]", "", expr)
    expr = re.sub(r"\b(by|without)\s*\([^)]*\)", "", expr)
    return {word for word in re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", expr) if word not in PROMQL_WORDS}


def test_metric_names_are_found_in_promql():
    expr = 'histogram_quantile(0.99, sum by (le) (rate(a_bucket{instance=~"$x"}[$__rate_interval]))) / max(b) + c{d="e"}'
    assert metric_names(expr) == {"a_bucket", "b", "c"}


def test_the_grafana_dashboard_imports_as_is_and_reads_only_metrics_the_registry_exposes():
    dashboard = json.loads((DOCS / "grafana-dashboard.json").read_text(encoding="utf-8"))
    assert [i["name"] for i in dashboard["__inputs"]] == ["DS_PROMETHEUS"]
    assert 36 <= dashboard["schemaVersion"] <= 41
    exposed = metrics_docs.exposed_names(metrics_docs.example_app().metrics)
    read = set()
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    for panel in panels:
        assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}"
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            names = metric_names(target["expr"])
            assert names, f"{panel['title']}: {target['expr']} reads no metric"
            assert names <= exposed, f"{panel['title']}: {sorted(names - exposed)} are not exposed"
            read |= names
    wanted = {
        "goldilocks_switch_converge_seconds_bucket", "goldilocks_packet_ins_total", "goldilocks_flow_mods_total",
        "goldilocks_tunnels_up", "goldilocks_tunnel_handshake_age_seconds", "goldilocks_encrypt_drops_total",
        "goldilocks_quarantined_vms", "goldilocks_tunnel_psk_age_seconds", "goldilocks_agent_wireguard_key_age_seconds",
        "process_cpu_seconds_total", "process_resident_memory_bytes",
    }  # fmt: skip
    assert wanted <= read, f"no panel for {sorted(wanted - read)}"
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))


def test_the_bench_reads_learning_quantiles_from_the_histogram_within_a_fifth():
    from bench.measure import histogram_quantile

    metrics, rng = Metrics(), random.Random(11)
    samples = sorted(rng.lognormvariate(-5, 1.2) for _ in range(2000))
    for seconds in samples:
        metrics.observe_learning(seconds)
    values = {}
    for family in text_string_to_metric_families(scrape(metrics)):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            values[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    for q in (0.5, 0.9, 0.99):
        exact = samples[int(q * len(samples))]
        assert histogram_quantile(values, "goldilocks_packet_in_to_flow_mod_seconds", q) == pytest.approx(exact, rel=0.2)
    assert histogram_quantile({}, "goldilocks_packet_in_to_flow_mod_seconds", 0.5) is None
