"""The appservice as a real process (``python -m letta_appservice -c config.yaml``), started,
killed with SIGKILL and started again on the same database: the crash tests and the fault
suite."""

from __future__ import annotations

import contextlib
import json
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.harness.processes import spawn, stop, tail, wait_until_answers


class BridgeProcess:
    """One appservice config in a working directory of its own; each start logs to a file of
    its own (appservice-<n>.log)."""

    def __init__(self, workdir: Path, config: dict[str, Any]) -> None:
        self.workdir = workdir
        self.config = config
        self.port = config["appservice"]["port"]
        self.database = str(config["appservice"]["database"])
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self, wait_for: str = "/ready", **sections: dict[str, Any]) -> None:
        """Start it (``sections`` merged into the config first) and wait until ``wait_for``
        answers 200: /ready (the homeserver link works) or /health (it takes transactions)."""
        for name, values in sections.items():
            self.config[name] = {**self.config.get(name, {}), **values}
        # JSON is YAML: the config file is written without a YAML library.
        config_path = self.workdir / "config.yaml"
        config_path.write_text(json.dumps(self.config), encoding="utf-8")
        self.starts += 1
        log = self.log_path
        argv = [sys.executable, "-m", "letta_appservice", "-c", str(config_path)]
        self.proc = spawn(argv, log, cwd=self.workdir)
        await wait_until_answers(
            self.url + wait_for, self.proc, "the appservice", self.log_tail, 60
        )

    @property
    def log_path(self) -> Path:
        return self.workdir / f"appservice-{self.starts}.log"

    async def kill(self, sig: int = signal.SIGKILL) -> None:
        await stop(self.proc, sig)
        self.proc = None

    def log_tail(self, lines: int = 30) -> str:
        return tail(self.log_path, lines)

    def logs(self) -> str:
        """Every start's log, one after the other."""
        texts = []
        for n in range(1, self.starts + 1):
            with contextlib.suppress(OSError):
                path = self.workdir / f"appservice-{n}.log"
                texts.append(path.read_text(errors="replace"))
        return "\n".join(texts)

    def query(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        """A statement on its SQLite database, from outside the process."""
        path = self.database.removeprefix("sqlite:")
        with contextlib.closing(sqlite3.connect(path)) as conn, conn:
            return conn.execute(sql, args).fetchall()
