"""Command line: run the appservice, generate the registration, migrate the database."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path

from . import __version__
from .config import Config, load_config, store_tokens, write_example
from .errors import ConfigError
from .matrix.registration import build_registration, tuwunel_toml, write_registration

EXIT_CONFIG = 2


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="letta-appservice", description="Matrix appservice for Letta AI agents."
    )
    p.add_argument("-c", "--config", type=Path, default=Path("config.yaml"), help="config file")
    p.add_argument(
        "-r", "--registration", type=Path, default=Path("registration.yaml"),
        help="registration file the homeserver loads",
    )  # fmt: skip
    p.add_argument(
        "-g", "--generate-registration", action="store_true",
        help="write the registration with fresh tokens (also stored in the config) and exit",
    )  # fmt: skip
    p.add_argument(
        "--tuwunel-toml", action="store_true",
        help="print the registration as a tuwunel.toml [global.appservice.<id>] block and exit",
    )  # fmt: skip
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    db = sub.add_parser("db", help="database maintenance")
    db.add_argument("action", choices=["upgrade"], help="upgrade: migrate to the latest schema")
    legacy = sub.add_parser(
        "import-legacy", help="adopt the rooms, puppets and space of the older Letta-Matrix bot"
    )
    legacy.add_argument("mappings", help="agent_user_mappings.json")
    legacy.add_argument("space", nargs="?", help="letta_space_config.json")
    legacy.add_argument("--dry-run", action="store_true", help="report, change nothing")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if not args.config.exists():
        return first_run(args.config)
    try:
        if args.generate_registration:
            return generate(args.config, args.registration)
        config = load_config(args.config)
        if args.tuwunel_toml:
            print(tuwunel_toml(build_registration(config)), end="")
            return 0
        setup_logging(config.log_level)
        if args.command == "db":
            return db_upgrade(config)
        if args.command == "import-legacy":
            return import_legacy(config, args.mappings, args.space, args.dry_run)
        return run(config)
    except ConfigError as e:
        print(f"letta-appservice: config error in {args.config}: {e}", file=sys.stderr)
        return EXIT_CONFIG


def first_run(path: Path) -> int:
    """No config yet: write the commented example and say what to do (mautrix-bridge habit)."""
    try:
        write_example(path)
    except OSError as e:
        print(f"letta-appservice: cannot write {path}: {e.strerror or e}", file=sys.stderr)
        return EXIT_CONFIG
    print(
        f"Wrote an example configuration to {path}.\n"
        "Edit at least homeserver.address, homeserver.domain, appservice.address, "
        "letta.base_url and bridge.permissions,\n"
        f"then run `letta-appservice -c {path} -g` to generate registration.yaml and load it "
        "in your homeserver."
    )
    return 0


def generate(config_path: Path, registration_path: Path) -> int:
    store_tokens(config_path)
    config = load_config(config_path)
    registration = build_registration(config)
    write_registration(registration, registration_path)
    print(
        f"Wrote {registration_path} (tokens stored in {config_path}).\n"
        "Synapse: add it to app_service_config_files. Tuwunel: put it in appservice_dir, or\n"
        f"print the TOML form with `letta-appservice -c {config_path} --tuwunel-toml`."
    )
    return 0


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    # mautrix logs every request body at DEBUG; keep our level for it but never below INFO.
    logging.getLogger("letta_appservice.matrix").setLevel(max(logging.INFO, logging.root.level))


def db_upgrade(config: Config) -> int:
    from .db.database import DatabaseURL, migrate

    migrate(DatabaseURL.parse(config.appservice.database))
    print("Database is at the latest schema.")
    return 0


def import_legacy(config: Config, mappings: str, space: str | None, dry_run: bool) -> int:
    from .legacy.files import LegacyFileError
    from .legacy.importer import run_import

    try:
        report = asyncio.run(run_import(config, mappings, space, dry_run))
    except LegacyFileError as e:
        print(f"letta-appservice: import-legacy: {e} (nothing was imported)", file=sys.stderr)
        return EXIT_CONFIG
    print(("Dry run, nothing changed. " if dry_run else "") + "Legacy import:")
    print("\n".join(report.lines()))
    return 0


def run(config: Config) -> int:
    from .app import App

    async def serve() -> None:
        app = App(config)
        stop = asyncio.Event()
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

    try:
        asyncio.run(serve())
    except OSError as e:
        # Typically the port is taken; say so plainly rather than with a traceback.
        print(f"letta-appservice: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
