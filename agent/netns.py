"""Running the data plane's commands: bounded in time, in the agent's network namespace or another one.

Every external command of `agent.wireguard` and `agent.tunnel_ports` goes through a runner, a
callable with the shape of `SubprocessRunner`, so tests can swap in a fake host and a test bed can
run the agent's commands inside a namespace it built (`SubprocessRunner("/run/netns/X")`).

Secrets never travel in argv (any process can read another's command line): commands that need
a key read it from stdin (`input`). Failures become `DataplaneError`, whose message names the
command's purpose, its argv and its stderr, and therefore never holds key material.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

DEFAULT_TIMEOUT = 15.0  # seconds; every command here normally takes milliseconds
STDERR_SHOWN = 400  # characters of stderr kept in an error message


class DataplaneError(RuntimeError):
    """A data-plane command failed; the message names what it was for and why (never a key)."""


@dataclass(frozen=True)
class Result:
    returncode: int
    stdout: str
    stderr: str


class Runner(Protocol):
    def __call__(
        self,
        argv: Sequence[str],
        *,
        input: bytes | None = None,
        env: Mapping[str, str] | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> Result: ...


def in_namespace(netns: str | None, argv: Sequence[str]) -> list[str]:
    """argv run inside the network namespace at path `netns` (None: where we are)."""
    if netns is None:
        return list(argv)
    return ["nsenter", f"--net={netns}", "--", *argv]


class SubprocessRunner:
    """Runs commands as subprocesses, inside the namespace at path `netns` when given.
    `env` adds to (or, with an empty value, blanks) variables of our own environment."""

    def __init__(self, netns: str | None = None) -> None:
        self.netns = netns

    def __call__(
        self,
        argv: Sequence[str],
        *,
        input: bytes | None = None,
        env: Mapping[str, str] | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> Result:
        full = in_namespace(self.netns, argv)
        environment = {**os.environ, **env} if env else None
        stdin = {"input": input} if input is not None else {"stdin": subprocess.DEVNULL}
        try:
            proc = subprocess.run(full, capture_output=True, env=environment, timeout=timeout, check=False, **stdin)
        except subprocess.TimeoutExpired:
            return Result(124, "", f"timed out after {timeout:g} s")
        except OSError as exc:
            return Result(127, "", f"cannot run {full[0]}: {exc.strerror or exc}")
        return Result(proc.returncode, proc.stdout.decode("utf-8", "replace"), proc.stderr.decode("utf-8", "replace"))


def check(
    run: Runner,
    purpose: str,
    argv: Sequence[str],
    *,
    input: bytes | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    tolerate: tuple[str, ...] = (),
) -> Result:
    """Run argv; a non-zero exit raises DataplaneError naming `purpose`, unless its stderr
    contains one of `tolerate` (e.g. "Cannot find device" when deleting what may be gone)."""
    result = run(argv, input=input, env=env, timeout=timeout)
    if result.returncode != 0 and not any(t in result.stderr for t in tolerate):
        raise DataplaneError(f"{purpose} failed: `{' '.join(argv)}` exited {result.returncode}: {_short(result.stderr)}")
    return result


def _short(text: str) -> str:
    text = " ".join(text.split()) or "(no error output)"
    return text if len(text) <= STDERR_SHOWN else text[:STDERR_SHOWN] + "..."


_PROC_NETNS = re.compile(r"^/proc/(\d+)/ns/net$")
_NAMED_NETNS = re.compile(r"^(?:/var)?/run/netns/([^/]+)$")


def move_target(netns: str) -> str:
    """What `ip link set DEV netns X` accepts for the namespace at path `netns`.

    iproute2 6.1 refuses a path there ("Invalid netns value"); it takes a PID (of any process
    in the namespace) or a name under /run/netns. So /proc/PID/ns/net becomes PID and
    /run/netns/NAME becomes NAME; a bare PID or name is taken as it is."""
    if match := _PROC_NETNS.match(netns) or _NAMED_NETNS.match(netns):
        return match.group(1)
    if netns and "/" not in netns and not any(c.isspace() for c in netns):
        return netns
    raise ValueError(f"namespace {netns!r}: give /proc/PID/ns/net, /run/netns/NAME, a PID or a name under /run/netns")


def namespace_path(netns: str) -> str:
    """The path `nsenter --net=` needs for a namespace given as `move_target` accepts it."""
    if netns.startswith("/"):
        return netns
    return f"/proc/{netns}/ns/net" if netns.isdigit() else f"/run/netns/{netns}"
