"""Logging from the `logging` config section: a root level, per-logger levels, text or JSON lines
on stderr, and optionally a rotating file in the same format."""

from __future__ import annotations

import json
import logging
import logging.handlers
import sys
import time
from pathlib import Path

from ..config import LoggingConfig

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Quieter than the root level unless the operator names them: alembic announces every plugin at
# INFO, mautrix logs request bodies at DEBUG.
DEFAULT_FLOORS = {"alembic": logging.WARNING, "letta_appservice.matrix": logging.INFO}


class JSONFormatter(logging.Formatter):
    """One JSON object per line, for log shippers (Loki, Vector, journald's JSON mode)."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def setup_logging(config: LoggingConfig) -> None:
    """Replace whatever handlers the root logger has with the configured ones."""
    formatter: logging.Formatter = (
        JSONFormatter() if config.format == "json" else logging.Formatter(TEXT_FORMAT)
    )
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if config.file:
        handlers.append(
            logging.handlers.RotatingFileHandler(
                Path(config.file).expanduser(),
                maxBytes=config.file_max_bytes,
                backupCount=config.file_backups,
                encoding="utf-8",
            )
        )
    root = logging.getLogger()
    for handler in root.handlers[:]:
        root.removeHandler(handler)
        handler.close()
    for handler in handlers:
        handler.setFormatter(formatter)
        root.addHandler(handler)
    root.setLevel(config.level)
    level = logging.getLevelName(config.level)
    for name, floor in DEFAULT_FLOORS.items():
        logging.getLogger(name).setLevel(max(floor, level))
    for name, named_level in config.loggers.items():
        logging.getLogger(name).setLevel(named_level)
