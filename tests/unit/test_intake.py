"""Packet-ins wait in the intake (controller/intake.py): probes first, a host's retries coalesced,
each switch bounded. At a cold start of 1,000 hypervisors, packet-ins queued behind each other in
arrival order delayed probes by seconds and hypervisors' uplinks were taken for VM ports."""

from __future__ import annotations

from types import SimpleNamespace

from controller.launcher import patch_eventlet

patch_eventlet()  # before anything imports ryu.app.wsgi

from ryu.controller import ofp_event  # noqa: E402
from ryu.controller.handler import MAIN_DISPATCHER  # noqa: E402
from ryu.ofproto import ofproto_v1_3_parser as parser  # noqa: E402

from apps import pipeline  # noqa: E402
from apps.forwarding import MISS_COOKIE  # noqa: E402
from controller import app as app_mod  # noqa: E402
from controller.app import GoldilocksController  # noqa: E402
from controller.intake import Intake  # noqa: E402
from tests.unit.test_learner import arp_frame  # noqa: E402
from topology import lldp  # noqa: E402

EVIDENCE_COOKIE = (
    (pipeline.COOKIE_MAGIC << pipeline.COOKIE_MAGIC_SHIFT) | (pipeline.APP_PORT_SECURITY << pipeline.COOKIE_APP_SHIFT) | 5
)


def test_a_probe_is_handled_before_every_host_frame_waiting():
    intake: Intake = Intake()
    for n in range(10_000):
        assert intake.offer(1 + n % 100, ("frame", n), f"frame {n}")
    intake.offer(7, None, "probe", probe=True)
    assert intake.probes_waiting == 1
    assert intake.take() == "probe"
    assert [intake.take() for _ in range(3)] == ["frame 0", "frame 1", "frame 2"], "frames keep their order"


def test_a_retry_of_a_frame_still_waiting_is_dropped_and_taken_once():
    intake: Intake = Intake()
    for _ in range(100):  # a VM repeating its ARP request while the controller is behind
        intake.offer(1, ("arp", 1), "arp")
    assert len(intake) == 1 and intake.duplicates == 99
    assert intake.take() == "arp" and intake.take() is None
    assert intake.offer(1, ("arp", 1), "arp again"), "once handled, the next one is new"


def test_a_flooding_switch_is_bounded_and_cannot_crowd_out_the_others():
    intake: Intake = Intake(per_switch=50, total=1000)
    kept = sum(intake.offer(1, ("flood", n), n) for n in range(500))
    assert kept == 50 and intake.shed == 450 and intake.waiting(1) == 50
    assert intake.offer(2, ("vm", 1), "the other switch's VM")
    assert intake.offer(1, None, "probe", probe=True), "probes have their own room"
    everything = Intake(per_switch=1000, total=100)
    assert sum(everything.offer(d, ("f", d), d) for d in range(150)) == 100, "and all switches together are bounded"


def _event(dpid: int, in_port: int, data: bytes, cookie: int, table: int = 0):
    datapath = SimpleNamespace(id=dpid)
    msg = SimpleNamespace(
        datapath=datapath, data=data, cookie=cookie, table_id=table, match=parser.OFPMatch(in_port=in_port)
    )
    return ofp_event.EventOFPPacketIn(msg)


def _shell():
    ready = SimpleNamespace(is_set=lambda: False, set=lambda: None)
    shell = SimpleNamespace(intake=Intake(), _intake_ready=ready)
    shell._offer_packet_in = lambda ev: GoldilocksController._offer_packet_in(shell, ev)
    return shell


def test_packet_ins_go_to_the_intake_not_behind_the_other_events():
    shell = _shell()
    arp = arp_frame("02:00:00:00:00:01", "10.0.0.1")
    GoldilocksController._send_event(shell, _event(1, 3, arp, MISS_COOKIE), MAIN_DISPATCHER)
    assert len(shell.intake) == 1


def test_which_packet_ins_are_the_same():
    shell = _shell()
    arp = arp_frame("02:00:00:00:00:01", "10.0.0.1")
    for _ in range(5):
        shell._offer_packet_in(_event(1, 3, arp, MISS_COOKIE))
    shell._offer_packet_in(_event(1, 4, arp, MISS_COOKIE))  # the same frame on another port is news
    shell._offer_packet_in(_event(2, 3, arp, MISS_COOKIE))  # and on another switch
    assert len(shell.intake) == 3
    for _ in range(5):  # each copy of spoofing evidence counts toward the response
        shell._offer_packet_in(_event(1, 3, arp, EVIDENCE_COOKIE))
    assert len(shell.intake) == 8
    probe = lldp.build_probe(b"k" * 32, 9, 1, "02:00:00:00:09:01", 0)
    shell._offer_packet_in(_event(2, 1, probe, 0))
    assert shell.intake.probes_waiting == 1


def test_a_compile_first_lets_waiting_packet_ins_be_handled_but_not_for_longer_than_the_last_compile(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(app_mod.time, "monotonic", lambda: clock[0])

    def handle_one(_seconds) -> None:  # what the intake loop does while the compile yields
        shell.intake.take()
        clock[0] += 0.001

    monkeypatch.setattr(app_mod.hub, "sleep", handle_one)
    shell = SimpleNamespace(intake=Intake(), _last_compile_seconds=0.0)
    for n in range(3):
        shell.intake.offer(1, n, n)
    GoldilocksController._let_intake_drain(shell)
    assert len(shell.intake) == 0, "a short backlog is handled before the compile"
    for n in range(1000):
        shell.intake.offer(1 + n % 10, n, n)
    shell._last_compile_seconds, started = 0.3, clock[0]
    GoldilocksController._let_intake_drain(shell)
    assert 0.3 <= clock[0] - started < 0.302 and len(shell.intake) > 0, "a storm waits no longer than a compile takes"


def test_copies_of_unanswered_requests_wait_behind_frames_that_teach_but_are_never_starved():
    """At a cold start every VM already learned keeps asking for its gateway: 20,000 such copies
    waited ahead of the VMs not learned yet and held their learning back by seconds."""
    from controller.intake import BACKGROUND_SHARE

    intake: Intake = Intake()
    for n in range(100):
        intake.offer(1 + n % 10, ("copy", n), f"copy {n}", background=True)
    for n in range(100):
        intake.offer(1 + n % 10, ("new", n), f"new {n}")
    intake.offer(3, None, "probe", probe=True)
    assert intake.urgent == 101 and len(intake) == 201
    taken = [intake.take() for _ in range(201)]
    assert taken[0] == "probe"
    new = [t for t in taken if t.startswith("new")]
    assert new == [f"new {n}" for n in range(100)], "frames keep their order"
    copies = [i for i, t in enumerate(taken) if t.startswith("copy")]
    last_new = taken.index("new 99")
    for start in range(1, last_new - BACKGROUND_SHARE):
        window = taken[start : start + BACKGROUND_SHARE]
        assert sum(t.startswith("copy") for t in window) == 1, "one take in BACKGROUND_SHARE goes to a copy while frames wait"
    assert [taken[i] for i in copies] == [f"copy {n}" for n in range(100)] and intake.take() is None


def test_unanswered_arp_copies_go_to_the_background_and_do_not_hold_a_compile_back(monkeypatch):
    shell = _shell()
    asking = arp_frame("02:00:00:00:00:01", "10.0.0.1", target_ip="10.0.0.254")
    unanswered_cookie = (pipeline.COOKIE_MAGIC << pipeline.COOKIE_MAGIC_SHIFT) | 77
    shell._offer_packet_in(_event(1, 3, asking, unanswered_cookie, table=pipeline.FORWARD))
    shell._offer_packet_in(_event(1, 4, arp_frame("02:00:00:00:00:02", "10.0.0.2"), MISS_COOKIE))
    assert len(shell.intake) == 2 and shell.intake.urgent == 1
    clock = [0.0]
    monkeypatch.setattr(app_mod.time, "monotonic", lambda: clock[0])

    def handle_one(_seconds) -> None:
        shell.intake.take()
        clock[0] += 0.001

    monkeypatch.setattr(app_mod.hub, "sleep", handle_one)
    shell._last_compile_seconds = 10.0
    GoldilocksController._let_intake_drain(shell)
    assert clock[0] == 0.001 and shell.intake.urgent == 0 and len(shell.intake) == 1, "the copy waits; the compile does not"
