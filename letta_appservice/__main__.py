"""Command line: run the appservice, generate the registration, migrate the database."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from . import __version__
from .cli.logs import setup_logging
from .cli.setup import DEFAULT_CONFIG, DEFAULT_REGISTRATION, Invocation, first_run, generate
from .config import Config, load_config
from .errors import ConfigError, UsageError
from .matrix.registration import build_registration, tuwunel_toml

if TYPE_CHECKING:
    from .db.database import DatabaseURL

EXIT_CONFIG = 2


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="letta-appservice",
        description="Matrix appservice for Letta AI agents. Without a COMMAND it runs the "
        "bridge; the first run, with no config file yet, writes the commented example there "
        "and says what to edit.",
        epilog="Exit codes: 0 done, 1 a server or port could not be used, 2 a config or usage "
        "error (one line naming the key).",
    )
    p.add_argument(
        "-c", "--config", type=Path, default=DEFAULT_CONFIG,
        help="config file (default: config.yaml in the current directory)",
    )  # fmt: skip
    p.add_argument(
        "-r", "--registration", type=Path, default=DEFAULT_REGISTRATION,
        help="registration file the homeserver loads (default: registration.yaml)",
    )  # fmt: skip
    p.add_argument(
        "-g", "--generate-registration", action="store_true",
        help="write the registration and exit; tokens already in the config are kept, missing "
        "ones are generated and stored in the config",
    )  # fmt: skip
    p.add_argument(
        "--rotate-tokens", action="store_true",
        help="with -g: replace both tokens (the homeserver must then load the new registration)",
    )  # fmt: skip
    p.add_argument(
        "--tuwunel-toml", action="store_true",
        help="print the registration as a tuwunel.toml [global.appservice.<id>] block and exit",
    )  # fmt: skip
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    db = sub.add_parser("db", help="database maintenance (needs no tokens)")
    db.add_argument("action", choices=["upgrade"], help="upgrade: migrate to the latest schema")
    legacy = sub.add_parser(
        "import-legacy",
        help="adopt the rooms, puppets and space of the older Letta-Matrix bot (stop the "
        "appservice first)",
    )
    legacy.add_argument("mappings", help="agent_user_mappings.json")
    legacy.add_argument("space", nargs="?", help="letta_space_config.json")
    legacy.add_argument(
        "--dry-run", action="store_true",
        help="check the homeserver and the rooms and report; write nothing",
    )  # fmt: skip
    sub.add_parser(
        "move-homeserver",
        help="the bridge now runs on another homeserver: set the old rooms and space aside and "
        "provision every agent there (stop the appservice first)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    cmd = Invocation(args.config, args.registration)
    try:
        return dispatch(args, cmd)
    except ConfigError as e:
        where = e.source or args.config
        print(f"letta-appservice: config error in {where}: {e}", file=sys.stderr)
        return EXIT_CONFIG
    except UsageError as e:
        print(f"letta-appservice: {e}", file=sys.stderr)
        return e.exit_code


def dispatch(args: argparse.Namespace, cmd: Invocation) -> int:
    if args.rotate_tokens and not args.generate_registration:
        raise UsageError("--rotate-tokens goes with -g: " + cmd.command("-g", "--rotate-tokens"))
    if not args.config.exists():
        if args.command or args.generate_registration or args.tuwunel_toml:
            raise UsageError(
                f"{args.config} does not exist; `{cmd.command()}` writes the example there"
            )
        return first_run(cmd, os.environ)
    if args.generate_registration:
        return generate(cmd, os.environ, args.rotate_tokens)
    if args.command == "db":
        config = load_config(args.config, need_tokens=False)
        setup_logging(config.logging)
        return db_upgrade(config)
    config = load_config(args.config)
    if args.tuwunel_toml:
        print(tuwunel_toml(build_registration(config)), end="")
        return 0
    setup_logging(config.logging)
    if args.command == "import-legacy":
        return import_legacy(config, args.mappings, args.space, args.dry_run)
    if args.command == "move-homeserver":
        return move_homeserver(config)
    return run(config, cmd)


def db_upgrade(config: Config) -> int:
    from .db.database import DatabaseURL, head_revision, migrate

    url = DatabaseURL.parse(config.appservice.database)
    try:
        migrate(url)
    except Exception as e:  # alembic and the drivers raise many kinds; one line is enough
        logging.getLogger("letta_appservice.db").debug("db upgrade failed", exc_info=True)
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UsageError(f"db upgrade: {describe_database(url)}: {reason}", 1) from None
    print(f"Database {describe_database(url)} is at the latest schema ({head_revision()}).")
    return 0


def describe_database(url: DatabaseURL) -> str:
    """The database without its password: the SQLite file, or postgres host/name."""
    if url.kind == "sqlite":
        return url.mautrix
    parts = urlsplit(url.mautrix)
    port = f":{parts.port}" if parts.port else ""
    return f"postgres://{parts.hostname}{port}{parts.path}"


def import_legacy(config: Config, mappings: str, space: str | None, dry_run: bool) -> int:
    from mautrix.errors import MatrixConnectionError

    from .legacy.files import LegacyFileError
    from .legacy.importer import ImportAborted, run_import

    try:
        report = asyncio.run(run_import(config, mappings, space, dry_run))
    except LegacyFileError as e:
        print(f"letta-appservice: import-legacy: {e} (nothing was imported)", file=sys.stderr)
        return EXIT_CONFIG
    except ImportAborted as e:
        print(f"letta-appservice: import-legacy: {e} (nothing was imported)", file=sys.stderr)
        return 1
    except MatrixConnectionError as e:
        print(
            f"letta-appservice: import-legacy: lost the homeserver ({e}); run it again when it "
            "is back (what was adopted stays, nothing is done twice)",
            file=sys.stderr,
        )
        return 1
    print(("Dry run, nothing changed. " if dry_run else "") + "Legacy import:")
    print("\n".join(report.lines()))
    return 0


def move_homeserver(config: Config) -> int:
    from mautrix.errors import MatrixConnectionError

    from .cli.move import MoveAborted
    from .cli.move import move_homeserver as move

    try:
        complete, lines = asyncio.run(move(config))
    except MoveAborted as e:
        print(f"letta-appservice: move-homeserver: {e} (nothing was changed)", file=sys.stderr)
        return 1
    except MatrixConnectionError as e:
        print(f"letta-appservice: move-homeserver: lost the homeserver ({e})", file=sys.stderr)
        return 1
    print("\n".join(lines))
    return 0 if complete else 1


def run(config: Config, cmd: Invocation) -> int:
    from .app import App
    from .reconcile.homeserver import HomeserverChanged

    failure: HomeserverChanged | None = None

    async def serve() -> None:
        nonlocal failure
        stop = asyncio.Event()
        app = App(config, on_failure=stop.set)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            await app.start()
            await stop.wait()
        finally:
            log = logging.getLogger("letta_appservice")
            log.info("Stopping")
            await app.stop()
            # Logged once everything is closed: the line that says the stop was clean.
            log.info("Stopped")
            failure = app.failure

    try:
        asyncio.run(serve())
    except OSError as e:
        # Typically the port is taken; say so plainly rather than with a traceback.
        print(f"letta-appservice: {e}", file=sys.stderr)
        return 1
    if failure is not None:
        print(
            f"letta-appservice: the homeserver changed: {failure}. If the bridge now runs on "
            f"a new homeserver, run `{cmd.command('move-homeserver')}`: it provisions every "
            "agent there and keeps the old rooms aside.",
            file=sys.stderr,
        )
        return EXIT_CONFIG if failure.key else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
