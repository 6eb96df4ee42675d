"""Exceptions shared across the package."""

from __future__ import annotations


class ConfigError(Exception):
    """A configuration problem, reported as one line naming the key."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}" if key else message)
        self.key = key
        self.message = message
