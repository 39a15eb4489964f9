"""The hook the venv's .pth file installs (controller/eventlet_compat.py): with it, Ryu's WSGI layer
imports; without it, it does not (so the hook, not luck, is what makes ryu-manager work)."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig

from controller.eventlet_compat import PTH_LINE
from mininet_scenarios.harness import REPO


def _run(code: str) -> subprocess.CompletedProcess:
    # -S: no site, so no .pth file runs; the venv's packages and the repo come by PYTHONPATH.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), sysconfig.get_paths()["purelib"]])}
    return subprocess.run([sys.executable, "-S", "-W", "ignore", "-c", code], capture_output=True, text=True, env=env, timeout=60)


def test_without_the_hook_ryu_s_wsgi_layer_does_not_import():
    done = _run("import ryu.app.wsgi")
    assert done.returncode != 0 and "ALREADY_HANDLED" in done.stderr


def test_the_hook_makes_it_import_and_costs_nothing_until_eventlet_wsgi_is_imported():
    done = _run(
        "import sys, controller.eventlet_compat as m; m.install(); m.install()\n"
        "assert 'eventlet' not in sys.modules\n"
        "import ryu.app.wsgi, eventlet.wsgi\n"
        "print(eventlet.wsgi.ALREADY_HANDLED)"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_the_pth_line_never_stops_an_interpreter_from_starting():
    assert PTH_LINE.startswith("import ") and PTH_LINE.count("\n") == 1, "a .pth runs a line only if it starts with import"
    done = _run(PTH_LINE.replace("controller.eventlet_compat", "no_such_module_anywhere") + "print('started')")
    assert done.returncode == 0 and done.stdout.strip() == "started"
