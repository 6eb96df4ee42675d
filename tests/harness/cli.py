"""The CLI as an operator meets it: the program in its own process, and a config written by the
first run then edited like an operator would."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML

from letta_appservice.__main__ import main

REPO = Path(__file__).resolve().parent.parent.parent
# What an operator writes over the example's placeholders.
OWN_VALUES: dict[str, dict[str, Any]] = {
    "homeserver": {"address": "http://localhost:8008", "domain": "test.local"},
    "appservice": {"address": "http://localhost:29330"},
    "letta": {"base_url": "http://localhost:8283"},
    "bridge": {"permissions": {"test.local": "user", "@admin:test.local": "admin"}},
}
TOKENS = {"as_token": "a" * 32, "hs_token": "b" * 32}


def cli(*args: str, cwd: Path | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    """The program in its own process, with no LETTA_* variables but those given."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("LETTA_")}
    return subprocess.run(
        [sys.executable, "-m", "letta_appservice", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        env=clean | env,
    )


def configured(tmp_path: Path, edits: dict[str, dict[str, Any]] | None = None) -> Path:
    """The example written by the first run, then edited like an operator would."""
    path = tmp_path / "config.yaml"
    assert main(["-c", str(path)]) == 0
    yaml = YAML()
    data = yaml.load(path)
    for values in (OWN_VALUES, edits or {}):
        for section, keys in values.items():
            data.setdefault(section, {}).update(keys)
    yaml.dump(data, path)
    return path


def one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in text, text
    return lines[0]
