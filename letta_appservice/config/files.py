"""Writing the files that hold secrets: config.yaml (tokens) and the registration.

Each is written owner-only from its first byte (a 0600 temp file beside it, renamed over it), so
no other user can read a token in a window between writing and chmod."""

from __future__ import annotations

import io
import os
import secrets
import tempfile
from collections.abc import Mapping, MutableMapping
from pathlib import Path
from typing import Any

from ..errors import ConfigError, UsageError
from . import example_text, yaml_rt

TOKEN_KEYS = {"as_token": "LETTA_APPSERVICE_AS_TOKEN", "hs_token": "LETTA_APPSERVICE_HS_TOKEN"}


def require_directory(path: Path) -> None:
    """Refuse to write into a directory that does not exist: a typo in ``-c`` must not create
    a tree somewhere unexpected."""
    parent = path.parent
    if not parent.is_dir():
        raise UsageError(f"cannot write {path}: the directory {parent} does not exist")


def write_private(path: Path, text: str) -> None:
    """Replace ``path`` with ``text``, never readable by anyone but the owner. An existing
    file's mode is kept if it is stricter than 0600, else tightened to 0600."""
    require_directory(path)
    mode = 0o600
    if path.exists():
        mode = (path.stat().st_mode & 0o600) or 0o600
    # mkstemp creates the file 0600 with O_EXCL; fchmod only ever removes bits from that.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_example(path: Path) -> None:
    """The first run's config: the commented example, 0600 because -g will put tokens in it."""
    write_private(path, example_text())


def dump_yaml(data: Any) -> str:
    out = io.StringIO()
    yaml_rt().dump(data, out)
    return out.getvalue()


def _is_placeholder(value: Any) -> bool:
    return not isinstance(value, str) or value in ("", "generate")


def fill_tokens(
    data: MutableMapping[str, Any], env: Mapping[str, str], rotate: bool = False
) -> list[str]:
    """Put fresh tokens into ``data`` (the config file's round-trip mapping) where it has none
    yet, or everywhere with ``rotate``; return the keys changed. A token set in the
    environment wins over the file, so it is never generated into the file."""
    from_env = [var for var in TOKEN_KEYS.values() if env.get(var)]
    if rotate and from_env:
        raise ConfigError(
            "",
            f"the tokens come from {' and '.join(from_env)}: put new values there, then run "
            "-g again (without --rotate-tokens)",
        )
    section = data.get("appservice")
    if section is None:
        section = data["appservice"] = {}
    if not isinstance(section, MutableMapping):
        raise ConfigError("appservice", "must be a mapping of keys, as in the example config")
    changed = []
    for key, var in TOKEN_KEYS.items():
        if not env.get(var) and (rotate or _is_placeholder(section.get(key))):
            section[key] = secrets.token_urlsafe(48)
            changed.append(f"appservice.{key}")
    return changed
