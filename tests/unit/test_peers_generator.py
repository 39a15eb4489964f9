"""The packet-in generator of bench/peers.py against the three real controllers (processes, no Mininet):
each one's answer to a new host is recognised, so the benchmark times what each controller really sends."""

import pytest

from bench.peers import CONTROLLERS, Punt, measure_step, quantile


@pytest.mark.timeout(120)
@pytest.mark.parametrize("controller", CONTROLLERS)
def test_every_new_host_is_answered_by_each_controller(controller):
    step = measure_step(controller, rate=40, seconds=1.0)
    assert "error" not in step, f"{step.get('error')}\n{step.get('log_tail')}"
    assert step["hosts"] == 40
    assert step["answered"] == 40 and step["unanswered"] == 0, step
    assert step["switches_disconnected"] == 0
    assert 0 < step["p50"] <= step["p90"] <= step["p99"] <= step["max"]


def test_a_pipeline_that_pushes_a_vlan_tag_punts_the_frame_tagged():
    frame = bytes(range(12)) + b"\x08\x00" + b"payload"
    tagged = Punt(1, 0, 1, vlan=100).frame(frame)
    assert tagged[12:16] == b"\x81\x00\x00\x64" and tagged[16:] == frame[12:]
    assert Punt(0, 0, 0).frame(frame) == frame


def test_quantiles_are_measured_values():
    values = [0.5, 0.1, 0.3, 0.2, 0.4]
    assert quantile(values, 0.5) == 0.3
    assert quantile(values, 0.99) == 0.5
    assert quantile([], 0.5) is None
