"""The ping gap across a controller restart: a path that never came back is not reported as a short gap."""

import time
import types

import bench.measure as measure


class FakePing:
    def __init__(self, output: str) -> None:
        self.output = output

    def communicate(self, timeout=None):
        return self.output, ""

    def poll(self):
        return 0


def gap_for(reply_offsets: list[float], monkeypatch) -> measure.GapResult:
    """Replies at these offsets (seconds after the ping starts) of the 160 requests, 50 ms apart."""
    monkeypatch.setattr(measure.time, "sleep", lambda seconds: None)
    start = time.time()
    output = "\n".join(f"[{start + t:.6f}] 64 bytes from 10.0.0.2: icmp_seq={i}" for i, t in enumerate(reply_offsets))
    host = types.SimpleNamespace(popen=lambda *args, **kwargs: FakePing(output))
    dc = types.SimpleNamespace(layout=types.SimpleNamespace(vms={"vm2": ("hv1", "10.0.0.2", "02:00:00:00:00:02")}),
                               host=lambda name: host)
    return measure.ping_gap_across_restart(dc, "vm1", "vm2", kill=lambda: None, restart=lambda: None)


def test_replies_that_stop_for_good_give_an_open_ended_gap_to_the_last_request(monkeypatch):
    result = gap_for([i * 0.05 for i in range(40)], monkeypatch)  # 2 s of replies, then none
    assert result.open_ended
    assert result.largest_gap > 5.5  # from 1.95 s to the last request at 7.95 s
    assert result.replies == 40


def test_replies_that_come_back_give_the_largest_hole(monkeypatch):
    offsets = [i * 0.05 for i in range(160) if not 2.0 <= i * 0.05 < 3.0]
    result = gap_for(offsets, monkeypatch)
    assert not result.open_ended
    assert 1.0 < result.largest_gap < 1.1
