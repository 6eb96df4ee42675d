"""Command declarations and the pure dispatcher: text + the user's level -> invocation or error."""

from __future__ import annotations

import difflib
import shlex
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING

import attrs

from ..permissions import USER, at_least
from .args import Args, CommandResult, md_code

if TYPE_CHECKING:
    from .context import CommandContext

Handler = Callable[["CommandContext"], Awaitable["CommandResult"]]


@attrs.frozen
class Command:
    """A declared command. ``args`` is its usage: ``<x>`` required, ``[x]`` optional, and
    ``[--flag]`` an allowed flag; the last optional word takes the rest of the line."""

    name: str
    handler: Handler
    help: str
    args: str = ""
    level: str = USER
    group: str = ""

    @property
    def required(self) -> int:
        return sum(1 for w in self.args.split() if w.startswith("<"))

    @property
    def optional(self) -> int:
        return sum(1 for w in self.args.split() if w.startswith("[") and not w.startswith("[--"))

    @property
    def flags(self) -> frozenset[str]:
        return frozenset(w.strip("[]") for w in self.args.split() if w.startswith("[--"))

    def usage(self, prefix: str = "") -> str:
        words = [f"{prefix} {self.name}".strip(), *([self.args] if self.args else [])]
        return f"`{' '.join(words)}`"


@attrs.frozen
class Invocation:
    """A command found, permitted and with valid arguments: ready to run."""

    command: Command
    args: Args


class Registry:
    """The command table. Modules declare commands with ``@registry.command(...)``."""

    def __init__(self) -> None:
        self.commands: dict[str, Command] = {}

    def command(
        self, name: str, *, help: str, args: str = "", level: str = USER, group: str = ""
    ) -> Callable[[Handler], Handler]:
        def register(handler: Handler) -> Handler:
            if name in self.commands:
                raise ValueError(f"command {name!r} declared twice")
            self.commands[name] = Command(name, handler, help, args, level, group)
            return handler

        return register

    def get(self, name: str) -> Command | None:
        return self.commands.get(name.lower())

    def available(self, level: str | None) -> list[Command]:
        """Commands a user of ``level`` may run, in declaration order."""
        return [c for c in self.commands.values() if at_least(level, c.level)]

    def close_names(self, name: str) -> list[str]:
        return difflib.get_close_matches(name.lower(), self.commands, n=3, cutoff=0.6)


REGISTRY = Registry()
command = REGISTRY.command


def split_words(text: str) -> list[str]:
    """Words of a command line; quotes group words ("Customer Support") when balanced."""
    try:
        return shlex.split(text)
    except ValueError:  # an unbalanced quote, e.g. an apostrophe in a name
        return text.split()


def command_text(body: str, prefix: str, *, management_room: bool) -> str | None:
    """The command line in a message body, or None if it is no command: in a management room
    every message is one (a leading prefix is tolerated), elsewhere only prefixed ones."""
    text = body.strip()
    head, _, rest = text.partition(" ")
    if head.lower() == prefix.lower():
        return rest.strip()
    return text if management_room else None


def dispatch(
    text: str, level: str | None, registry: Registry = REGISTRY, prefix: str = ""
) -> Invocation | CommandResult:
    """Find the command, check the level and the arguments. Pure: no I/O, nothing changes."""
    if level is None:
        return CommandResult.error("You are not allowed to use this bridge.")
    words = split_words(text)
    if not words:
        return CommandResult.error(f"Type {_code(prefix, 'help')} to see the commands.")
    name, rest = words[0].lower(), words[1:]
    cmd = registry.get(name)
    if cmd is None:
        hints = registry.close_names(name)
        hint = f" Did you mean {_or_list(_code(prefix, h) for h in hints)}?" if hints else ""
        unknown = f"Unknown command {md_code(words[0])}."
        return CommandResult.error(f"{unknown}{hint} Type {_code(prefix, 'help')} for the list.")
    if not at_least(level, cmd.level):
        return CommandResult.error(
            f"`{cmd.name}` is for bridge admins only; your level is **{level}**."
        )
    flags = frozenset(w for w in rest if w.startswith("--"))
    positional = [w for w in rest if not w.startswith("--")]
    usage = f"Usage: {cmd.usage(prefix)}"
    if unknown := sorted(flags - cmd.flags):
        return CommandResult.error(f"Unknown option {md_code(unknown[0])}. {usage}")
    if len(positional) < cmd.required:
        return CommandResult.error(f"Missing argument. {usage}")
    limit = cmd.required + cmd.optional
    if len(positional) > limit:
        if not cmd.optional:
            return CommandResult.error(f"Too many arguments. {usage}")
        # The last optional word takes the rest (a filter may contain spaces).
        positional = [*positional[: limit - 1], " ".join(positional[limit - 1 :])]
    return Invocation(cmd, Args(tuple(positional), flags))


def _code(prefix: str, name: str) -> str:
    return md_code(f"{prefix} {name}" if prefix else name)


def _or_list(items: Iterable[str]) -> str:
    items = list(items)
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " or " + items[-1]
