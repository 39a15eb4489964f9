"""Failed sign-ins are limited per client address (429 with Retry-After, before the token is even
checked, in a bounded table), and audit entries older than the retention are purged in bounded
batches. The REST layer runs in-process with a fake clock and per-request client addresses; one
test starts a real controller to prove the flags reach it."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest
from webob import Request

from controller import audit, auth
from controller.launcher import parse_args
from controller.settings import Settings
from controller.store import Store
from mininet_scenarios.harness import ControllerProcess
from tests.api_contract import Answer, Contract, HttpClient
from tests.api_stub import StubController, WSGIApplication, rest  # api_stub readies eventlet for Ryu first

ATTACKER, NEIGHBOUR = "198.51.100.66", "198.51.100.7"
WRONG = "glk_" + "A" * 43
BURST, RATE = 5, 0.5  # five failures at once, then one every two seconds
DAY = 86400.0


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Api:
    """The REST layer as the controller registers it, with a limiter on a fake clock, answering
    requests from any source address; every answer is checked against docs/openapi.yaml."""

    def __init__(self, state_dir: Path, max_clients: int = auth.MAX_CLIENTS) -> None:
        self.clock = Clock()
        self.app = StubController(state_dir)
        self.limiter = auth.SignInLimiter(BURST, RATE, max_clients, clock=self.clock)
        self.wsgi = WSGIApplication()
        rest.register(self.wsgi, self.app, self.limiter)
        self.contract = Contract()

    def call(self, path: str, token: str | None, address: str, method: str = "GET") -> Answer:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        request = Request.blank(path, method=method, headers=headers, environ={"REMOTE_ADDR": address})
        response = request.get_response(self.wsgi)
        answer = Answer(response.status_int, {k.lower(): v for k, v in response.headers.items()}, response.body)
        self.contract.check(method, path, answer)
        return answer

    def statuses(self, path: str, token: str | None, address: str, times: int) -> list[int]:
        return [self.call(path, token, address).status for _ in range(times)]


@pytest.fixture
def api(tmp_path):
    return Api(tmp_path)


def test_brute_force_gets_429_after_the_burst_and_then_even_the_right_token_is_refused(api):
    admin = api.app.admin_token
    assert api.statuses("/v1/vms", WRONG, ATTACKER, BURST) == [401] * BURST
    guess = api.call("/v1/vms", WRONG, ATTACKER)
    right = api.call("/v1/vms", admin, ATTACKER)
    missing = api.call("/v1/tokens", None, ATTACKER, method="POST")
    for answer in (guess, right, missing):
        assert answer.status == 429
        assert answer.headers["retry-after"] == "2"  # one more try every 1 / RATE seconds
        assert answer.json == {"error": "too many failed sign-ins from this address; try again later"}
    # Refused before the token was looked at: a right guess answers exactly as a wrong one.
    assert right.raw == guess.raw and admin not in right.text
    assert len(api.app.store.tokens()) == 1, "the refused POST /v1/tokens issued nothing"


def test_another_client_is_unaffected_and_successes_cost_nothing(api):
    admin = api.app.admin_token
    assert api.statuses("/v1/vms", admin, NEIGHBOUR, 50) == [200] * 50
    assert api.statuses("/v1/vms", WRONG, ATTACKER, BURST + 1) == [401] * BURST + [429]
    assert api.call("/v1/vms", admin, NEIGHBOUR).status == 200
    assert api.statuses("/v1/vms", WRONG, NEIGHBOUR, BURST + 1) == [401] * BURST + [429], "its own whole budget"


def test_the_limit_lifts_after_retry_after_and_tightens_again_on_the_next_failure(api):
    admin = api.app.admin_token
    api.statuses("/v1/vms", WRONG, ATTACKER, BURST)
    wait = int(api.call("/v1/vms", admin, ATTACKER).headers["retry-after"])
    api.clock.now += wait - 0.5
    assert api.call("/v1/vms", admin, ATTACKER).status == 429, "not before Retry-After"
    api.clock.now += 0.5
    assert api.call("/v1/vms", admin, ATTACKER).status == 200
    assert api.call("/v1/vms", WRONG, ATTACKER).status == 401, "one more try"
    assert api.call("/v1/vms", admin, ATTACKER).status == 429, "and limited again"
    api.clock.now += BURST / RATE  # long enough to forgive everything
    assert api.statuses("/v1/vms", WRONG, ATTACKER, BURST + 1) == [401] * BURST + [429]


def test_open_endpoints_are_never_limited_and_spend_nothing(api):
    assert api.statuses("/v1/health", WRONG, ATTACKER, 3 * BURST) == [200] * 3 * BURST
    assert api.statuses("/v1/vms", WRONG, ATTACKER, BURST + 1) == [401] * BURST + [429]
    for path in ("/v1/health", "/metrics"):
        assert api.call(path, WRONG, ATTACKER).status == 200
        assert api.call(path, None, ATTACKER).status == 200


def test_an_ipv6_client_is_its_slash_64_and_an_ipv4_mapped_one_its_ipv4_address(api):
    statuses = [api.call("/v1/vms", WRONG, f"2001:db8:0:1::{i:x}").status for i in range(1, BURST + 2)]
    assert statuses == [401] * BURST + [429], "another address of the same /64 is the same client"
    assert api.call("/v1/vms", api.app.admin_token, "2001:db8:0:2::1").status == 200, "the next /64 is not"
    api.statuses("/v1/vms", WRONG, ATTACKER, BURST)
    assert api.call("/v1/vms", api.app.admin_token, f"::ffff:{ATTACKER}").status == 429


def test_a_spray_of_addresses_cannot_grow_the_table_past_its_cap(tmp_path):
    api = Api(tmp_path, max_clients=100)
    for i in range(1000):
        assert api.call("/v1/vms", WRONG, f"10.{i // 250}.{i % 250}.1").status == 401
        assert api.limiter.remembered <= 100
    recent = "10.3.249.1"  # the last sprayed address is remembered
    assert api.statuses("/v1/vms", WRONG, recent, BURST) == [401] * (BURST - 1) + [429]
    api.clock.now += BURST / RATE + 1  # every budget whole again: the next failure forgets them all
    assert api.call("/v1/vms", WRONG, ATTACKER).status == 401
    assert api.limiter.remembered == 1


def test_one_log_line_per_client_when_it_becomes_limited_and_never_the_token(api, caplog):
    tried = "glk_" + "B" * 43
    with caplog.at_level(logging.DEBUG):
        api.statuses("/v1/vms", tried, ATTACKER, 4 * BURST)
        api.clock.now += 1 / RATE
        api.statuses("/v1/vms", tried, ATTACKER, 3)  # still failing: the same episode
        api.statuses("/v1/vms", tried, NEIGHBOUR, BURST + 2)
    lines = [r.getMessage() for r in caplog.records if "failed sign-ins:" in r.getMessage()]
    assert len(lines) == 2 and ATTACKER in lines[0] and NEIGHBOUR in lines[1], lines
    assert tried[4:] not in caplog.text and api.app.admin_token[4:] not in caplog.text


def test_audit_entries_older_than_the_retention_are_purged_and_newer_ones_stay(api):
    store, now = api.app.store, time.time()
    with store.transaction():
        for age_days, name in ((400, "ancient"), (366, "old"), (364, "recent"), (1, "new")):
            store.add_audit(now - age_days * DAY, "admin", "vm.create", name, "")
    assert audit.Retention(store, 365).run(now) == 2
    entries = api.call("/v1/audit", api.app.admin_token, NEIGHBOUR).json["entries"]
    targets = {e["target"] for e in entries}
    assert {"recent", "new"} <= targets and not {"ancient", "old"} & targets
    assert audit.Retention(store, 0).run(now + 1000 * DAY) == 0, "0 keeps every entry"
    assert len(store.audit_entries(1000)) == len(entries)


def test_the_purge_is_bounded_per_call_and_catches_up_one_batch_a_tick(tmp_path):
    store, now = Store(tmp_path), time.time()
    try:
        with store.transaction():
            for i in range(2500):
                store.add_audit(now - 400 * DAY + i, "admin", "vm.create", f"vm{i}", "")
            store.add_audit(now, "admin", "vm.create", "today", "")
        assert store.purge_audit(now - 365 * DAY, 1000) == 1000
        assert len(store.audit_entries(5000)) == 1501
        retention = audit.Retention(store, 365, batch=1000)
        assert [retention.run(now + tick) for tick in range(4)] == [1000, 500, 0, 0], "then not due for a while"
        assert [e.target for e in store.audit_entries(5000)] == ["today"]
        with store.transaction():
            store.add_audit(now - 400 * DAY, "admin", "vm.create", "late", "")
        assert retention.run(now + audit.PURGE_INTERVAL + 10) == 1, "due again after the interval"
    finally:
        store.close()


def test_the_flags_are_checked_and_reach_the_settings():
    args = parse_args(["--auth-failure-burst", "7", "--auth-failure-rate", "0.25", "--audit-retention", "0"])
    assert (args.auth_failure_burst, args.auth_failure_rate, args.audit_retention) == (7, 0.25, 0)
    for bad in (["--auth-failure-burst", "0"], ["--auth-failure-rate", "0"], ["--audit-retention", "-1"]):
        with pytest.raises(SystemExit):
            parse_args(bad)
    defaults = Settings.from_env({})
    assert (defaults.auth_failure_burst, defaults.auth_failure_rate, defaults.audit_retention_days) == (20, 1.0, 365.0)


def start_controller(state_dir: Path, args: list[str]) -> ControllerProcess:
    """Another process on this shared machine may take a free port between its choice and the
    controller's bind: try again on new ports, at most three times."""
    for attempt in range(3):
        ctl = ControllerProcess(state_dir=str(state_dir), extra_args=args)
        try:
            return ctl.start()
        except RuntimeError as exc:
            ctl.stop()
            if "Address already in use" not in str(exc) or attempt == 2:
                raise
    raise AssertionError("unreachable")


def test_a_real_controller_limits_sign_ins_and_purges_old_audit_entries_at_start(tmp_path):
    """The launcher flags reach the running controller: it purges at start and limits over HTTP."""
    store, now = Store(tmp_path), time.time()
    with store.transaction():
        store.add_audit(now - 40 * DAY, "admin", "vm.create", "stale", "")
        store.add_audit(now - 10 * DAY, "admin", "vm.create", "kept", "")
    store.close()
    args = ["--auth-failure-burst", "3", "--auth-failure-rate", "0.01", "--audit-retention", "30", "--agent-port", "0"]
    ctl = start_controller(tmp_path, args)
    try:
        client = HttpClient(ctl.rest_url, Contract(), ctl.admin_token)
        targets = {e["target"] for e in client.call("GET", "/v1/audit").json["entries"]}
        assert "kept" in targets and "stale" not in targets
        assert [client.call("GET", "/v1/vms", token=WRONG).status for _ in range(3)] == [401] * 3
        limited = client.call("GET", "/v1/vms")
        assert limited.status == 429 and int(limited.headers["retry-after"]) >= 90
        assert client.call("GET", "/v1/health", token="").status == 200
        log = Path(ctl.log_path).read_text()
        assert log.count("failed sign-ins:") == 1 and WRONG[4:] not in log and ctl.admin_token[4:] not in log
    finally:
        ctl.stop()


def test_a_purge_that_fails_is_logged_and_tried_again_later_not_raised(tmp_path, caplog):
    store = Store(tmp_path)
    retention = audit.Retention(store, 365)
    store.close()  # every statement now fails, as on a broken disk
    with caplog.at_level(logging.WARNING, logger="goldilocks.audit"):
        assert retention.run(time.time()) == 0
        assert retention.run(time.time() + 60) == 0, "not retried at once"
    assert caplog.text.count("purging entries older than 365 days failed") == 1


def test_a_purge_on_a_full_disk_is_logged_not_raised(tmp_path, caplog, monkeypatch):
    """A full disk is raised by the store as StateFullError, not sqlite3.Error: it must not escape
    either (at start it would have stopped the controller, on a tick logged a traceback)."""
    from controller.store import StateFullError

    store = Store(tmp_path)
    retention = audit.Retention(store, 365)

    def full(before, limit):
        raise StateFullError("cannot write the state database: database or disk is full; nothing was changed")

    monkeypatch.setattr(store, "purge_audit", full)
    with caplog.at_level(logging.WARNING, logger="goldilocks.audit"):
        assert retention.run(time.time()) == 0
    assert "purging entries older than 365 days failed" in caplog.text
