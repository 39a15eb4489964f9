"""Run the real controller as a process and talk to its REST API: shared by scenarios, tests and benchmarks."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# Admin token files of the controllers this process started, by REST URL: rest_get sends the
# token, because everything under /v1 except /v1/health and /v1/openapi.json needs one.
_TOKEN_FILES: dict[str, Path] = {}


def free_port() -> int:
    """A port free now, below the kernel's ephemeral range: a port the kernel hands out may be
    taken by any client's connection (a test's flood of them) before the controller binds it."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    for _ in range(200):
        port = random.randrange(max(1024, low - 12000), low)
        with socket.socket() as sock:
            try:
                sock.bind(("0.0.0.0", port))
            except OSError:
                continue
            return port
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ManagedProcess:
    """A child process in its own session, with an optional temporary directory: kill it (the
    whole process group), stop it and clean up, read the end of its log. Subclasses set
    `proc`, `_tmp` and `log_path`."""

    proc: subprocess.Popen | None
    _tmp: tempfile.TemporaryDirectory | None
    log_path: str

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)

    def stop(self) -> None:
        self.kill(signal.SIGTERM)
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(Path(self.log_path).read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


@dataclass
class ControllerProcess(ManagedProcess):
    """A `python -m controller` child process with its own ports and state dir."""

    state_dir: str = ""
    of_port: int = 0
    rest_port: int = 0
    agent_port: int = 0
    log_path: str = ""
    extra_args: list[str] = field(default_factory=list)
    proc: subprocess.Popen | None = None
    _tmp: tempfile.TemporaryDirectory | None = None

    def __post_init__(self) -> None:
        if not self.state_dir:
            self._tmp = tempfile.TemporaryDirectory(prefix="goldilocks-state-")
            self.state_dir = self._tmp.name
        self.of_port = self.of_port or free_port()
        self.rest_port = self.rest_port or free_port()
        self.agent_port = self.agent_port or free_port()
        self.log_path = self.log_path or os.path.join(self.state_dir, "controller.log")

    @property
    def rest_url(self) -> str:
        return f"http://127.0.0.1:{self.rest_port}"

    def start(self, wait: float = 30.0) -> ControllerProcess:
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [
                sys.executable, "-m", "controller",
                "--of-port", str(self.of_port),
                "--rest-port", str(self.rest_port),
                "--agent-port", str(self.agent_port),
                "--state-dir", self.state_dir,
                *self.extra_args,
            ],  # fmt: skip
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"controller exited with {self.proc.returncode}; log: {self.log_tail()}")
            try:
                rest_get(self.rest_url, "/v1/health", timeout=1)
                _TOKEN_FILES[self.rest_url] = Path(self.state_dir, "admin.token")
                return self
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"controller REST did not come up in {wait}s; log: {self.log_tail()}")

    @property
    def admin_token(self) -> str:
        """The admin token the controller wrote on first start (<state-dir>/admin.token)."""
        return Path(self.state_dir, "admin.token").read_text().strip()

    def api(self, method: str, path: str, body=None, expect: int | None = None):
        """Call the API as admin; with `expect`, fail unless the status is that."""
        status, doc = api_call(self.rest_url, method, path, body, self.admin_token)
        if expect is not None and status != expect:
            raise AssertionError(f"{method} {path} gave {status}, expected {expect}: {doc}")
        return doc


@dataclass
class AgentProcess(ManagedProcess):
    """A `python -m agent` child process (goldilocks-agent) for one hypervisor: in our own network
    namespace, where it reaches the controller and OVSDB, driving the hypervisor's tunnel-endpoint
    namespace (`--endpoint-netns`). Stopping it leaves the data plane running, as on a real host."""

    hypervisor: str
    args: list[str]
    log_path: str
    proc: subprocess.Popen | None = None
    _tmp: tempfile.TemporaryDirectory | None = None

    def start(self) -> AgentProcess:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "agent", *self.args],
                cwd=REPO,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def api_call(base_url: str, method: str, path: str, body=None, token: str | None = None, timeout: float = 10.0):
    """Call the REST API; return (status, parsed JSON or text). HTTP errors are returned, not raised."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(base_url + path, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            status, text, kind = resp.status, resp.read().decode(), resp.headers.get_content_type()
    except urllib.error.HTTPError as err:
        status, text, kind = err.code, err.read().decode(), err.headers.get_content_type()
    return status, (json.loads(text) if kind == "application/json" and text else text)


def rest_call(base_url: str, method: str, path: str, body=None, expect: int | None = None, timeout: float = 10.0):
    """Call the API as admin (the token of a controller this process started, or $GOLDILOCKS_TOKEN);
    with `expect`, fail unless the status is that. Returns the parsed body."""
    status, doc = api_call(base_url, method, path, body, _token_for(base_url), timeout)
    if expect is not None and status != expect:
        raise RuntimeError(f"{method} {path} gave {status}, expected {expect}: {doc}")
    return doc


def rest_get(base_url: str, path: str, timeout: float = 5.0, token: str | None = None):
    """GET a JSON (or text) document from the controller, with the admin token of a controller
    this process started (or $GOLDILOCKS_TOKEN for one started elsewhere)."""
    token = token or _token_for(base_url)
    request = urllib.request.Request(base_url + path)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=timeout) as resp:
        body = resp.read().decode()
        if resp.headers.get_content_type() == "application/json":
            return json.loads(body)
        return body


def _token_for(base_url: str) -> str | None:
    path = _TOKEN_FILES.get(base_url)
    if path is not None and path.exists():
        return path.read_text().strip()
    return os.environ.get("GOLDILOCKS_TOKEN") or None


def wait_for(predicate, timeout: float, interval: float = 0.2, what: str = "condition"):
    """Poll until predicate() returns a truthy value; return it, or raise TimeoutError."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except (OSError, urllib.error.URLError, ValueError) as exc:
            last_error = exc
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}" + (f" (last error: {last_error})" if last_error else ""))
