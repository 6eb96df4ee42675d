"""The first run and ``-g``: write the example config or the registration, and say what to do
next with a command that works from where the operator stands."""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from collections.abc import Mapping, MutableMapping
from pathlib import Path

import attrs

from ..config import ENV_OVERRIDES, REQUIRED, parse_config, read_yaml
from ..config.files import TOKEN_KEYS, dump_yaml, fill_tokens, write_example, write_private
from ..errors import ConfigError
from ..matrix.registration import build_registration, write_registration

DEFAULT_CONFIG = Path("config.yaml")
DEFAULT_REGISTRATION = Path("registration.yaml")


def program() -> str:
    """How the operator can run this program again: what run.sh or the container says it is,
    else the name on PATH, else the path it was started by."""
    if given := os.environ.get("LETTA_APPSERVICE_COMMAND"):
        return given
    argv0 = sys.argv[0]
    if argv0.endswith("__main__.py") or argv0 == "-m":
        return f"{shlex.quote(_short(sys.executable))} -m letta_appservice"
    on_path = shutil.which("letta-appservice")
    if on_path and Path(on_path).resolve() == Path(argv0).resolve():
        return "letta-appservice"
    return shlex.quote(_short(argv0))


def _short(path: str) -> str:
    rel = os.path.relpath(path)
    return rel if not rel.startswith("..") and "/" in rel else os.path.abspath(path)


@attrs.frozen
class Invocation:
    """The operator's command line, to repeat in hints with the same -c and -r."""

    config: Path
    registration: Path

    def command(self, *extra: str) -> str:
        parts = [program()]
        if self.config != DEFAULT_CONFIG:
            parts += ["-c", shlex.quote(str(self.config))]
        if self.registration != DEFAULT_REGISTRATION:
            parts += ["-r", shlex.quote(str(self.registration))]
        return " ".join(parts + list(extra))


def _next_steps_wanted() -> bool:
    # The container's entrypoint says the next step itself, in Docker terms.
    return os.environ.get("LETTA_APPSERVICE_NEXT_STEPS", "on") != "off"


def first_run(cmd: Invocation, env: Mapping[str, str]) -> int:
    """No config yet: write the commented example and say what to edit (mautrix habit)."""
    write_example(cmd.config)
    from_env = {key for var, key in ENV_OVERRIDES.items() if env.get(var)}
    todo = [key for key in REQUIRED if key not in from_env]
    lines = [f"Wrote an example configuration to {cmd.config.resolve()} (readable only by you)."]
    if todo:
        lines.append(f"Set these keys in it (example values are refused): {', '.join(todo)}.")
    if from_env:
        lines.append(f"From the environment: {', '.join(sorted(from_env))}.")
    if _next_steps_wanted():
        lines.append(f"Then write the registration: {cmd.command('-g')}")
    print("\n".join(lines))
    return 0


def generate(cmd: Invocation, env: Mapping[str, str], rotate: bool) -> int:
    """Write the registration. Tokens already in the config are kept (the homeserver has them);
    new ones are made only where there are none yet, or for all with ``rotate``."""
    data = read_yaml(cmd.config)
    if not isinstance(data, MutableMapping):
        raise ConfigError("", f"{cmd.config} must be a YAML mapping of sections")
    changed = fill_tokens(data, env, rotate)
    config = parse_config(data, env)  # everything is checked before anything is written
    if changed:
        write_private(cmd.config, dump_yaml(data))
    write_registration(build_registration(config), cmd.registration)
    print("\n".join(_generated_text(cmd, env, config.appservice.id, changed, rotate)))
    return 0


def _generated_text(
    cmd: Invocation, env: Mapping[str, str], rid: str, changed: list[str], rotate: bool
) -> list[str]:
    reg = cmd.registration.resolve()
    from_env = [var for var in TOKEN_KEYS.values() if env.get(var)]
    if rotate:
        lines = [
            f"Wrote {reg} with NEW tokens, also stored in {cmd.config}.",
            "The homeserver still holds the old ones: until it loads this registration, it and",
            "the appservice reject each other.",
        ]
    elif changed:
        lines = [f"Wrote {reg} with new tokens, also stored in {cmd.config}."]
    elif from_env:
        lines = [f"Wrote {reg} with the tokens from {' and '.join(from_env)}."]
    else:
        lines = [f"Wrote {reg} with the tokens already in {cmd.config} (unchanged)."]
    lines.append(_mode_warning(cmd.config))
    if not _next_steps_wanted():
        return [line for line in lines if line]
    lines += [
        "Next, load the registration in your homeserver and restart it:",
        f"  Synapse: list {reg} under app_service_config_files in homeserver.yaml.",
        "  Tuwunel: copy it into appservice_dir, or paste into tuwunel.toml what",
        f"           {cmd.command('--tuwunel-toml')}  prints",
        f"           (admin room: `!admin appservices unregister {rid}` first if it is there).",
        f"Then {'restart' if rotate else 'start'} the appservice: {cmd.command()}",
    ]
    if not changed and not from_env:
        lines.append(f"(To replace the tokens: {cmd.command('-g', '--rotate-tokens')})")
    return [line for line in lines if line]


def _mode_warning(path: Path) -> str:
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        return f"Warning: {path} holds the tokens and is readable by others: chmod 600 {path}"
    return ""
