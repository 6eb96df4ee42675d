"""Test harness: a real Synapse homeserver and a client acting as a human Matrix user."""

from __future__ import annotations

from tests.harness.matrix_user import MatrixError, MatrixUser
from tests.harness.synapse import SynapseServer, fresh_localpart

__all__ = ["MatrixError", "MatrixUser", "SynapseServer", "fresh_localpart"]
