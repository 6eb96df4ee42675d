"""Server processes the tests start (Synapse, Tuwunel, the real Letta and its helpers): each in
its own process group, tied to the test process, waited for over HTTP and stopped for good."""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import ctypes
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

_running: set[subprocess.Popen[bytes]] = set()


def _die_with_parent() -> None:
    # Runs in the forked child: if the test process is killed outright, the kernel sends
    # SIGTERM to the server so that none outlives the test run. (Tied to the thread that
    # forks, so spawn() must run on the event loop thread, never via to_thread.)
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _kill_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)


@atexit.register
def _kill_leftovers() -> None:
    # Last resort when a test session ends without running fixture teardown.
    for proc in list(_running):
        _kill_group(proc, signal.SIGKILL)


def tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "<no log>"


def spawn(argv: list[str], log: Path, **kw: Any) -> subprocess.Popen[bytes]:
    """Start ``argv`` with its output appended to ``log``, in its own process group (so stop()
    gets every child) that dies with the test process."""
    with log.open("ab") as out:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent,
            **kw,
        )
    _running.add(proc)
    return proc


async def stop(
    proc: subprocess.Popen[bytes] | None, sig: int = signal.SIGTERM, grace: float = 15.0
) -> None:
    """Signal the process group, SIGKILL it after ``grace`` seconds."""
    if proc is None:
        return
    if proc.poll() is None:
        _kill_group(proc, sig)
        try:
            await asyncio.to_thread(proc.wait, grace)
        except subprocess.TimeoutExpired:
            _kill_group(proc, signal.SIGKILL)
            await asyncio.to_thread(proc.wait)
    _kill_group(proc, signal.SIGKILL)  # any child left behind in the group
    _running.discard(proc)


async def wait_until_answers(
    url: str,
    proc: subprocess.Popen[bytes],
    what: str,
    logs: Callable[[], str],
    timeout: float,
    interval: float = 0.1,
) -> None:
    """Poll ``url`` until it answers 200; fail with ``logs()`` when ``proc`` exits first or
    ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{what} exited with {proc.returncode}:\n{logs()}")
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with session.get(url) as resp:
                    if resp.status == 200:
                        return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what} did not answer within {timeout:.0f}s:\n{logs()}")
            await asyncio.sleep(interval)
