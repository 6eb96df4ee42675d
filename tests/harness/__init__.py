"""Test harness, shared by the tests and bench/: a real Synapse homeserver (`synapse`), a client
acting as a human Matrix user (`matrix_user`), the fake Letta server (`fake_letta`), the test
instances' configs and registrations (`config`), the one factory that starts apps (`apps`),
event builders and predicates (`events`), conversation helpers (`conversation`), what the
homeserver shows of the bridge (`observe`) and the test PostgreSQL (`postgres`)."""

from __future__ import annotations

from tests.harness.matrix_user import MatrixError, MatrixUser
from tests.harness.synapse import SynapseServer, fresh_localpart

__all__ = ["MatrixError", "MatrixUser", "SynapseServer", "fresh_localpart"]
