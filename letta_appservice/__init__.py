"""Letta AI agents as Matrix puppets."""

__version__ = "0.1.0"
