"""`make demo` as a user meets it: the data centre keeps running after its check, the printout says
how to open the web view and which CLI commands to try, every one of those works as printed, and
Ctrl-C takes everything down.

In a module of its own, so that no module-scoped data centre of this test process holds the
machine-wide Mininet lock that the demo process must take."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
import urllib.request

from mininet_scenarios.harness import REPO

FABRIC = ["--spines", "1", "--leaves", "1", "--hypervisors-per-leaf", "2", "--vms-per-hypervisor", "1"]
READY = "The data centre keeps running until Ctrl-C."


class Lines:
    """The process's output, read by a thread of its own (select() on a buffered pipe misses the
    lines the buffer already holds)."""

    def __init__(self, proc: subprocess.Popen):
        self.proc, self.text, self.lock = proc, "", threading.Lock()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            with self.lock:
                self.text += line

    def until_guide(self, timeout: float) -> str:
        """Everything printed up to the end of the guide (its last line names the controller's log)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if READY in self.text and re.search(r"Controller log: .*\n", self.text):
                    return self.text
            if not self.thread.is_alive():
                break
            time.sleep(0.2)
        raise AssertionError(f"the demo did not print its guide in {timeout} s (status {self.proc.poll()}):\n{self.text[-3000:]}")

    def rest(self, timeout: float) -> str:
        self.thread.join(timeout)
        with self.lock:
            return self.text


def _bridges() -> set[str]:
    listed = subprocess.run(["ovs-vsctl", "--timeout=10", "list-br"], capture_output=True, text=True, check=True)
    return set(listed.stdout.split())


def test_the_demo_keeps_running_and_its_printed_commands_work():
    before = _bridges()
    proc = subprocess.Popen(
        [sys.executable, "-m", "mininet_scenarios.datacenter", *FABRIC, "--keep-running"],
        cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        output = Lines(proc)
        guide = output.until_guide(timeout=240)
        assert "result: OK" in guide, guide
        url = re.search(r"Web view: (http://\S+/ui/)", guide).group(1)
        with urllib.request.urlopen(url, timeout=10) as answer:
            page = answer.read().decode()
        assert answer.status == 200 and "<html" in page.lower()
        token_file = re.search(r"sign in with the admin token in (\S+)", guide).group(1)
        assert os.stat(token_file).st_mode & 0o077 == 0, "the token file is readable by others"

        exports = re.search(r"^\s*export (.+)$", guide, re.M).group(1)
        env = dict(os.environ, **dict(item.split("=", 1) for item in shlex.split(exports)))
        commands = [
            shlex.split(line.split("#", 1)[0]) for line in guide.splitlines() if re.match(r"\s+\S*goldilocks \w", line)
        ]
        assert len(commands) == 3, guide
        outputs = []
        for argv in commands:
            ran = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
            assert ran.returncode == 0, f"{shlex.join(argv)} failed:\n{ran.stdout}\n{ran.stderr}"
            outputs.append(ran.stdout)
        assert "encrypt" in outputs[1].lower(), f"explain does not show the sample rule's encryption:\n{outputs[1]}"
        vm = commands[2][2]
        api = env["GOLDILOCKS_URL"] + f"/v1/quarantine/{vm}"
        auth = {"Authorization": "Bearer " + open(token_file).read().strip()}
        with urllib.request.urlopen(urllib.request.Request(api, headers=auth), timeout=10) as answer:
            assert answer.status == 200, f"{vm} is not quarantined after the printed command"
        ran = subprocess.run([commands[2][0], "release", vm], env=env, capture_output=True, text=True, timeout=60)
        assert ran.returncode == 0, ran.stderr
        assert proc.poll() is None, "the demo ended by itself"
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # what Ctrl-C sends
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    rest = output.rest(10)
    assert proc.returncode == 0, rest[-2000:]
    assert "stopping the data centre" in rest
    assert _bridges() <= before, f"the demo left bridges behind: {sorted(_bridges() - before)}"


def test_the_demo_run_from_a_script_checks_and_ends_by_itself():
    """stdin not a terminal and no mode given (how automation runs `make demo`): the check as JSON on
    stdout, its verdict as the exit status, and nothing left running."""
    before = _bridges()
    result = subprocess.run(
        [sys.executable, "-m", "mininet_scenarios.datacenter", *FABRIC],
        cwd=REPO, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads(result.stdout)
    assert summary["ok"] and summary["encryption"]["verdict"] == "encrypted"
    assert "stdin is not a terminal" in result.stderr and READY not in result.stdout + result.stderr
    assert _bridges() <= before
