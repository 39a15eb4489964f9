"""Goldilocks as a Ryu app among others (issue 11): a stock `ryu-manager` runs in the project's
venv (Ryu 4.34 imports a name eventlet dropped; the .pth hook `make install` writes puts it
back), runs `controller.app` beside `ryu.app.ofctl_rest`, and `goldilocks-controller --ryu-app`
does the same. Both apps must work: ofctl_rest lists and reads the switch, Goldilocks learns and
programs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from mininet_scenarios.harness import REPO, ControllerProcess, free_port
from tests.integration.helpers import emulated_switch, wait_until

BIN = Path(sys.executable).parent
DPID = 0x61


def get(url: str, token: str | None = None):
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    with urllib.request.urlopen(request, timeout=5) as answer:
        return json.loads(answer.read())


def both_apps_work(rest_url: str, of_port: int, token: str) -> None:
    with emulated_switch(of_port, DPID) as switch:
        assert wait_until(lambda: switch.counters.flow_mods > 0, 20), "Goldilocks did not program the switch"
        assert wait_until(lambda: DPID in get(f"{rest_url}/stats/switches"), 10), "ofctl_rest does not list the switch"
        desc = get(f"{rest_url}/stats/desc/{DPID}")
        assert str(DPID) in desc, f"ofctl_rest could not read the switch: {desc}"
        switches = get(f"{rest_url}/v1/topology", token)["switches"]
        assert any(int(s["dpid"], 16) == DPID for s in switches), switches
        assert get(f"{rest_url}/v1/health")["status"] == "ok"
        # An unknown path under /v1 is still the API's JSON 404.
        with pytest.raises(urllib.error.HTTPError) as missing:
            get(f"{rest_url}/v1/nothing-here", token)
        assert missing.value.code == 404 and "error" in json.loads(missing.value.read())


def test_a_stock_ryu_manager_starts_in_the_project_venv():
    done = subprocess.run([str(BIN / "ryu-manager"), "--version"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "ryu-manager 4.34" in done.stdout + done.stderr


def test_goldilocks_runs_under_a_stock_ryu_manager_beside_ofctl_rest(tmp_path):
    of_port, rest_port = free_port(), free_port()
    env = {
        **os.environ, "GOLDILOCKS_STATE_DIR": str(tmp_path), "GOLDILOCKS_AGENT_PORT": "0", "GOLDILOCKS_OVSDB_INVENTORY": "0",
    }  # fmt: skip
    log = open(tmp_path / "ryu-manager.log", "wb")
    proc = subprocess.Popen(
        [
            str(BIN / "ryu-manager"), "--ofp-tcp-listen-port", str(of_port), "--wsapi-port", str(rest_port),
            "--wsapi-host", "127.0.0.1", "controller.app", "ryu.app.ofctl_rest",
        ],  # fmt: skip
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    rest_url = f"http://127.0.0.1:{rest_port}"
    try:

        def up() -> bool:
            assert proc.poll() is None, (tmp_path / "ryu-manager.log").read_text()[-3000:]
            try:
                return get(f"{rest_url}/v1/health")["status"] == "ok"
            except OSError:
                return False

        assert wait_until(up, 30), "the REST API did not come up under ryu-manager"
        both_apps_work(rest_url, of_port, (tmp_path / "admin.token").read_text().strip())
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(20)
        log.close()


def test_goldilocks_controller_runs_extra_ryu_apps():
    ctl = ControllerProcess(extra_args=["--no-ovsdb-inventory", "--ryu-app", "ryu.app.ofctl_rest"]).start()
    try:
        both_apps_work(ctl.rest_url, ctl.of_port, ctl.admin_token)
    finally:
        ctl.stop()


@pytest.mark.parametrize("app, message", [("no.such.module", "no such Python module"), ("controller.app", "runs it already")])
def test_a_bad_extra_app_is_refused_before_ryu_starts(tmp_path, app, message):
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "controller", "--state-dir", str(tmp_path), "--ryu-app", app],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2 and message in done.stderr, done.stderr
    assert time.monotonic() - started < 30
